package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// scaleCluster describes a synthetic cluster of n Services for one family:
// every Service has a cluster IP and one endpoint; every 3rd is a NodePort,
// every 5th a LoadBalancer (with a NodePort) and every 7th has an external
// IP. Addresses are spread pseudo-randomly, as an allocator would.
type scaleCluster struct {
	family v1.IPFamily
	n      int
	// eps is the number of endpoints per Service (1 when 0).
	eps int
}

func (c scaleCluster) v6() bool { return c.family == v1.IPv6Protocol }

// spread maps i to a well-mixed 16-bit value, distinct for i < 65536.
func spread(i int) int { return (i*40503 + 12345) & 0xffff }

func (c scaleCluster) clusterIP(i int) string {
	s := spread(i)
	if c.v6() {
		return fmt.Sprintf("fd00:30::%x:%x", s>>8, s&0xff)
	}
	return fmt.Sprintf("172.30.%d.%d", s>>8, s&0xff)
}

func (c scaleCluster) externalIP(i int) string {
	s := spread(i + 7)
	if c.v6() {
		return fmt.Sprintf("2001:db8:e::%x", s)
	}
	return fmt.Sprintf("198.18.%d.%d", s>>8, s&0xff)
}

func (c scaleCluster) lbIP(i int) string {
	s := spread(i + 11)
	if c.v6() {
		return fmt.Sprintf("2001:db8:1b::%x", s)
	}
	return fmt.Sprintf("203.0.%d.%d", s>>8, s&0xff)
}

func (c scaleCluster) endpointIP(i int) string {
	if c.v6() {
		return fmt.Sprintf("fd00:10:1::%x", i+1)
	}
	return fmt.Sprintf("10.%d.%d.%d", 1+i/62500, i/250%250, i%250+1)
}

func (c scaleCluster) nodeIP() netip.Addr {
	if c.v6() {
		return netip.MustParseAddr("fd00:192::10")
	}
	return netip.MustParseAddr("192.0.2.10")
}

func (c scaleCluster) nodePort(i int) int32 { return int32(20000 + i) }

func (c scaleCluster) service(i int) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  c.clusterIP(i),
			ClusterIPs: []string{c.clusterIP(i)},
			IPFamilies: []v1.IPFamily{c.family},
			Ports:      []v1.ServicePort{{Name: "p", Port: 80 + int32(i%3), Protocol: v1.ProtocolTCP}},
		},
	}
	if i%3 == 0 {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = c.nodePort(i)
	}
	if i%5 == 0 {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = c.nodePort(i)
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: c.lbIP(i)}}
	}
	if i%7 == 0 {
		s.Spec.ExternalIPs = []string{c.externalIP(i)}
	}
	return s
}

func (c scaleCluster) slice(i int) *discovery.EndpointSlice {
	at := discovery.AddressTypeIPv4
	if c.v6() {
		at = discovery.AddressTypeIPv6
	}
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d-1", i), Labels: map[string]string{discovery.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	// Endpoint j of Service i; the first is endpointIP(i), as the
	// single-endpoint tests expect.
	for j := 0; j < max(c.eps, 1); j++ {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{c.endpointIP(i + j*c.n)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-b"),
		})
	}
	return s
}

// fakeProxier returns a proxier on a fake iptables loaded with the
// cluster, not yet synced.
func (c scaleCluster) fakeProxier(t testing.TB) (*Proxier, *memory.Tables) {
	ipt := memory.New(c.family)
	return c.proxier(t, ipt), ipt
}

// proxier returns a proxier on ipt loaded with the cluster, not yet
// synced.
func (c scaleCluster) proxier(t testing.TB, ipt iptables.Interface) *Proxier {
	logger, _ := ktesting.NewTestContext(t)
	p := New(logger, Options{
		Rules: rules.Config{
			Family:        c.family,
			NodeName:      "node-a",
			NodeIPs:       []netip.Addr{c.nodeIP()},
			MasqueradeBit: 14,
		},
		SyncPeriod: time.Minute,
		IPTables:   ipt,
	})
	for i := 0; i < c.n; i++ {
		p.OnServiceUpdate(nil, c.service(i))
		p.OnEndpointSliceUpdate(c.slice(i), false)
	}
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	return p
}

// dispatchCost counts the rules a path evaluated in the nat dispatch
// chains (KUBE-SERVICES, KUBE-NODEPORTS and the KUBE-SVC-DSP-* below them) and
// how many of those chains it entered.
func dispatchCost(o *trace.Outcome) (rulesCrossed, chains int) {
	seen := map[string]bool{}
	for _, s := range o.Steps {
		if s.Table != "nat" || s.Rule == 0 {
			continue
		}
		if s.Chain == rules.ChainServices || s.Chain == rules.ChainNodePorts || strings.HasPrefix(s.Chain, rules.PrefixDispatch) {
			rulesCrossed++
			seen[s.Chain] = true
		}
	}
	return rulesCrossed, len(seen)
}

// jumpedTo reports whether the path jumped to chain.
func jumpedTo(o *trace.Outcome, chain string) bool {
	for _, s := range o.Steps {
		if (s.Action == trace.ActionJump || s.Action == trace.ActionGoto) && s.Detail == chain {
			return true
		}
	}
	return false
}

// TestDispatchTree checks, at several sizes and in both families, that
// every Service address (cluster IP, external IP, load-balancer IP,
// NodePort) reaches its Service's chain through the dispatch tree, that a
// non-Service address and a wrong port reach none, and that a first packet
// crosses at most 16 rules per dispatch chain it enters.
func TestDispatchTree(t *testing.T) {
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, n := range []int{1, 20, 300, 5000} {
			t.Run(fmt.Sprintf("%s/%d", fam, n), func(t *testing.T) {
				c := scaleCluster{family: fam, n: n}
				p, ipt := c.fakeProxier(t)
				if err := p.Sync(context.Background()); err != nil {
					t.Fatalf("sync: %v", err)
				}
				rs := ipt.Ruleset()
				node := trace.Node{LocalAddrs: []netip.Addr{c.nodeIP()}}
				client := netip.MustParseAddr("198.51.100.7")
				if c.v6() {
					client = netip.MustParseAddr("2001:db8:c::7")
				}
				run := func(dst netip.Addr, port int) *trace.Outcome {
					t.Helper()
					res, err := trace.TraceWithOptions(rs, node, trace.Packet{
						Protocol: "tcp", Src: client, SrcPort: 40000, Dst: dst, DstPort: port, InInterface: "eth0",
					}, trace.Options{Misses: true})
					if err != nil {
						t.Fatalf("trace to %s:%d: %v", dst, port, err)
					}
					if len(res.Outcomes) != 1 {
						t.Fatalf("trace to %s:%d: %d outcomes, want 1 (one endpoint)", dst, port, len(res.Outcomes))
					}
					return &res.Outcomes[0]
				}
				maxCrossed := 0
				check := func(what string, o *trace.Outcome, wantChain string) {
					t.Helper()
					crossed, chains := dispatchCost(o)
					maxCrossed = max(maxCrossed, crossed)
					if crossed > 16*chains || chains > 10 {
						t.Errorf("%s: crossed %d rules in %d dispatch chains; want at most 16 per chain", what, crossed, chains)
					}
					if wantChain == "" {
						if o.DNAT.IsValid() {
							t.Errorf("%s: DNATed to %s; want no Service", what, o.DNAT)
						}
						return
					}
					if !jumpedTo(o, wantChain) {
						t.Errorf("%s: did not reach %s; path:\n%v", what, wantChain, o)
					}
				}
				step := 1
				if n > 500 {
					step = 13 // a sample of the large cluster keeps the test quick
				}
				for i := 0; i < n; i += step {
					names := rules.ChainNamesFor(proxy.ServicePortName{NamespacedName: s2nn("ns", fmt.Sprintf("svc-%d", i)), Port: "p", Protocol: v1.ProtocolTCP})
					port := 80 + i%3
					check(fmt.Sprintf("svc-%d cluster IP", i), run(netip.MustParseAddr(c.clusterIP(i)), port), names.Cluster)
					check(fmt.Sprintf("svc-%d cluster IP, wrong port", i), run(netip.MustParseAddr(c.clusterIP(i)), port+10), "")
					if i%7 == 0 {
						check(fmt.Sprintf("svc-%d external IP", i), run(netip.MustParseAddr(c.externalIP(i)), port), names.External)
					}
					if i%5 == 0 {
						check(fmt.Sprintf("svc-%d LB IP", i), run(netip.MustParseAddr(c.lbIP(i)), port), names.External)
					}
					if i%3 == 0 || i%5 == 0 {
						check(fmt.Sprintf("svc-%d NodePort", i), run(c.nodeIP(), int(c.nodePort(i))), names.External)
						check(fmt.Sprintf("svc-%d NodePort, wrong port", i), run(c.nodeIP(), int(c.nodePort(i))+1+n), "")
					}
				}
				others := []string{"172.31.0.1", "172.30.255.254", "10.9.9.9", "198.18.255.255"}
				if c.v6() {
					others = []string{"fd00:31::1", "fd00:30::ffff:ffff", "2001:db8:e::1:0", "fd00:10:9::1"}
				}
				for _, a := range others {
					check("non-Service address "+a, run(netip.MustParseAddr(a), 80), "")
				}
				var dsp int
				for _, ch := range p.Desired().NAT {
					if strings.HasPrefix(ch.Name, rules.PrefixDispatch) {
						dsp++
					}
				}
				t.Logf("%d Services (%s): %d nat dispatch chains, at most %d dispatch rules crossed per packet", n, fam, dsp, maxCrossed)
			})
		}
	}
}

// TestDispatchChurn checks that adding or removing one Service in a
// 5000-Service cluster rewrites only a handful of dispatch chains.
func TestDispatchChurn(t *testing.T) {
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(fam), func(t *testing.T) {
			c := scaleCluster{family: fam, n: 5000}
			p, ipt := c.fakeProxier(t)
			ctx := context.Background()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("sync: %v", err)
			}
			dispatchWritten := func() (n int, all []string) {
				r := p.LastSync()
				for _, tbl := range []string{"nat", "filter"} {
					for _, ch := range r.ChainsWritten[tbl] {
						// The top-level chains are written on every sync.
						if strings.HasPrefix(ch, rules.PrefixDispatch) {
							n++
							all = append(all, tbl+"/"+ch)
						}
					}
					for _, ch := range r.ChainsDeleted[tbl] {
						if strings.HasPrefix(ch, rules.PrefixDispatch) {
							n++
							all = append(all, tbl+"/-"+ch)
						}
					}
				}
				return n, all
			}
			for _, tc := range []struct {
				name   string
				change func()
			}{
				{"add", func() {
					p.OnServiceUpdate(nil, c.service(c.n))
					p.OnEndpointSliceUpdate(c.slice(c.n), false)
				}},
				{"remove", func() {
					p.OnServiceUpdate(c.service(c.n), nil)
					p.OnEndpointSliceUpdate(c.slice(c.n), true)
				}},
				{"remove another", func() {
					p.OnServiceUpdate(c.service(35), nil)
					p.OnEndpointSliceUpdate(c.slice(35), true)
				}},
			} {
				tc.change()
				if err := p.Sync(ctx); err != nil {
					t.Fatalf("%s: sync: %v", tc.name, err)
				}
				n, all := dispatchWritten()
				if n > 20 || n == 0 {
					t.Errorf("%s: one Service rewrote %d shared/dispatch chains %v; want 1..20", tc.name, n, all)
				} else {
					t.Logf("%s one Service (%s): %d shared/dispatch chains written: %v", tc.name, fam, n, all)
				}
			}
			// The kernel (fake) still routes the re-added and kept Services.
			res, err := ipt.Trace(trace.Node{LocalAddrs: []netip.Addr{c.nodeIP()}}, trace.Packet{
				Protocol: "tcp", Src: c.nodeIP(), Dst: netip.MustParseAddr(c.clusterIP(36)), DstPort: 80, Local: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Destinations(); got[netip.AddrPortFrom(netip.MustParseAddr(c.endpointIP(36)), 8080).String()] != 1 {
				t.Errorf("svc-36 after churn goes to %v", got)
			}
		})
	}
}
