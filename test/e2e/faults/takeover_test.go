package faults

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// flow is a live connection (TCP) or flow (UDP, one source port) that
// sends a request every 100 ms and records what happens.
type flow struct {
	name string
	conn *echo.Conn

	mu       sync.Mutex
	backends map[string]int
	errs     []string
	sent     int
}

func startFlow(t *testing.T, ns *fw.NS, name string, proto v1.Protocol, addr netip.AddrPort) *flow {
	t.Helper()
	c, err := ns.Connect(t.Context(), proto, addr)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &flow{name: name, conn: c, backends: map[string]int{}}
}

func (f *flow) run(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := f.conn.Request(rctx)
		cancel()
		f.mu.Lock()
		f.sent++
		if err != nil {
			if ctx.Err() == nil {
				f.errs = append(f.errs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			}
		} else {
			f.backends[r.Name]++
		}
		f.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// check fails the test if any request failed or the flow moved between
// backends.
func (f *flow) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) > 0 {
		t.Errorf("%s: %d of %d requests failed: %v", f.name, len(f.errs), f.sent, f.errs)
	}
	if len(f.backends) != 1 {
		t.Errorf("%s: answered by %v; a live flow must stay on one backend", f.name, f.backends)
	}
	t.Logf("%s: %d requests, answered by %v", f.name, f.sent, f.backends)
}

var conntrackID = regexp.MustCompile(`\bid=(\d+)`)

// conntrackIDs lists the ids of the node's conntrack entries of proto to
// dst.
func (w *world) conntrackIDs(t *testing.T, proto v1.Protocol, dst netip.AddrPort) []string {
	t.Helper()
	out, err := w.n.Run(t.Context(), "conntrack", "-L", "-p", strings.ToLower(string(proto)),
		"--orig-dst", dst.Addr().String(), "--dport", fmt.Sprint(dst.Port()), "-o", "id")
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var ids []string
	for _, m := range conntrackID.FindAllStringSubmatch(out, -1) {
		ids = append(ids, m[1])
	}
	sort.Strings(ids)
	return ids
}

// TestInPlaceTakeover runs upstream kube-proxy with live TCP connections
// and a UDP flow through a NodePort and a ClusterIP, replaces it by
// iptproxy on the same node, and then iptproxy by kube-proxy again. No
// request may fail, no flow may move to another backend, and the flows'
// conntrack entries must survive each swap (same conntrack ids).
func TestInPlaceTakeover(t *testing.T) {
	fw.RequireCommands(t, "conntrack")
	w := newWorld(t, worldOptions{start: func(t *testing.T, n *fw.Node) *fw.Daemon {
		return n.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireKubeProxy(t), Configure: configure})
	}})
	flows := []*flow{
		startFlow(t, w.client.NS, "TCP outside->NodePort", v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP)),
		startFlow(t, w.pods[0].NS, "TCP pod-a->ClusterIP", v1.ProtocolTCP, w.clusterIP()),
		startFlow(t, w.pods[0].NS, "UDP pod-a->ClusterIP", v1.ProtocolUDP, fw.ServiceAddr(w.svc, v1.IPv4Protocol, 80)),
		startFlow(t, w.client.NS, "UDP outside->NodePort", v1.ProtocolUDP, w.nodePort(v1.ProtocolUDP)),
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, f := range flows {
		wg.Add(1)
		go f.run(ctx, &wg)
	}
	// Let every flow get established.
	time.Sleep(time.Second)
	udpIDs := w.conntrackIDs(t, v1.ProtocolUDP, w.clusterIP())
	tcpIDs := w.conntrackIDs(t, v1.ProtocolTCP, w.clusterIP())
	if len(udpIDs) == 0 || len(tcpIDs) == 0 {
		t.Fatalf("no conntrack entries for the flows to %v (udp %v, tcp %v)", w.clusterIP(), udpIDs, tcpIDs)
	}

	kubeProxy := w.d
	kubeProxy.Stop(t)
	iptproxy := startIPTProxy(t, w.n)
	iptproxy.WaitHealthy(t, 60*time.Second)
	if !strings.Contains(iptproxy.Log(), `"Synced rules"`) {
		t.Fatalf("iptproxy did not sync:\n%s", tail(iptproxy.Log()))
	}
	// A few sync periods under iptproxy, then back to kube-proxy.
	time.Sleep(2 * syncPeriod)
	if got := w.conntrackIDs(t, v1.ProtocolUDP, w.clusterIP()); !subset(udpIDs, got) {
		t.Errorf("UDP conntrack entries flushed by the takeover: before %v, after %v", udpIDs, got)
	}
	iptproxy.Stop(t)
	kubeProxy.Start(t)
	kubeProxy.WaitHealthy(t, 60*time.Second)
	time.Sleep(2 * syncPeriod)
	cancel()
	wg.Wait()
	for _, f := range flows {
		f.check(t)
	}
	if got := w.conntrackIDs(t, v1.ProtocolUDP, w.clusterIP()); !subset(udpIDs, got) {
		t.Errorf("UDP conntrack entries flushed by the swaps: before %v, after %v", udpIDs, got)
	}
	if got := w.conntrackIDs(t, v1.ProtocolTCP, w.clusterIP()); !subset(tcpIDs, got) {
		t.Errorf("TCP conntrack entries flushed by the swaps: before %v, after %v", tcpIDs, got)
	}
	// New connections work under kube-proxy again.
	w.waitServing(t, w.podNames(), converge)
}

// subset reports whether every id of want is in got.
func subset(want, got []string) bool {
	have := map[string]bool{}
	for _, g := range got {
		have[g] = true
	}
	for _, x := range want {
		if !have[x] {
			return false
		}
	}
	return true
}
