package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/planner"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// benchState returns the tracker state of a 10,000 Service x 10 endpoint
// cluster.
func benchState(b testing.TB, c scaleCluster) (*proxy.Tracker, *proxy.State) {
	logger, _ := ktesting.NewTestContext(b)
	tr := proxy.NewTracker(logger, c.family, "node-a")
	for i := 0; i < c.n; i++ {
		tr.OnServiceUpdate(nil, c.service(i))
		tr.OnEndpointSliceUpdate(c.slice(i), false)
	}
	st, _ := tr.Checkout()
	return tr, st
}

func countRules(rs *rules.Ruleset) (chains, lines int) {
	for _, cs := range [][]*rules.Chain{rs.Filter, rs.NAT} {
		for _, c := range cs {
			chains++
			lines += len(c.Rules)
		}
	}
	return chains, lines
}

// BenchmarkColdRender10kx10 renders and plans a cold sync (into empty
// tables) of 10,000 Services x 10 endpoints, reporting allocations, the
// size of the result and the heap it keeps (renderer cache, applied
// hashes and the last ruleset, as a proxier holds between syncs).
func BenchmarkColdRender10kx10(b *testing.B) {
	c := scaleCluster{family: v1.IPv4Protocol, n: 10000, eps: 10}
	_, st := benchState(b, c)
	cfg := rules.Config{Family: c.family, NodeName: "node-a", MasqueradeBit: 14}
	b.ReportAllocs()
	b.ResetTimer()
	var rs *rules.Ruleset
	var plan *planner.Plan
	for b.Loop() {
		r := rules.NewRenderer(cfg)
		rs = r.Render(st, nil)
		plan, _ = planner.Compute(rs, planner.NewApplied(), rules.IsServiceChain)
	}
	b.StopTimer()
	chains, lines := countRules(rs)
	b.ReportMetric(float64(chains), "chains")
	b.ReportMetric(float64(lines), "rules")
	b.ReportMetric(float64(plan.Size())/1e6, "payload-MB")
	b.ReportMetric(float64(len(plan.Transactions)), "transactions")

	// What stays live between syncs.
	plan, rs = nil, nil
	r := rules.NewRenderer(cfg)
	applied := planner.NewApplied()
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	rs = r.Render(st, nil)
	plan, _ = planner.Compute(rs, applied, rules.IsServiceChain)
	applied.Commit(plan, rules.IsServiceChain)
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(ms1.HeapAlloc-ms0.HeapAlloc)/1e6, "retained-MB")
	runtime.KeepAlive(r)
	runtime.KeepAlive(applied)
	runtime.KeepAlive(rs)
}

// BenchmarkOneEndpointChange10kx10 renders and plans the sync after one
// endpoint of one Service changes in a 10,000 x 10 cluster.
func BenchmarkOneEndpointChange10kx10(b *testing.B) {
	c := scaleCluster{family: v1.IPv4Protocol, n: 10000, eps: 10}
	tr, st := benchState(b, c)
	r := rules.NewRenderer(rules.Config{Family: c.family, NodeName: "node-a", MasqueradeBit: 14})
	applied := planner.NewApplied()
	first, _ := planner.Compute(r.Render(st, nil), applied, rules.IsServiceChain)
	applied.Commit(first, rules.IsServiceChain)
	spn := st.ServicePortNames(s2nn("ns", "svc-7"))[0]
	b.ReportAllocs()
	b.ResetTimer()
	var plan *planner.Plan
	for i := 0; b.Loop(); i++ {
		s := c.slice(7)
		s.Endpoints[0].Addresses = []string{c.endpointIP(200000 + i%2)}
		tr.OnEndpointSliceUpdate(s, false)
		st, _ = tr.Checkout()
		rs := r.Render(st, map[proxy.ServicePortName]bool{spn: true})
		plan, _ = planner.Compute(rs, applied, rules.IsServiceChain)
		applied.Commit(plan, rules.IsServiceChain)
	}
	b.ReportMetric(float64(plan.WrittenCount()), "chains-written")
	b.ReportMetric(float64(plan.Rules), "rules-written")
}

// BenchmarkDispatchCrossed traces first packets through the dispatch tree
// at 100, 1,000 and 10,000 Services and reports the nat dispatch rules they
// cross: mean and worst over every cluster IP, and for a non-Service
// address. (kube-proxy's flat KUBE-SERVICES: about half the Service
// addresses on average, all of them for a non-Service address.)
func BenchmarkDispatchCrossed(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := scaleCluster{family: v1.IPv4Protocol, n: n}
			p, ipt := c.fakeProxier(b)
			if err := p.Sync(context.Background()); err != nil {
				b.Fatal(err)
			}
			rs := ipt.Ruleset()
			node := trace.Node{LocalAddrs: []netip.Addr{c.nodeIP()}}
			crossed := func(dst netip.Addr, port int) int {
				res, err := trace.TraceWithOptions(rs, node, trace.Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.51.100.7"),
					SrcPort: 40000, Dst: dst, DstPort: port, InInterface: "eth0"}, trace.Options{Misses: true})
				if err != nil {
					b.Fatal(err)
				}
				n, _ := dispatchCost(&res.Outcomes[0])
				return n
			}
			b.ResetTimer()
			for b.Loop() {
				crossed(netip.MustParseAddr(c.clusterIP(n/2)), 80+n/2%3)
			}
			b.StopTimer()
			sum, worst := 0, 0
			for i := 0; i < n; i++ {
				x := crossed(netip.MustParseAddr(c.clusterIP(i)), 80+i%3)
				sum += x
				worst = max(worst, x)
			}
			entries := 0
			for _, ch := range p.Desired().NAT {
				if ch.Name == rules.ChainServices || strings.HasPrefix(ch.Name, rules.PrefixDispatch) {
					entries += len(ch.Rules)
				}
			}
			b.ReportMetric(float64(entries), "dispatch-rules")
			b.ReportMetric(float64(sum)/float64(n), "mean-crossed")
			b.ReportMetric(float64(worst), "max-crossed")
			b.ReportMetric(float64(crossed(netip.MustParseAddr("172.31.0.1"), 80)), "nonservice-crossed")
			b.ReportMetric(float64(crossed(netip.MustParseAddr("172.30.77.77"), 80)), "nonservice-in-range-crossed")
		})
	}
}

// BenchmarkSyncOneEndpointChange10kx10 is BenchmarkOneEndpointChange10kx10
// through the whole Proxier.Sync, as the daemon runs it: tracker checkout,
// render, plan, a restore into a fake iptables, metrics and health checks.
func BenchmarkSyncOneEndpointChange10kx10(b *testing.B) {
	c := scaleCluster{family: v1.IPv4Protocol, n: 10000, eps: 10}
	p, ipt := c.fakeProxier(b)
	p.opts.Metrics = metrics.New()
	ctx := context.Background()
	if err := p.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s := c.slice(7)
		s.Endpoints[0].Addresses = []string{c.endpointIP(200000 + i%2)}
		p.OnEndpointSliceUpdate(s, false)
		if err := p.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !p.LastSync().Incremental {
		b.Errorf("the last sync was not planned from the delta")
	}
	b.ReportMetric(float64(len(ipt.LastRestore())), "bytes-written")
}
