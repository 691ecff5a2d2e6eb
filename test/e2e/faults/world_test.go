// Package faults holds iptproxy's fault end-to-end tests: tables flushed
// by someone else, restores the kernel refuses, the xtables lock held by
// another writer, the apiserver going away, the Node object changing,
// SIGKILL in the middle of a restore and in-place takeover from kube-proxy.
// Every test brings up its own cluster and checks real traffic.
package faults

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

const (
	echoPort = 8080
	// syncPeriod is the daemons' syncPeriod in these tests: short, so that
	// repairs and retries happen within a test's patience.
	syncPeriod = 3 * time.Second
	converge   = 30 * time.Second
)

// world is a one-node cluster with two backend pods, an outside client,
// a NodePort Service "web" (TCP and UDP) served by both pods, and a proxy
// daemon on the node.
type world struct {
	c      *fw.Cluster
	n      *fw.Node
	pods   []*fw.Pod
	client *fw.Client
	svc    *v1.Service
	d      *fw.Daemon
}

// worldOptions adjusts newWorld.
type worldOptions struct {
	// start starts the daemon; nil starts iptproxy with syncPeriod.
	start func(t *testing.T, n *fw.Node) *fw.Daemon
	// before runs before the daemon starts.
	before func(t *testing.T, w *world)
	// noWait returns as soon as the daemon is started, without waiting
	// for it to be healthy and serve.
	noWait bool
}

// configure sets the short sync period used by every test.
func configure(cfg *kpv1alpha1.KubeProxyConfiguration) {
	cfg.IPTables.SyncPeriod = metav1.Duration{Duration: syncPeriod}
	cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
}

// startIPTProxy starts iptproxy on n with the tests' configuration.
func startIPTProxy(t *testing.T, n *fw.Node, args ...string) *fw.Daemon {
	return n.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: configure, Args: args})
}

func newWorld(t *testing.T, o worldOptions) *world {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 1})
	w := &world{c: c, n: c.Nodes()[0]}
	for _, name := range []string{"pod-a", "pod-b"} {
		p := w.n.AddPod(t, name)
		p.StartEcho(t, fw.EchoOn(echoPort))
		w.pods = append(w.pods, p)
	}
	w.client = c.AddClient(t, "outside")
	for _, cidr := range c.ServiceCIDRs() {
		if cidr.Addr().Is4() {
			w.n.AddRoute(t, cidr, c.Host().IP(v1.IPv4Protocol))
		}
	}
	svc := fw.NewService("default", "web",
		fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort),
		fw.ServicePort("udp", v1.ProtocolUDP, 80, echoPort))
	svc.Spec.Type = v1.ServiceTypeNodePort
	w.svc = c.CreateService(t, svc)
	c.SetEndpoints(t, w.svc, w.pods[0].Backend(), w.pods[1].Backend())
	start := o.start
	if start == nil {
		start = func(t *testing.T, n *fw.Node) *fw.Daemon { return startIPTProxy(t, n) }
	}
	if o.before != nil {
		o.before(t, w)
	}
	w.d = start(t, w.n)
	if o.noWait {
		return w
	}
	w.d.WaitHealthy(t, 60*time.Second)
	w.waitServing(t, w.podNames(), converge)
	return w
}

func (w *world) podNames() []string {
	var out []string
	for _, p := range w.pods {
		out = append(out, p.Name())
	}
	return out
}

// nodePort is the node's address and the Service's node port for proto.
func (w *world) nodePort(proto v1.Protocol) netip.AddrPort {
	for _, p := range w.svc.Spec.Ports {
		if p.Protocol == proto {
			return netip.AddrPortFrom(w.n.IP(v1.IPv4Protocol), uint16(p.NodePort))
		}
	}
	panic("no port for " + proto)
}

// clusterIP is the Service's ClusterIP and port.
func (w *world) clusterIP() netip.AddrPort {
	return fw.ServiceAddr(w.svc, v1.IPv4Protocol, 80)
}

// waitServing waits until the NodePort (from outside) and the ClusterIP
// (from a pod) reach every backend named in want.
func (w *world) waitServing(t *testing.T, want []string, timeout time.Duration) {
	t.Helper()
	w.client.WaitForBackends(t, v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP), want, timeout)
	w.pods[0].WaitForBackends(t, v1.ProtocolTCP, w.clusterIP(), want, timeout)
}

// served reports whether one TCP request from outside to the NodePort and
// one from pod-a to the ClusterIP are both answered.
func (w *world) served(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := w.client.Request(ctx, v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP)); err != nil {
		return fmt.Errorf("NodePort: %w", err)
	}
	if _, err := w.pods[0].Request(ctx, v1.ProtocolTCP, w.clusterIP()); err != nil {
		return fmt.Errorf("ClusterIP: %w", err)
	}
	return nil
}

// waitServed polls served every 100 ms until it succeeds and returns how
// long that took; it fails the test after timeout.
func (w *world) waitServed(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < timeout {
		if last = w.served(t.Context()); last == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("traffic not served within %v: %v", timeout, last)
	return 0
}

// iptables runs an iptables command in the node's namespace.
func (w *world) iptables(t *testing.T, args ...string) string {
	t.Helper()
	return w.n.Exec(t, "iptables", args...)
}

// sepChain returns the KUBE-SEP chain that DNATs to pod (TCP port).
func (w *world) sepChain(t *testing.T, pod *fw.Pod) string {
	t.Helper()
	dest := netip.AddrPortFrom(pod.IP(v1.IPv4Protocol), echoPort).String()
	for _, l := range strings.Split(w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "-A" && strings.HasPrefix(f[1], "KUBE-SEP-") &&
			strings.Contains(l, "-p tcp") && strings.Contains(l, "--to-destination "+dest) {
			return f[1]
		}
	}
	t.Fatalf("no KUBE-SEP chain DNATs to %s", dest)
	return ""
}

// metric returns the value of the sample name{labels} on the daemon's
// /metrics (0 when absent). labels is the exact label text, e.g.
// `ip_family="IPv4"`, or "" for an unlabelled sample.
func metric(t *testing.T, d *fw.Daemon, name, labels string) float64 {
	t.Helper()
	code, body, err := d.Get(t.Context(), 10249, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	return parseMetric(body, name, labels)
}

func parseMetric(body, name, labels string) float64 {
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if rest, ok := strings.CutPrefix(l, want+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return 0
}

// healthz returns the daemon's /healthz status code (0 when it does not
// answer).
func healthz(ctx context.Context, d *fw.Daemon) int {
	code, _, err := d.Get(ctx, 10256, "/healthz")
	if err != nil {
		return 0
	}
	return code
}

// syncLine matches the daemon's per-sync log line.
var syncLine = regexp.MustCompile(`"Synced rules".*full=(true|false)`)

// fullSyncs counts the full syncs in a daemon log.
func fullSyncs(log string) int {
	n := 0
	for _, m := range syncLine.FindAllStringSubmatch(log, -1) {
		if m[1] == "true" {
			n++
		}
	}
	return n
}
