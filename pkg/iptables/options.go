package iptables

import (
	v1 "k8s.io/api/core/v1"
	"strconv"
	"time"

	"k8s.io/klog/v2"
)

// DefaultWait is how long the tools wait for the xtables lock unless
// WithWait says otherwise; kube-proxy passes the same "-w 5".
const DefaultWait = 5 * time.Second

// Option configures New, Present and DetectBackend.
type Option func(*options)

type options struct {
	wait   time.Duration
	binDir string
	logger *klog.Logger
	// journal, when set, records the nft backend's commits.
	journal *Journal
	// nftChainExists answers DetectBackend's single-chain lookups in
	// nft's tables; NFTChainExists when nil.
	nftChainExists func(v1.IPFamily, Table, string) (bool, error)
}

func buildOptions(opts []Option) options {
	o := options{wait: DefaultWait}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithWait sets how long iptables, iptables-restore and iptables-save wait
// for the xtables lock (their -w/--wait flag) before failing with a resource
// error. Whole seconds are used, rounded up. A value of zero or less waits
// forever (plain --wait); the context passed to each call still bounds it.
// The nft backend does not take the lock and ignores the flag.
func WithWait(d time.Duration) Option {
	return func(o *options) { o.wait = d }
}

// WithBinDir makes the tools be looked up only in dir instead of $PATH
// (and the usual sbin directories). Useful for images that keep their own
// iptables build, and for tests with stand-in tools.
func WithBinDir(dir string) Option {
	return func(o *options) { o.binDir = dir }
}

// WithLogger sets the logger New uses to report which tools it picked.
// Methods that take a context log through klog.FromContext instead. The
// default is klog.Background().
func WithLogger(logger klog.Logger) Option {
	return func(o *options) { o.logger = &logger }
}

// waitArgs returns the lock-wait flag in the form iptables-restore and
// iptables accept: "-w N", or "-w" alone to wait forever.
func (o options) waitArgs() []string {
	if o.wait <= 0 {
		return []string{"-w"}
	}
	return []string{"-w", strconv.Itoa(o.waitSeconds())}
}

// waitSeconds is the wait rounded up to whole seconds, 0 meaning forever.
func (o options) waitSeconds() int {
	if o.wait <= 0 {
		return 0
	}
	return int((o.wait + time.Second - 1) / time.Second)
}

func (o options) log() klog.Logger {
	if o.logger != nil {
		return *o.logger
	}
	return klog.Background()
}

// WithJournal makes a Runner on the nft backend record its writes in j, so
// that j can tell them from other processes' (see Journal). Give every
// Runner of a process the same Journal.
func WithJournal(j *Journal) Option {
	return func(o *options) { o.journal = j }
}
