package rules_test

// Behaviour tests: Services and EndpointSlices go through the sync path
// into the fake iptables (pkg/proxier/proxiertest) and packets are traced
// through the result. Every case says where a packet goes: which endpoints
// with which probability, masqueraded or not, REJECT or DROP, or untouched
// (delivered to its original destination). None looks at rule text.

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	rt "github.com/iptproxy/iptproxy/pkg/proxier/proxiertest"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// Addresses around the node (see proxiertest for the node's own).
const (
	podA    = "10.244.1.5" // on this node
	podB    = "10.244.2.5" // on node-b
	podC    = "10.244.3.5" // on node-c
	client  = "10.244.1.7" // a pod on this node, behind cni0
	remote  = "10.244.2.9" // a pod on node-b, arriving by eth0
	outside = "203.0.113.50"
	lbIP    = "203.0.113.10"
	extIP   = "198.51.100.7"
)

var v4 = rt.DefaultConfig(v1.IPv4Protocol)

func tcpPorts(port int32) []discovery.EndpointPort {
	return []discovery.EndpointPort{rt.SlicePort("p", port, v1.ProtocolTCP)}
}

// twoEndpoints is a slice for ns/<svc> with podA (local) and podB.
func twoEndpoints(svc string) *discovery.EndpointSlice {
	return rt.Slice("ns/"+svc, svc+"-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName), rt.Endpoint(podB, "node-b"))
}

// Packets from the usual places.
func fromPod(proto, dst string) trace.Packet     { return rt.In("cni0", proto, client, dst) }
func fromRemote(proto, dst string) trace.Packet  { return rt.In("eth0", proto, remote, dst) }
func fromOutside(proto, dst string) trace.Packet { return rt.In("eth0", proto, outside, dst) }
func fromNode(proto, dst string) trace.Packet    { return rt.Local(proto, rt.NodeIP, dst) }
func fromLoopback(proto, dst string) trace.Packet {
	return rt.Local(proto, "127.0.0.1", dst)
}

var (
	both     = rt.Even(podA+":8080", podB+":8080")
	bothMasq = rt.Even(podA+":8080 masq", podB+":8080 masq")
	onlyA    = rt.Where{podA + ":8080": 1}
	reject   = rt.Where{"REJECT": 1}
	drop     = rt.Where{"DROP": 1}
)

func untouched(dst string) rt.Where { return rt.Where{dst: 1} }

func cluster(t *testing.T, cfg rules.Config, objs ...runtime.Object) *rt.Cluster {
	t.Helper()
	return rt.NewCluster(t, cfg, []string{rt.NodeIP2}, objs...)
}

func TestClusterIPProtocols(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/multi", "172.30.0.1", rt.Ports(
			rt.Port("t", 80, v1.ProtocolTCP, 0),
			rt.Port("u", 53, v1.ProtocolUDP, 0),
			rt.Port("s", 9000, v1.ProtocolSCTP, 0))),
		rt.Slice("ns/multi", "multi-1", []discovery.EndpointPort{
			rt.SlicePort("t", 8080, v1.ProtocolTCP),
			rt.SlicePort("u", 5353, v1.ProtocolUDP),
			rt.SlicePort("s", 9900, v1.ProtocolSCTP),
		}, rt.Endpoint(podA, rt.NodeName), rt.Endpoint(podB, "node-b")),
	)
	check(t, c, []tcase{
		{"tcp from a pod", fromRemote("tcp", "172.30.0.1:80"), both},
		{"udp from a pod", fromRemote("udp", "172.30.0.1:53"), rt.Even(podA+":5353", podB+":5353")},
		{"sctp from a pod", fromRemote("sctp", "172.30.0.1:9000"), rt.Even(podA+":9900", podB+":9900")},
		{"udp to the tcp port is not the Service", fromRemote("udp", "172.30.0.1:80"), untouched("172.30.0.1:80")},
		{"tcp to the udp port is not the Service", fromRemote("tcp", "172.30.0.1:53"), untouched("172.30.0.1:53")},
		{"tcp from outside the cluster is masqueraded", fromOutside("tcp", "172.30.0.1:80"), bothMasq},
		{"udp from the node is masqueraded", fromNode("udp", "172.30.0.1:53"), rt.Even(podA+":5353 masq", podB+":5353 masq")},
		{"other addresses are untouched", fromRemote("tcp", "172.30.0.99:80"), untouched("172.30.0.99:80")},
	})
}

func TestMultiPortNamedPorts(t *testing.T) {
	// The two slices resolve the named ports to different target ports.
	c := cluster(t, v4,
		rt.Service("ns/web", "172.30.0.2", rt.Ports(
			rt.Port("http", 80, v1.ProtocolTCP, 0),
			rt.Port("metrics", 9090, v1.ProtocolTCP, 0))),
		rt.Slice("ns/web", "web-1", []discovery.EndpointPort{
			rt.SlicePort("http", 8080, v1.ProtocolTCP), rt.SlicePort("metrics", 9100, v1.ProtocolTCP),
		}, rt.Endpoint(podA, rt.NodeName)),
		rt.Slice("ns/web", "web-2", []discovery.EndpointPort{
			rt.SlicePort("metrics", 9101, v1.ProtocolTCP), rt.SlicePort("http", 8081, v1.ProtocolTCP),
		}, rt.Endpoint(podB, "node-b")),
		// A slice port that names no Service port is never used.
		rt.Slice("ns/web", "web-3", []discovery.EndpointPort{rt.SlicePort("other", 7000, v1.ProtocolTCP)},
			rt.Endpoint(podC, "node-c")),
	)
	check(t, c, []tcase{
		{"http", fromRemote("tcp", "172.30.0.2:80"), rt.Even(podA+":8080", podB+":8081")},
		{"metrics", fromRemote("tcp", "172.30.0.2:9090"), rt.Even(podA+":9100", podB+":9101")},
	})
}

func TestNodePort(t *testing.T) {
	svc := rt.Service("ns/np", "172.30.0.3", rt.NodePort(30080))
	all := cluster(t, v4, svc, twoEndpoints("np"))
	check(t, all, []tcase{
		{"node IP from outside", fromOutside("tcp", rt.NodeIP+":30080"), bothMasq},
		{"second local address from outside", fromOutside("tcp", rt.NodeIP2+":30080"), bothMasq},
		{"node IP from a pod", fromPod("tcp", rt.NodeIP+":30080"), bothMasq},
		{"node IP from the node", fromNode("tcp", rt.NodeIP+":30080"), bothMasq},
		{"localhost from the node", fromLoopback("tcp", "127.0.0.1:30080"), bothMasq},
		{"another port on the node is untouched", fromOutside("tcp", rt.NodeIP+":30081"), untouched(rt.NodeIP + ":30081")},
		{"udp on the NodePort is untouched", fromOutside("udp", rt.NodeIP+":30080"), untouched(rt.NodeIP + ":30080")},
		{"a non-local address is untouched", fromOutside("tcp", "192.168.0.99:30080"), untouched("192.168.0.99:30080")},
		{"cluster IP still works", fromRemote("tcp", "172.30.0.3:80"), both},
		// The anti-martian rule: route_localnet must not open the
		// node's loopback services to the network.
		{"loopback from outside is dropped", rt.In("eth0", "tcp", outside, "127.0.0.1:22"), drop},
		{"loopback service from the node is untouched", fromLoopback("tcp", "127.0.0.1:22"), untouched("127.0.0.1:22")},
	})

	// nodePortAddresses: the primary node IP only (as "primary" or a
	// /32 resolves to), no loopback, so no localhost NodePorts either.
	primary := v4
	primary.NodePortAddresses = v4.NodeIPs
	primary.LocalhostNodePorts = false
	c := cluster(t, primary, svc, twoEndpoints("np"))
	check(t, c, []tcase{
		{"primary node IP", fromOutside("tcp", rt.NodeIP+":30080"), bothMasq},
		{"second local address is not a NodePort address", fromOutside("tcp", rt.NodeIP2+":30080"), untouched(rt.NodeIP2 + ":30080")},
		{"no localhost NodePorts", fromLoopback("tcp", "127.0.0.1:30080"), untouched("127.0.0.1:30080")},
		{"no anti-martian rule without localhost NodePorts", rt.In("eth0", "tcp", outside, "127.0.0.1:22"), untouched("127.0.0.1:22")},
	})

	// nodePortAddresses: 127.0.0.0/8 and 192.168.1.0/24 resolve to
	// 127.0.0.1 and NodeIP2.
	lo := v4
	lo.NodePortAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr(rt.NodeIP2)}
	c = cluster(t, lo, svc, twoEndpoints("np"))
	check(t, c, []tcase{
		{"address in the CIDR", fromOutside("tcp", rt.NodeIP2+":30080"), bothMasq},
		{"node IP outside the CIDRs", fromOutside("tcp", rt.NodeIP+":30080"), untouched(rt.NodeIP + ":30080")},
		{"localhost", fromLoopback("tcp", "127.0.0.1:30080"), bothMasq},
	})

	// With nfacct counting (kube-proxy's localhost NodePort and INVALID
	// counters), packets go where they went without.
	counted := v4
	counted.NFAcctLocalhostNodePorts = "localhost_nps_accepted_pkts"
	counted.NFAcctInvalidDropped = "ct_state_invalid_dropped_pkts"
	c = cluster(t, counted, svc, twoEndpoints("np"))
	check(t, c, []tcase{
		{"counted: localhost", fromLoopback("tcp", "127.0.0.1:30080"), bothMasq},
		{"counted: localhost, another port", fromLoopback("tcp", "127.0.0.1:30081"), untouched("127.0.0.1:30081")},
		{"counted: node IP", fromOutside("tcp", rt.NodeIP+":30080"), bothMasq},
		{"counted: cluster IP", fromRemote("tcp", "172.30.0.3:80"), both},
	})

	// localhost NodePorts turned off (--iptables-localhost-nodeports=false).
	off := v4
	off.LocalhostNodePorts = false
	c = cluster(t, off, svc, twoEndpoints("np"))
	check(t, c, []tcase{
		{"node IP", fromOutside("tcp", rt.NodeIP+":30080"), bothMasq},
		{"no localhost NodePorts", fromLoopback("tcp", "127.0.0.1:30080"), untouched("127.0.0.1:30080")},
	})
}

func TestLoadBalancerAndExternalIPs(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/lb", "172.30.0.4",
			rt.LoadBalancer(30081, lbIP),
			rt.IngressIPMode("203.0.113.11", v1.LoadBalancerIPModeVIP),
			rt.IngressIPMode("203.0.113.12", v1.LoadBalancerIPModeProxy),
			rt.ExternalIPs(extIP)),
		twoEndpoints("lb"),
		rt.Service("ns/ext", "172.30.0.5", rt.ExternalIPs("198.51.100.8")),
		twoEndpoints("ext"),
	)
	check(t, c, []tcase{
		{"LB IP, ipMode unset", fromOutside("tcp", lbIP+":80"), bothMasq},
		{"LB IP, ipMode VIP", fromOutside("tcp", "203.0.113.11:80"), bothMasq},
		{"LB IP, ipMode Proxy is not captured", fromOutside("tcp", "203.0.113.12:80"), untouched("203.0.113.12:80")},
		{"LB IP from a pod", fromPod("tcp", lbIP+":80"), bothMasq},
		{"LB IP from the node", fromNode("tcp", lbIP+":80"), bothMasq},
		{"LB IP on another port", fromOutside("tcp", lbIP+":81"), untouched(lbIP + ":81")},
		{"external IP", fromOutside("tcp", extIP+":80"), bothMasq},
		{"external IP of a ClusterIP Service", fromOutside("tcp", "198.51.100.8:80"), bothMasq},
		{"external IP from a pod", fromPod("tcp", "198.51.100.8:80"), bothMasq},
		{"NodePort of the LoadBalancer", fromOutside("tcp", rt.NodeIP+":30081"), bothMasq},
	})
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	lb := func(ranges ...string) *v1.Service {
		return rt.Service("ns/fw", "172.30.0.6", rt.LoadBalancer(30082, lbIP), rt.SourceRanges(ranges...))
	}
	c := cluster(t, v4, lb("198.51.100.0/24"), twoEndpoints("fw"))
	check(t, c, []tcase{
		{"node to its own VIP, node IP not in a range", rt.Local("tcp", lbIP, lbIP+":80"), drop},
		{"allowed source", rt.In("eth0", "tcp", "198.51.100.5", lbIP+":80"), bothMasq},
		{"other source is dropped", fromOutside("tcp", lbIP+":80"), drop},
		{"the node is not in the range", fromNode("tcp", lbIP+":80"), drop},
		{"a pod is not in the range", fromPod("tcp", lbIP+":80"), drop},
		{"the NodePort is not filtered", fromOutside("tcp", rt.NodeIP+":30082"), bothMasq},
		{"the cluster IP is not filtered", fromRemote("tcp", "172.30.0.6:80"), both},
	})

	// The node's IP is in a range: the node reaches the LB IP, and so does
	// traffic from the LB IP itself (hairpinned by the load balancer).
	c = cluster(t, v4, lb("198.51.100.0/24", "192.168.0.0/24"), twoEndpoints("fw"))
	fromVIP := rt.Local("tcp", lbIP, lbIP+":80") // the VIP is a local address
	check(t, c, []tcase{
		{"node to its own VIP, source the VIP", fromVIP, bothMasq},
		{"node IP in range", fromNode("tcp", lbIP+":80"), bothMasq},
		{"source is the LB IP", rt.In("eth0", "tcp", lbIP, lbIP+":80"), bothMasq},
		{"allowed source", rt.In("eth0", "tcp", "198.51.100.5", lbIP+":80"), bothMasq},
		{"other source is dropped", fromOutside("tcp", lbIP+":80"), drop},
	})

	// A range covering everything is no filter at all; nor are ranges of
	// the other family only (as in kube-proxy, per family).
	c = cluster(t, v4, lb("0.0.0.0/0", "198.51.100.0/24"), twoEndpoints("fw"))
	check(t, c, []tcase{
		{"0.0.0.0/0 lets everyone in", fromOutside("tcp", lbIP+":80"), bothMasq},
	})
	c = cluster(t, v4, lb("2001:db8::/32"), twoEndpoints("fw"))
	check(t, c, []tcase{
		{"IPv6 ranges do not filter IPv4", fromOutside("tcp", lbIP+":80"), bothMasq},
	})
	c = cluster(t, v4, lb(" 198.51.100.0/24 ", "2001:db8::/32"), twoEndpoints("fw"))
	check(t, c, []tcase{
		{"padded range, allowed source", rt.In("eth0", "tcp", "198.51.100.5", lbIP+":80"), bothMasq},
		{"padded range, other source", fromOutside("tcp", lbIP+":80"), drop},
	})
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	svc := rt.Service("ns/etp", "172.30.0.7", rt.LoadBalancer(30083, lbIP), rt.ExternalIPs(extIP), rt.ExternalLocal(32000))
	c := cluster(t, v4, svc, twoEndpoints("etp"))
	check(t, c, []tcase{
		{"NodePort from outside: local endpoint, source kept", fromOutside("tcp", rt.NodeIP+":30083"), onlyA},
		{"LB IP from outside: local endpoint, source kept", fromOutside("tcp", lbIP+":80"), onlyA},
		{"external IP from outside: local endpoint, source kept", fromOutside("tcp", extIP+":80"), onlyA},
		{"LB IP from a pod on this node: every endpoint", fromPod("tcp", lbIP+":80"), both},
		{"NodePort from a pod on this node: every endpoint", fromPod("tcp", rt.NodeIP+":30083"), both},
		{"LB IP from the node: every endpoint, masqueraded", fromNode("tcp", lbIP+":80"), bothMasq},
		{"NodePort from the node: every endpoint, masqueraded", fromNode("tcp", rt.NodeIP+":30083"), bothMasq},
		{"localhost NodePort: every endpoint, masqueraded", fromLoopback("tcp", "127.0.0.1:30083"), bothMasq},
		{"cluster IP keeps the cluster policy", fromRemote("tcp", "172.30.0.7:80"), both},
	})

	// No local endpoint: external traffic is dropped, the rest still works.
	c = cluster(t, v4, svc, rt.Slice("ns/etp", "etp-1", tcpPorts(8080), rt.Endpoint(podB, "node-b")))
	onlyB := rt.Where{podB + ":8080": 1}
	check(t, c, []tcase{
		{"NodePort from outside", fromOutside("tcp", rt.NodeIP+":30083"), drop},
		{"LB IP from outside", fromOutside("tcp", lbIP+":80"), drop},
		{"external IP from outside", fromOutside("tcp", extIP+":80"), drop},
		{"LB IP from a pod on this node", fromPod("tcp", lbIP+":80"), onlyB},
		{"NodePort from the node", fromNode("tcp", rt.NodeIP+":30083"), rt.Where{podB + ":8080 masq": 1}},
		{"cluster IP", fromRemote("tcp", "172.30.0.7:80"), onlyB},
	})

}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	svc := rt.Service("ns/itp", "172.30.0.8", rt.InternalLocal())
	c := cluster(t, v4, svc, twoEndpoints("itp"))
	check(t, c, []tcase{
		{"from a pod: local endpoint only", fromPod("tcp", "172.30.0.8:80"), onlyA},
		{"from a pod on another node's address", fromRemote("tcp", "172.30.0.8:80"), onlyA},
		{"from the node: local endpoint, masqueraded", fromNode("tcp", "172.30.0.8:80"), rt.Where{podA + ":8080 masq": 1}},
	})
	c = cluster(t, v4, svc, rt.Slice("ns/itp", "itp-1", tcpPorts(8080), rt.Endpoint(podB, "node-b")))
	check(t, c, []tcase{
		{"no local endpoint: dropped", fromPod("tcp", "172.30.0.8:80"), drop},
		{"no local endpoint, from the node: dropped", fromNode("tcp", "172.30.0.8:80"), drop},
	})

	// ITP Local with a NodePort: external traffic still uses every
	// endpoint (ETP Cluster).
	np := rt.Service("ns/itpnp", "172.30.0.9", rt.InternalLocal(), rt.NodePort(30084))
	c = cluster(t, v4, np, twoEndpoints("itpnp"))
	check(t, c, []tcase{
		{"cluster IP: local only", fromPod("tcp", "172.30.0.9:80"), onlyA},
		{"NodePort: every endpoint", fromOutside("tcp", rt.NodeIP+":30084"), bothMasq},
	})
}

// tcase is a packet and where it must go.
type tcase struct {
	name string
	pkt  trace.Packet
	want rt.Where
}

func check(t *testing.T, c *rt.Cluster, cases []tcase) {
	t.Helper()
	rcs := make([]rt.Case, len(cases))
	for i, tc := range cases {
		rcs[i] = rt.Case{Name: tc.name, Packet: tc.pkt, Want: tc.want}
	}
	rt.Check(t, c, rcs)
}
