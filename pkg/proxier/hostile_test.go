package proxier_test

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
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// The hostile corpus: API objects a buggy controller, an old apiserver or a
// hand-written manifest may hand the daemon. Each case runs the whole pure
// pipeline (informer events → tracker → renderer → planner → the strict
// fake iptables, whose restore parser rejects anything the kernel would)
// and traces packets: the good parts must route, the bad parts must be
// absent, and each bad part must be logged exactly once, however many
// syncs follow.

const (
	hostileNodeIP   = "192.0.2.10"
	hostileNodeIPv6 = "fd00::10"
	maxNameLen      = 63 // DNS-1035 label: Service and namespace names
	maxPortNameLen  = 15 // IANA_SVC_NAME
)

// hostileRoute is a packet and where it must go: to one of want (each
// "ip:port" with equal share), or, with want empty, nowhere (no DNAT: the
// bad part is absent from the rules).
type hostileRoute struct {
	proto   string
	dst     string
	port    int
	want    []string
	wantAny int // instead of want: this many distinct endpoints, equal shares
}

type hostileCase struct {
	name     string
	family   v1.IPFamily
	services []*v1.Service
	slices   []*discovery.EndpointSlice
	routes   []hostileRoute
	// invalid is how many "Ignoring invalid part" lines the objects earn.
	invalid int
	// noLabel is how many slices are ignored for lack of a Service label.
	noLabel int
	// absent are strings the tables must not hold (for bad parts no
	// packet can be traced to).
	absent []string
	// large marks the cases that take a minute through the real tools on
	// a loaded machine; the kernel test skips them with -short.
	large bool
}

func hSvc(ns, name, clusterIP string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func hSlice(ns, svc, name string, port int32, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	if len(ips) > 0 && strings.Contains(ips[0], ":") && !strings.Contains(ips[0], ".") {
		s.AddressType = discovery.AddressTypeIPv6
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-b"),
		})
	}
	return s
}

func tcp(dst string, port int, want ...string) hostileRoute {
	return hostileRoute{proto: "tcp", dst: dst, port: port, want: want}
}

func hostileCases() []hostileCase {
	tenThousand := hSlice("ns", "big", "big-1", 8080)
	for i := range 10000 {
		tenThousand.Endpoints = append(tenThousand.Endpoints, discovery.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.8.%d.%d", i/250, i%250+1)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	thousandPorts := hSvc("ns", "many-ports", "172.30.1.40")
	thousandPorts.Spec.Ports = nil
	manyPortsSlice := hSlice("ns", "many-ports", "many-ports-1", 0, "10.1.0.40")
	manyPortsSlice.Ports = nil
	for i := 1; i <= 1000; i++ {
		name := fmt.Sprintf("p%d", i)
		thousandPorts.Spec.Ports = append(thousandPorts.Spec.Ports, v1.ServicePort{Name: name, Port: int32(i), Protocol: v1.ProtocolTCP})
		manyPortsSlice.Ports = append(manyPortsSlice.Ports, discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(int32(10000 + i)), Protocol: ptr.To(v1.ProtocolTCP)})
	}
	longNS, longName := strings.Repeat("n", maxNameLen), strings.Repeat("s", maxNameLen)
	longPort := strings.Repeat("x", maxPortNameLen)
	longSlice := hSlice(longNS, longName, strings.Repeat("e", 253), 8080, "10.1.0.50")
	longSlice.Ports[0].Name = ptr.To(longPort)
	unicodeSlice := hSlice("ns", "unicode", "unicode-1", 8080, "10.1.0.51")
	unicodeSlice.Ports[0].Name = ptr.To("pört-☃ \"q\"")
	dupTerminating := hSlice("ns", "dup", "dup-2", 8080, "10.1.0.61", "10.1.0.62")
	dupTerminating.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	oddProto := hSlice("ns", "odd-proto", "odd-proto-1", 5353, "10.1.0.70")
	oddProto.Ports = []discovery.EndpointPort{
		{Name: ptr.To("u"), Port: ptr.To[int32](5353), Protocol: ptr.To(v1.Protocol("uDp"))},
		{Name: ptr.To("t"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.Protocol("Tcp"))},
		{Name: ptr.To("i"), Port: ptr.To[int32](7), Protocol: ptr.To(v1.Protocol("ICMP"))},
	}
	badPorts := hSlice("ns", "bad-ports", "bad-ports-1", 8080, "10.1.0.80")
	badPorts.Ports = append(badPorts.Ports,
		discovery.EndpointPort{Name: ptr.To("zero"), Port: ptr.To[int32](0), Protocol: ptr.To(v1.ProtocolTCP)},
		discovery.EndpointPort{Name: ptr.To("big"), Port: ptr.To[int32](65536), Protocol: ptr.To(v1.ProtocolTCP)},
		discovery.EndpointPort{Name: ptr.To("nil"), Protocol: ptr.To(v1.ProtocolTCP)},
	)
	noAddr := hSlice("ns", "bad-eps", "bad-eps-2", 8080)
	noAddr.Endpoints = []discovery.Endpoint{{Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}}
	unlabelled := hSlice("ns", "x", "unlabelled-1", 8080, "10.1.0.90")
	unlabelled.Labels = nil

	return []hostileCase{
		{
			name: "invalid and wrong-family external IPs",
			services: []*v1.Service{hSvc("ns", "ext", "172.30.1.1", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"not-an-ip", "203.0.113.300", "2001:db8::5", "203.0.113.5"}
			})},
			slices: []*discovery.EndpointSlice{hSlice("ns", "ext", "ext-1", 8080, "10.1.0.2")},
			routes: []hostileRoute{
				tcp("172.30.1.1", 80, "10.1.0.2:8080"),
				tcp("203.0.113.5", 80, "10.1.0.2:8080"),
			},
			invalid: 2, // the IPv6 address belongs to the other family: silently not ours
		},
		{
			name:     "invalid, wrong-family and unspecified endpoint addresses",
			services: []*v1.Service{hSvc("ns", "bad-eps", "172.30.1.2")},
			slices: []*discovery.EndpointSlice{
				hSlice("ns", "bad-eps", "bad-eps-1", 8080, "10.1.0.999", "2001:db8::1", "0.0.0.0", "224.0.0.1", "10.1.0.3"),
				noAddr,
			},
			routes:  []hostileRoute{tcp("172.30.1.2", 80, "10.1.0.3:8080")},
			invalid: 5,
		},
		{
			name: "IPv4-mapped IPv6 everywhere",
			services: []*v1.Service{
				hSvc("ns", "mapped-cip", "::ffff:172.30.1.3"),
				hSvc("ns", "mapped-ext", "172.30.1.4", func(s *v1.Service) {
					s.Spec.ExternalIPs = []string{"::ffff:203.0.113.6", "203.0.113.7"}
				}),
			},
			slices: []*discovery.EndpointSlice{
				hSlice("ns", "mapped-cip", "mapped-cip-1", 8080, "10.1.0.4"),
				hSlice("ns", "mapped-ext", "mapped-ext-1", 8080, "::ffff:10.1.0.5", "10.1.0.6"),
			},
			routes: []hostileRoute{
				tcp("172.30.1.3", 80),
				tcp("172.30.1.4", 80, "10.1.0.6:8080"),
				tcp("203.0.113.6", 80),
				tcp("203.0.113.7", 80, "10.1.0.6:8080"),
			},
			invalid: 3,
		},
		{
			name:   "IPv4-mapped IPv6 in an IPv6 Service",
			family: v1.IPv6Protocol,
			services: []*v1.Service{hSvc("ns", "mapped6", "fd00:30::1", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"::ffff:203.0.113.8", "2001:db8::8"}
			})},
			slices: []*discovery.EndpointSlice{hSlice("ns", "mapped6", "mapped6-1", 8080, "fd00:1::8")},
			routes: []hostileRoute{
				tcp("fd00:30::1", 80, "[fd00:1::8]:8080"),
				tcp("2001:db8::8", 80, "[fd00:1::8]:8080"),
			},
			absent:  []string{"::ffff:"},
			invalid: 1,
		},
		{
			name: "Service ports 0 and 65536, node port 65536",
			services: []*v1.Service{hSvc("ns", "bad-ports", "172.30.1.5", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports = []v1.ServicePort{
					{Name: "zero", Port: 0, Protocol: v1.ProtocolTCP, NodePort: 30010},
					{Name: "big", Port: 65536, Protocol: v1.ProtocolTCP, NodePort: 30011},
					{Name: "p", Port: 81, Protocol: v1.ProtocolTCP, NodePort: 65536},
					{Name: "q", Port: 82, Protocol: v1.ProtocolTCP, NodePort: 30012},
				}
			})},
			slices: []*discovery.EndpointSlice{func() *discovery.EndpointSlice {
				s := badPorts
				s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To("q"), Port: ptr.To[int32](8082), Protocol: ptr.To(v1.ProtocolTCP)})
				return s
			}()},
			routes: []hostileRoute{
				tcp("172.30.1.5", 81, "10.1.0.80:8080"),
				tcp("172.30.1.5", 82, "10.1.0.80:8082"),
				tcp(hostileNodeIP, 30012, "10.1.0.80:8082"),
				tcp(hostileNodeIP, 30010),
				tcp(hostileNodeIP, 30011),
			},
			invalid: 3 + 3, // Service: port 0, port 65536, nodePort 65536; slice: 0, 65536, nil
		},
		{
			name: "protocols in odd case, and one iptables cannot serve",
			services: []*v1.Service{hSvc("ns", "odd-proto", "172.30.1.6", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "u", Port: 53, Protocol: "uDp"},
					{Name: "t", Port: 80, Protocol: "tcp"},
					{Name: "i", Port: 7, Protocol: "ICMP"},
				}
			})},
			slices: []*discovery.EndpointSlice{oddProto},
			routes: []hostileRoute{
				{proto: "udp", dst: "172.30.1.6", port: 53, want: []string{"10.1.0.70:5353"}},
				tcp("172.30.1.6", 80, "10.1.0.70:8080"),
			},
			invalid: 2,
		},
		{
			name:     "1000 ports on one Service",
			services: []*v1.Service{thousandPorts},
			slices:   []*discovery.EndpointSlice{manyPortsSlice},
			routes: []hostileRoute{
				tcp("172.30.1.40", 1, "10.1.0.40:10001"),
				tcp("172.30.1.40", 500, "10.1.0.40:10500"),
				tcp("172.30.1.40", 1000, "10.1.0.40:11000"),
				tcp("172.30.1.40", 1001),
			},
		},
		{
			name:     "10,000 endpoints in one slice",
			services: []*v1.Service{hSvc("ns", "big", "172.30.1.7")},
			slices:   []*discovery.EndpointSlice{tenThousand},
			routes:   []hostileRoute{{proto: "tcp", dst: "172.30.1.7", port: 80, wantAny: 10000}},
			large:    true,
		},
		{
			name:     "duplicate endpoints across slices",
			services: []*v1.Service{hSvc("ns", "dup", "172.30.1.8")},
			slices: []*discovery.EndpointSlice{
				hSlice("ns", "dup", "dup-1", 8080, "10.1.0.61", "10.1.0.61"),
				dupTerminating,
			},
			routes: []hostileRoute{tcp("172.30.1.8", 80, "10.1.0.61:8080", "10.1.0.62:8080")},
		},
		{
			name: "slices whose Service does not exist, or is not named",
			slices: []*discovery.EndpointSlice{
				hSlice("ns", "ghost", "ghost-1", 8080, "10.1.0.91"),
				unlabelled,
			},
			noLabel: 1,
		},
		{
			name:     "names at maximum length",
			services: []*v1.Service{hSvc(longNS, longName, "172.30.1.9", func(s *v1.Service) { s.Spec.Ports[0].Name = longPort })},
			slices:   []*discovery.EndpointSlice{longSlice},
			routes:   []hostileRoute{tcp("172.30.1.9", 80, "10.1.0.50:8080")},
		},
		{
			name:     "Unicode and quotes in a port name",
			services: []*v1.Service{hSvc("ns", "unicode", "172.30.1.10", func(s *v1.Service) { s.Spec.Ports[0].Name = "pört-☃ \"q\"" })},
			slices:   []*discovery.EndpointSlice{unicodeSlice},
			routes:   []hostileRoute{tcp("172.30.1.10", 80, "10.1.0.51:8080")},
		},
		{
			name: "LoadBalancer ingress with a hostname only, or a bad IP",
			services: []*v1.Service{hSvc("ns", "lb", "172.30.1.11", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30020
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{Hostname: "lb.example.com"},
					{IP: "lb.example.com"},
					{IP: "203.0.113.20"},
				}
			})},
			slices: []*discovery.EndpointSlice{hSlice("ns", "lb", "lb-1", 8080, "10.1.0.20")},
			routes: []hostileRoute{
				tcp("172.30.1.11", 80, "10.1.0.20:8080"),
				tcp(hostileNodeIP, 30020, "10.1.0.20:8080"),
				tcp("203.0.113.20", 80, "10.1.0.20:8080"),
			},
			invalid: 1,
		},
		{
			name: "unparsable loadBalancerSourceRanges close the firewall",
			services: []*v1.Service{hSvc("ns", "lbfw", "172.30.1.12", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30021
				s.Spec.LoadBalancerSourceRanges = []string{"not-a-cidr", "198.51.100.0/33"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.21"}}
			})},
			slices: []*discovery.EndpointSlice{hSlice("ns", "lbfw", "lbfw-1", 8080, "10.1.0.21")},
			routes: []hostileRoute{
				tcp("172.30.1.12", 80, "10.1.0.21:8080"),
				tcp("203.0.113.21", 80), // nobody is allowed: dropped, never DNATed
			},
			invalid: 2,
		},
		{
			name: "session affinity timeout out of range",
			services: []*v1.Service{hSvc("ns", "sticky", "172.30.1.13", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](-5)}}
			})},
			slices:  []*discovery.EndpointSlice{hSlice("ns", "sticky", "sticky-1", 8080, "10.1.0.22")},
			routes:  []hostileRoute{tcp("172.30.1.13", 80, "10.1.0.22:8080")},
			invalid: 1,
		},
	}
}

// TestHostileCorpus feeds each hostile case, next to a normal Service, to a
// proxier writing into the strict fake, and traces packets from outside
// the node.
func TestHostileCorpus(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			fam := tc.family
			if fam == "" {
				fam = v1.IPv4Protocol
			}
			nodeIP, goodIP, goodEP, client := hostileNodeIP, "172.30.0.10", "10.1.0.1", "198.51.100.7"
			if fam == v1.IPv6Protocol {
				nodeIP, goodIP, goodEP, client = hostileNodeIPv6, "fd00:30::10", "fd00:1::1", "2001:db8:1::7"
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			fake := memory.New(fam)
			p := proxier.New(logger, proxier.Options{
				Rules: rules.Config{
					Family:        fam,
					NodeName:      "node-a",
					NodeIPs:       []netip.Addr{netip.MustParseAddr(nodeIP)},
					MasqueradeBit: 14,
				},
				SyncPeriod: time.Minute,
				IPTables:   fake,
			})
			good := hSvc("ns", "good", goodIP)
			goodSlice := hSlice("ns", "good", "good-1", 8080, goodEP)
			for _, s := range append([]*v1.Service{good}, tc.services...) {
				p.OnServiceUpdate(nil, s)
			}
			for _, s := range append([]*discovery.EndpointSlice{goodSlice}, tc.slices...) {
				p.OnEndpointSliceUpdate(s, false)
			}
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
			ctx := context.Background()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("sync: %v", err)
			}
			// Two more syncs, one of them full, as the sync loop runs them:
			// nothing is logged again.
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("second sync: %v", err)
			}
			p.ForceFullSync()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("full sync: %v", err)
			}

			node := trace.Node{LocalAddrs: []netip.Addr{netip.MustParseAddr(nodeIP)}}
			goodEPPort := netip.AddrPortFrom(netip.MustParseAddr(goodEP), 8080).String()
			routes := append([]hostileRoute{tcp(goodIP, 80, goodEPPort)}, tc.routes...)
			for _, r := range routes {
				pkt := trace.Packet{Protocol: r.proto, Src: netip.MustParseAddr(client), SrcPort: 40000,
					Dst: netip.MustParseAddr(r.dst), DstPort: r.port, InInterface: "eth0"}
				res, err := fake.Trace(node, pkt)
				if err != nil {
					t.Fatalf("trace %v: %v", pkt, err)
				}
				checkRoute(t, pkt, r, res)
			}

			saved := string(fake.Ruleset().SaveAll())
			for _, a := range tc.absent {
				if strings.Contains(saved, a) {
					t.Errorf("the tables hold %q; the bad part must be absent", a)
				}
			}

			var invalid, noLabel int
			for _, e := range logger.GetSink().(ktesting.Underlier).GetBuffer().Data() {
				switch {
				case strings.HasPrefix(e.Message, "Ignoring invalid part"):
					invalid++
				case strings.HasPrefix(e.Message, "Ignoring EndpointSlice without"):
					noLabel++
				}
			}
			if invalid != tc.invalid || noLabel != tc.noLabel {
				t.Errorf("logged %d invalid parts and %d unlabelled slices over three syncs, want %d and %d",
					invalid, noLabel, tc.invalid, tc.noLabel)
			}
		})
	}
}

// TestHostileCorpusKernel restores what the hostile corpus renders with the
// real iptables-restore (nft backend) in a private network namespace: the
// fake accepting a payload is only as good as its agreement with the real
// tools, and names at maximum length, Unicode and quotes in comments and
// 10,000 endpoints are exactly where they could disagree. A full resync
// afterwards must write nothing (the kernel prints back what was written).
func TestHostileCorpusKernel(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			fam := tc.family
			if fam == "" {
				fam = v1.IPv4Protocol
			}
			if tc.large && testing.Short() {
				t.Skip("-short: 10,000 endpoints through the real iptables-restore take a while")
			}
			kerneltest.Enter(t)
			ctx := context.Background()
			if err := iptables.Present(ctx, fam, iptables.BackendNFT); err != nil {
				t.Skipf("iptables (nft) not usable here: %v", err)
			}
			ipt, err := iptables.New(fam, iptables.BackendNFT)
			if err != nil {
				t.Fatal(err)
			}
			nodeIP := hostileNodeIP
			if fam == v1.IPv6Protocol {
				nodeIP = hostileNodeIPv6
			}
			logger, _ := ktesting.NewTestContext(t)
			p := proxier.New(logger, proxier.Options{
				Rules:      rules.Config{Family: fam, NodeName: "node-a", NodeIPs: []netip.Addr{netip.MustParseAddr(nodeIP)}, MasqueradeBit: 14},
				SyncPeriod: time.Minute,
				IPTables:   ipt,
			})
			for _, s := range tc.services {
				p.OnServiceUpdate(nil, s)
			}
			for _, s := range tc.slices {
				p.OnEndpointSliceUpdate(s, false)
			}
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("iptables-restore refused the rendered rules: %v", err)
			}
			p.ForceFullSync()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("full resync: %v", err)
			}
			if r := p.LastSync(); r.RulesWritten != 0 {
				t.Errorf("a full resync rewrote %d rules in %v: the kernel does not print back what was rendered", r.RulesWritten, r.ChainsWritten)
			}
		})
	}
}

// checkRoute asserts where a traced packet went.
func checkRoute(t *testing.T, pkt trace.Packet, r hostileRoute, res *trace.Result) {
	t.Helper()
	dnat := map[string]float64{}
	for _, o := range res.Outcomes {
		if o.DNAT.IsValid() && o.Verdict == trace.Accept {
			dnat[o.DNAT.String()] += o.Probability
		}
	}
	switch {
	case r.wantAny > 0:
		if len(dnat) != r.wantAny {
			t.Errorf("%v reaches %d endpoints, want %d", pkt, len(dnat), r.wantAny)
		}
		for ep, p := range dnat {
			if d := p - 1/float64(r.wantAny); d > 1e-9 || d < -1e-9 {
				t.Errorf("%v reaches %s with probability %g, want %g", pkt, ep, p, 1/float64(r.wantAny))
				break
			}
		}
	case len(r.want) == 0:
		if len(dnat) != 0 {
			t.Errorf("%v is DNATed to %v; the bad part must be absent", pkt, dnat)
		}
	default:
		if len(dnat) != len(r.want) {
			t.Errorf("%v reaches %v, want %v\n%s", pkt, dnat, r.want, res.Summary())
			return
		}
		for _, w := range r.want {
			if d := dnat[w] - 1/float64(len(r.want)); d > 1e-9 || d < -1e-9 {
				t.Errorf("%v reaches %v, want %v with equal shares", pkt, dnat, r.want)
			}
		}
	}
}
