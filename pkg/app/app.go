// Package app wires iptproxy together: API clients and informers, one
// proxier per IP family, the health, metrics and health-check servers. It
// is the one place real things (clients, kernel runners, listeners) are
// built; everything it composes can be tested alone.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/iptproxy/iptproxy/pkg/conntrack"
	"github.com/iptproxy/iptproxy/pkg/healthcheck"
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/localdetect"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Timeouts for the node's own object at start, as kube-proxy's.
const (
	nodeIPsTimeout  = 30 * time.Second
	podCIDRsTimeout = 5 * time.Minute
)

// Run runs iptproxy until ctx ends or a fatal condition (the node's IPs
// changed, the node was deleted) asks for a restart.
func Run(ctx context.Context, o *options.Options) error {
	backend, err := iptables.ChooseBackend(ctx, string(o.IPTablesBackend))
	if err != nil {
		return err
	}
	if o.CleanupAndExit {
		return Cleanup(ctx)
	}
	d, ctx, err := newDaemon(ctx, o, backend)
	if err != nil {
		return err
	}
	families, err := servedFamilies(ctx, d.primary, func(ctx context.Context, fam v1.IPFamily) error {
		return iptables.Present(ctx, fam, backend)
	})
	if err != nil {
		return err
	}
	for _, fam := range families {
		f, err := d.buildFamily(ctx, fam)
		if err != nil {
			return err
		}
		d.families = append(d.families, f)
	}
	return d.run(ctx)
}

// daemon is what the proxiers of every family share: the API client, the
// node, metrics, health and events.
type daemon struct {
	logger   klog.Logger
	o        *options.Options
	backend  iptables.Backend
	client   kubernetes.Interface
	nodeName string
	node     *nodeInfo
	primary  v1.IPFamily
	nodeIPs  map[v1.IPFamily]netip.Addr
	// detectors are the local-traffic detectors per family.
	detectors   map[v1.IPFamily]localdetect.Detector
	metrics     *metrics.Metrics
	counters    nfacctCounters
	health      *healthcheck.ProxyHealth
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder
	// journal, one for both families, tells iptproxy's own nftables
	// commits from everyone else's (see iptables.Journal).
	journal  *iptables.Journal
	families []*family
}

// family is one IP family's proxier and the servers it feeds.
type family struct {
	rules     rules.Config
	proxier   *proxier.Proxier
	svcHealth *healthcheck.ServiceHealthServer
}

// newDaemon connects to the API server, checks permissions, tunes the
// node, waits for its Node object and sets up what every family shares.
// The context it returns carries the logger with the node's name.
func newDaemon(ctx context.Context, o *options.Options, backend iptables.Backend) (*daemon, context.Context, error) {
	cfg := o.Config
	restCfg, err := o.RESTConfig()
	if err != nil {
		return nil, ctx, err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, ctx, fmt.Errorf("creating API client: %w", err)
	}
	nodeName, err := o.NodeName()
	if err != nil {
		return nil, ctx, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "node", nodeName)
	ctx = klog.NewContext(ctx, logger)
	if err := checkPermissions(ctx, client, nodeName); err != nil {
		return nil, ctx, err
	}
	adjustOOMScore(logger, cfg.OOMScoreAdj)
	applyConntrackSysctls(ctx, cfg.Conntrack)

	detectCfg := o.LocalDetectConfig()
	node, err := waitForNode(ctx, client, nodeName, detectCfg.NeedsPodCIDRs(), nodeIPsTimeout, podCIDRsTimeout)
	if err != nil {
		return nil, ctx, err
	}
	d := &daemon{logger: logger, o: o, backend: backend, client: client, nodeName: nodeName, node: node,
		journal: iptables.NewJournal()}
	d.primary, d.nodeIPs = primaryFamily(logger, node.ips, cfg.BindAddress)
	logger.Info("Node addresses", "primaryFamily", d.primary, "nodeIPs", node.ips)
	d.detectors = localdetect.Resolve(logger, detectCfg, d.primary, node.podCIDRs)
	d.metrics = metrics.New()
	d.counters = setupNFAcct(logger, d.metrics)
	d.health = healthcheck.NewProxyHealth(healthTimeout(cfg), clock.RealClock{}, d.metrics)
	if node.node != nil {
		d.health.SyncNode(node.node)
	}
	d.broadcaster = events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	d.recorder = d.broadcaster.NewRecorder(scheme.Scheme, "kube-proxy")
	return d, ctx, nil
}

// buildFamily builds the proxier of one IP family, with its kernel runner,
// renderer configuration and health-check node port server.
func (d *daemon) buildFamily(ctx context.Context, fam v1.IPFamily) (*family, error) {
	logger, cfg := d.logger, d.o.Config
	ipt, err := iptables.New(fam, d.backend, iptables.WithLogger(logger), iptables.WithJournal(d.journal))
	if err != nil {
		return nil, err
	}
	detector := d.detectors[fam]
	rcfg := familyRulesConfig(logger, d.o, NodeFacts{Name: d.nodeName, Node: d.node.node, TCPBeLiberal: conntrackLiberal(cfg)},
		d.node, fam, d.nodeIPs[fam], detector)
	// Count in the nfacct objects only where they could be created.
	rcfg.NFAcctLocalhostNodePorts = d.counters.enabled(rcfg.NFAcctLocalhostNodePorts)
	rcfg.NFAcctInvalidDropped = d.counters.enabled(rcfg.NFAcctInvalidDropped)
	if rcfg.LocalhostNodePorts {
		logger.Info("Setting route_localnet=1 to allow node-ports on localhost; to change this either disable iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses (--nodeport-addresses) to filter loopback addresses")
		if err := iptables.EnsureSysctl(ctx, "net/ipv4/conf/all/route_localnet", 1); err != nil {
			return nil, err
		}
	}
	sh, err := healthcheck.NewServiceHealthServer(logger, healthcheck.ServiceHealthConfig{
		NodeName:          d.nodeName,
		Family:            fam,
		NodePortAddresses: expandPrimary(cfg.NodePortAddresses, d.nodeIPs[fam]),
		Recorder:          d.recorder,
		Health:            d.health,
	})
	if err != nil {
		return nil, err
	}
	p := proxier.New(logger, proxier.Options{
		Rules:         rcfg,
		SyncPeriod:    cfg.IPTables.SyncPeriod.Duration,
		MinSyncPeriod: cfg.IPTables.MinSyncPeriod.Duration,
		IPTables:      ipt,
		Metrics:       d.metrics,
		Health:        d.health,
		ServiceHealth: sh,
		Conntrack:     conntrack.Netlink{},
	})
	p.OnNodeUpdate(rcfg.Zone, familyIPs(d.node.ips, fam))
	logger.Info("Using iptables proxier", "ipFamily", fam, "backend", d.backend, "localTraffic", detector.String(),
		"nodePortAddresses", rcfg.NodePortAddresses, "localhostNodePorts", rcfg.LocalhostNodePorts)
	return &family{rules: rcfg, proxier: p, svcHealth: sh}, nil
}

// proxiers returns every family's proxier.
func (d *daemon) proxiers() []*proxier.Proxier {
	out := make([]*proxier.Proxier, len(d.families))
	for i, f := range d.families {
		out[i] = f.proxier
	}
	return out
}

// run starts the watches, the proxiers' loops and the servers, and waits
// for ctx to end or for a fatal error.
func (d *daemon) run(ctx context.Context) error {
	proxiers := d.proxiers()
	handlers := make([]EventHandler, len(proxiers))
	for i, p := range proxiers {
		handlers[i] = p
	}
	serviceWatch, err := newAPIWatch(d.logger, d.client, handlers)
	if err != nil {
		return err
	}
	fatal := make(chan error, 1)
	nodeFactory, err := d.watchNode(fatal)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	d.broadcaster.StartRecordingToSink(ctx.Done())
	defer d.broadcaster.Shutdown()
	if err := d.startServers(ctx, g); err != nil {
		return err
	}
	for _, p := range proxiers {
		g.Go(func() error { p.Run(ctx); return nil })
	}
	g.Go(func() error { serviceWatch.Run(ctx); return nil })
	g.Go(func() error {
		nodeFactory.Start(ctx.Done())
		if !cache.WaitForNamedCacheSyncWithContext(ctx, serviceWatch.ServicesSynced, serviceWatch.SlicesSynced) {
			return ctx.Err()
		}
		for _, p := range proxiers {
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
		}
		<-ctx.Done()
		nodeFactory.Shutdown()
		return nil
	})
	g.Go(func() error {
		select {
		case err := <-fatal:
			return err
		case <-ctx.Done():
			return nil
		}
	})
	d.recorder.Eventf(&v1.ObjectReference{Kind: "Node", Name: d.nodeName, UID: nodeUID(d.node)}, nil, v1.EventTypeNormal, "Starting", "StartKubeProxy", "")
	return g.Wait()
}

// watchNode returns the informer factory of the node's own object, whose
// changes go to the proxiers and health; a change that needs a restart is
// sent to fatal.
func (d *daemon) watchNode(fatal chan<- error) (informers.SharedInformerFactory, error) {
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(d.client, d.o.Config.ConfigSyncPeriod.Duration,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", d.nodeName).String()
		}),
		informers.WithTransform(trimObject))
	watcher := &nodeWatcher{
		logger:       d.logger,
		initial:      d.node,
		watchPodCIDR: d.o.LocalDetectConfig().NeedsPodCIDRs(),
		health:       d.health,
		proxiers:     d.proxiers(),
		fatal:        fatal,
	}
	if _, err := nodeFactory.Core().V1().Nodes().Informer().AddEventHandler(watcher.handlers()); err != nil {
		return nil, err
	}
	return nodeFactory, nil
}

// startServers starts healthz, metrics (with the debug handlers) and the
// health-check node port servers in g.
func (d *daemon) startServers(ctx context.Context, g *errgroup.Group) error {
	cfg := d.o.Config
	rulesConfigs := map[v1.IPFamily]rules.Config{}
	for _, f := range d.families {
		rulesConfigs[f.rules.Family] = f.rules
	}
	healthz := healthcheck.NewHealthzServer(cfg.HealthzBindAddress, d.health)
	metricsServer := metrics.NewServer(cfg.MetricsBindAddress, d.metrics)
	metricsServer.SetZPages(zpages(d.o))
	servicesDebug := &servicesDebug{logger: d.logger, proxiers: d.proxiers(), configs: rulesConfigs, client: d.client}
	if err := mountDebug(metricsServer, d.o, d.proxiers(), servicesDebug); err != nil {
		return err
	}
	if cfg.HealthzBindAddress != "" {
		g.Go(func() error { return serve(ctx, "healthz", healthz.Run, cfg.BindAddressHardFail) })
	}
	if cfg.MetricsBindAddress != "" {
		g.Go(func() error { return serve(ctx, "metrics", metricsServer.Run, cfg.BindAddressHardFail) })
	}
	for _, f := range d.families {
		g.Go(func() error { return f.svcHealth.Run(ctx) })
	}
	return nil
}

// serve runs a server; a bind failure is fatal only with
// --bind-address-hard-fail, as in kube-proxy.
func serve(ctx context.Context, name string, run func(context.Context) error, hardFail bool) error {
	err := run(ctx)
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	if hardFail {
		return fmt.Errorf("%s server: %w", name, err)
	}
	klog.FromContext(ctx).Error(err, "Server failed; continuing without it", "server", name)
	return nil
}

func otherFamily(f v1.IPFamily) v1.IPFamily {
	if f == v1.IPv4Protocol {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func familyIPs(ips []netip.Addr, fam v1.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if proxy.FamilyOf(ip) == fam {
			out = append(out, ip)
		}
	}
	return out
}

// expandPrimary replaces the "primary" keyword by the node IPs given.
func expandPrimary(addrs []string, nodeIPs ...netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		if a != "primary" || len(nodeIPs) == 0 {
			out = append(out, a)
			continue
		}
		for _, ip := range nodeIPs {
			if ip.IsValid() && !ip.IsLoopback() {
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()).String())
			}
		}
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// healthTimeout is kube-proxy's healthz window: twice the sync period.
func healthTimeout(cfg *v1alpha1.KubeProxyConfiguration) time.Duration {
	return 2 * cfg.IPTables.SyncPeriod.Duration
}

func conntrackLiberal(cfg *v1alpha1.KubeProxyConfiguration) bool {
	if cfg.Conntrack.TCPBeLiberal {
		return true
	}
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	if err != nil {
		return false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && v != 0
}

// adjustOOMScore sets the process's oom_score_adj; failures are logged,
// as kube-proxy does in containers that may not lower it.
func adjustOOMScore(logger klog.Logger, score *int32) {
	if score == nil {
		return
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(*score))), 0o644); err != nil {
		logger.V(2).Info("Failed to apply oom_score_adj", "value", *score, "err", err.Error())
	}
}

func nodeUID(n *nodeInfo) types.UID {
	if n == nil || n.node == nil {
		return ""
	}
	return n.node.UID
}
