package rules_test

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/localdetect"
	rt "github.com/iptproxy/iptproxy/pkg/proxier/proxiertest"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

const podD = "10.244.4.5" // on node-d

// sepName is the recent-list name of endpoint ep of port "p"/TCP of
// ns/svc: session affinity remembers clients per endpoint chain.
func sepName(svc, ep string) string {
	spn := proxy.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: svc}, Port: "p", Protocol: v1.ProtocolTCP}
	return rules.EndpointChainName(spn, ep)
}

// seen marks pkt's source as seen ageSeconds ago by the endpoint ep of
// ns/svc.
func seen(pkt trace.Packet, svc, ep string, ageSeconds int) trace.Packet {
	pkt.Recent = []string{sepName(svc, ep)}
	pkt.RecentAge = ageSeconds
	return pkt
}

func TestSessionAffinity(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/aff", "172.30.1.1", rt.NodePort(30090), rt.ClientIPAffinity(300)),
		twoEndpoints("aff"),
		rt.Service("ns/affl", "172.30.1.2", rt.LoadBalancer(30091, lbIP), rt.ExternalLocal(32001), rt.ClientIPAffinity(60)),
		rt.Slice("ns/affl", "affl-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName), rt.Endpoint("10.244.1.6", rt.NodeName), rt.Endpoint(podB, "node-b")),
	)
	b := podB + ":8080"
	check(t, c, []tcase{
		{"new client is spread", fromRemote("tcp", "172.30.1.1:80"), both},
		{"known client sticks", seen(fromRemote("tcp", "172.30.1.1:80"), "aff", b, 10), rt.Where{b: 1}},
		{"known client just inside the timeout", seen(fromRemote("tcp", "172.30.1.1:80"), "aff", b, 299), rt.Where{b: 1}},
		{"client seen longer ago than the timeout is spread", seen(fromRemote("tcp", "172.30.1.1:80"), "aff", b, 300), both},
		{"known client on the NodePort", seen(fromOutside("tcp", rt.NodeIP+":30090"), "aff", b, 10), rt.Where{b + " masq": 1}},
		{"a client known to another Service is spread", seen(fromRemote("tcp", "172.30.1.1:80"), "affl", b, 10), both},
		{"ETP Local: new client spread over local endpoints", fromOutside("tcp", lbIP+":80"), rt.Even(podA+":8080", "10.244.1.6:8080")},
		{"ETP Local: known client sticks to its local endpoint", seen(fromOutside("tcp", lbIP+":80"), "affl", "10.244.1.6:8080", 59), rt.Where{"10.244.1.6:8080": 1}},
		{"ETP Local: timeout of that Service", seen(fromOutside("tcp", lbIP+":80"), "affl", "10.244.1.6:8080", 60), rt.Even(podA+":8080", "10.244.1.6:8080")},
	})
}

func TestTopologyHints(t *testing.T) {
	cfg := v4
	cfg.Zone = "zone-a"
	za, zb := []string{"zone-a"}, []string{"zone-b"}
	hinted := func(opts ...[]rt.EndpointOption) *discovery.EndpointSlice {
		nodes := []string{rt.NodeName, "node-b", "node-c", "node-d"}
		ips := []string{podA, podB, podC, podD}
		var eps []discovery.Endpoint
		for i, o := range opts {
			eps = append(eps, rt.Endpoint(ips[i], nodes[i], o...))
		}
		return rt.Slice("ns/topo", "topo-1", tcpPorts(8080), eps...)
	}
	svc := rt.Service("ns/topo", "172.30.1.3")
	a, bb, cc := podA+":8080", podB+":8080", podC+":8080"
	tests := []struct {
		name  string
		slice *discovery.EndpointSlice
		want  rt.Where
	}{
		{"same zone", hinted(
			[]rt.EndpointOption{rt.Hints(za, nil)}, []rt.EndpointOption{rt.Hints(zb, nil)}, []rt.EndpointOption{rt.Hints(za, nil)}),
			rt.Even(a, cc)},
		{"all or nothing: one ready endpoint without hints", hinted(
			[]rt.EndpointOption{rt.Hints(za, nil)}, []rt.EndpointOption{rt.Hints(zb, nil)}, nil),
			rt.Even(a, bb, cc)},
		{"a not-ready endpoint without hints does not count", hinted(
			[]rt.EndpointOption{rt.Hints(za, nil)}, []rt.EndpointOption{rt.Hints(zb, nil)}, []rt.EndpointOption{rt.Hints(za, nil)}, []rt.EndpointOption{rt.NotReady()}),
			rt.Even(a, cc)},
		{"no hint for this zone: every endpoint", hinted(
			[]rt.EndpointOption{rt.Hints(zb, nil)}, []rt.EndpointOption{rt.Hints(zb, nil)}),
			rt.Even(a, bb)},
		{"same node", hinted(
			[]rt.EndpointOption{rt.Hints(za, []string{rt.NodeName})}, []rt.EndpointOption{rt.Hints(zb, []string{"node-b"})}, []rt.EndpointOption{rt.Hints(za, []string{"node-c"})}),
			rt.Where{a: 1}},
		{"node hints incomplete: zone hints apply", hinted(
			[]rt.EndpointOption{rt.Hints(za, []string{rt.NodeName})}, []rt.EndpointOption{rt.Hints(zb, []string{"node-b"})}, []rt.EndpointOption{rt.Hints(za, nil)}),
			rt.Even(a, cc)},
		{"no node hint for this node: zone hints apply", hinted(
			[]rt.EndpointOption{rt.Hints(za, []string{"node-b"})}, []rt.EndpointOption{rt.Hints(zb, []string{"node-b"})}, []rt.EndpointOption{rt.Hints(za, []string{"node-c"})}),
			rt.Even(a, cc)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(t, cfg, svc, tt.slice)
			check(t, c, []tcase{{"from a pod", fromPod("tcp", "172.30.1.3:80"), tt.want}})
		})
	}
}

func TestEndpointSelection(t *testing.T) {
	svc := rt.Service("ns/sel", "172.30.1.4")
	a, b := podA+":8080", podB+":8080"
	tests := []struct {
		name   string
		slices []*discovery.EndpointSlice
		want   rt.Where
	}{
		{"ready endpoints only", []*discovery.EndpointSlice{rt.Slice("ns/sel", "s1", tcpPorts(8080),
			rt.Endpoint(podA, rt.NodeName), rt.Endpoint(podB, "node-b", rt.Terminating(true)),
			rt.Endpoint(podC, "node-c", rt.Terminating(false)), rt.Endpoint(podD, "node-d", rt.NotReady()))},
			rt.Where{a: 1}},
		{"no ready endpoint: serving terminating ones", []*discovery.EndpointSlice{rt.Slice("ns/sel", "s1", tcpPorts(8080),
			rt.Endpoint(podB, "node-b", rt.Terminating(true)), rt.Endpoint(podA, rt.NodeName, rt.Terminating(true)),
			rt.Endpoint(podC, "node-c", rt.Terminating(false)), rt.Endpoint(podD, "node-d", rt.NotReady()))},
			rt.Even(a, b)},
		{"not serving only: rejected", []*discovery.EndpointSlice{rt.Slice("ns/sel", "s1", tcpPorts(8080),
			rt.Endpoint(podC, "node-c", rt.Terminating(false)), rt.Endpoint(podD, "node-d", rt.NotReady()))},
			reject},
		{"endpoints from every slice", []*discovery.EndpointSlice{
			rt.Slice("ns/sel", "s1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
			rt.Slice("ns/sel", "s2", tcpPorts(8080), rt.Endpoint(podB, "node-b"))},
			rt.Even(a, b)},
		{"duplicate across slices counts once", []*discovery.EndpointSlice{
			rt.Slice("ns/sel", "s1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
			rt.Slice("ns/sel", "s2", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName), rt.Endpoint(podB, "node-b"))},
			rt.Even(a, b)},
		{"duplicate: the ready copy wins over a terminating one", []*discovery.EndpointSlice{
			rt.Slice("ns/sel", "s1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName, rt.Terminating(true)), rt.Endpoint(podB, "node-b", rt.Terminating(true))),
			rt.Slice("ns/sel", "s2", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName))},
			rt.Where{a: 1}},
		{"duplicate: the ready copy wins whichever slice sorts first", []*discovery.EndpointSlice{
			rt.Slice("ns/sel", "s1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
			rt.Slice("ns/sel", "s2", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName, rt.Terminating(true)), rt.Endpoint(podB, "node-b", rt.Terminating(true)))},
			rt.Where{a: 1}},
		{"same address on another port is another endpoint", []*discovery.EndpointSlice{
			rt.Slice("ns/sel", "s1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
			rt.Slice("ns/sel", "s2", tcpPorts(8081), rt.Endpoint(podA, rt.NodeName))},
			rt.Even(a, podA+":8081")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := []runtime.Object{svc}
			for _, s := range tt.slices {
				objs = append(objs, s)
			}
			c := cluster(t, v4, objs...)
			check(t, c, []tcase{{"from a pod", fromPod("tcp", "172.30.1.4:80"), tt.want}})
		})
	}

	// Unnamed ports: the slice's port name is "" (as the EndpointSlice
	// controller writes it); kube-proxy ignores a slice port with no name
	// at all.
	unnamed := rt.Service("ns/un", "172.30.1.21", rt.Ports(rt.Port("", 80, v1.ProtocolTCP, 0)))
	c := cluster(t, v4, unnamed,
		rt.Slice("ns/un", "un-1", []discovery.EndpointPort{rt.SlicePort("", 8080, v1.ProtocolTCP)}, rt.Endpoint(podA, rt.NodeName)),
		rt.Slice("ns/un", "un-2", []discovery.EndpointPort{{Port: ptr.To[int32](8081), Protocol: ptr.To(v1.ProtocolTCP)}}, rt.Endpoint(podB, "node-b")))
	check(t, c, []tcase{
		{"unnamed port", fromPod("tcp", "172.30.1.21:80"), rt.Where{a: 1}},
	})

	// ETP Local falls back to local serving-terminating endpoints when
	// no local endpoint is ready, though a remote one is.
	c = cluster(t, v4, rt.Service("ns/fb", "172.30.1.5", rt.NodePort(30092), rt.ExternalLocal(32002)),
		rt.Slice("ns/fb", "fb-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName, rt.Terminating(true)), rt.Endpoint(podB, "node-b")))
	check(t, c, []tcase{
		{"external: the local terminating endpoint", fromOutside("tcp", rt.NodeIP+":30092"), rt.Where{a: 1}},
		{"cluster IP: the ready endpoint", fromRemote("tcp", "172.30.1.5:80"), rt.Where{b: 1}},
	})
}

func TestNoEndpoints(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/none", "172.30.1.6", rt.LoadBalancer(30093, lbIP), rt.ExternalIPs(extIP)),
		rt.Service("ns/empty", "172.30.1.7"),
		rt.Slice("ns/empty", "empty-1", tcpPorts(8080)),
		rt.Service("ns/etp", "172.30.1.8", rt.LoadBalancer(30094, "203.0.113.20"), rt.ExternalLocal(32003)),
		rt.Service("ns/itp", "172.30.1.9", rt.InternalLocal()),
		rt.Service("ns/fw", "172.30.1.10", rt.LoadBalancer(30095, "203.0.113.21"), rt.SourceRanges("198.51.100.0/24")),
	)
	check(t, c, []tcase{
		{"cluster IP from a pod", fromPod("tcp", "172.30.1.6:80"), reject},
		{"cluster IP from the node", fromNode("tcp", "172.30.1.6:80"), reject},
		{"NodePort", fromOutside("tcp", rt.NodeIP+":30093"), reject},
		{"localhost NodePort", fromLoopback("tcp", "127.0.0.1:30093"), reject},
		{"LB IP", fromOutside("tcp", lbIP+":80"), reject},
		{"external IP", fromOutside("tcp", extIP+":80"), reject},
		{"slice without endpoints", fromPod("tcp", "172.30.1.7:80"), reject},
		{"ETP Local without any endpoint rejects", fromOutside("tcp", "203.0.113.20:80"), reject},
		{"ETP Local NodePort without any endpoint rejects", fromOutside("tcp", rt.NodeIP+":30094"), reject},
		{"ITP Local without any endpoint rejects", fromPod("tcp", "172.30.1.9:80"), reject},
		{"source ranges without endpoints: allowed source rejected", rt.In("eth0", "tcp", "198.51.100.5", "203.0.113.21:80"), reject},
		{"another port of the Service IP is untouched", fromPod("tcp", "172.30.1.6:81"), untouched("172.30.1.6:81")},
	})
}

func TestMasquerade(t *testing.T) {
	svc := rt.Service("ns/m", "172.30.1.11", rt.NodePort(30096))
	bit5 := v4
	bit5.MasqueradeBit = 5
	all := v4
	all.MasqueradeAll = true
	withMark := func(p trace.Packet, mark uint32) trace.Packet { p.Mark = mark; return p }
	tests := []struct {
		name  string
		cfg   rules.Config
		cases []tcase
	}{
		{"masquerade bit 5", bit5, []tcase{
			{"from outside", fromOutside("tcp", "172.30.1.11:80"), bothMasq},
			{"NodePort", fromOutside("tcp", rt.NodeIP+":30096"), bothMasq},
			{"from a pod", fromPod("tcp", "172.30.1.11:80"), both},
			{"bit 14 set by someone else is not ours", withMark(fromPod("tcp", "172.30.1.11:80"), 0x4000), both},
		}},
		{"masquerade bit 14", v4, []tcase{
			{"bit 5 set by someone else is not ours", withMark(fromPod("tcp", "172.30.1.11:80"), 0x20), both},
		}},
		{"masqueradeAll", all, []tcase{
			{"from a pod", fromPod("tcp", "172.30.1.11:80"), bothMasq},
			{"from a remote pod", fromRemote("tcp", "172.30.1.11:80"), bothMasq},
			{"pod to pod is untouched", fromPod("tcp", podB+":8080"), untouched(podB + ":8080")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, cluster(t, tt.cfg, svc, twoEndpoints("m")), tt.cases)
		})
	}
}

func TestLocalTrafficDetection(t *testing.T) {
	svc := rt.Service("ns/d", "172.30.1.12", rt.NodePort(30097))
	etp := rt.Service("ns/dl", "172.30.1.13", rt.LoadBalancer(30098, lbIP), rt.ExternalLocal(32004))
	with := func(d localdetect.Detector) rules.Config {
		cfg := v4
		cfg.LocalTraffic = rules.LocalTraffic{IfLocal: d.IfLocal(), IfNotLocal: d.IfNotLocal()}
		return cfg
	}
	tests := []struct {
		name  string
		cfg   rules.Config
		cases []tcase
	}{
		{"ClusterCIDR", with(localdetect.ByCIDR(rt.ClusterCIDR)), []tcase{
			{"pod on this node", fromPod("tcp", "172.30.1.12:80"), both},
			{"pod on another node", fromRemote("tcp", "172.30.1.12:80"), both},
			{"outside", fromOutside("tcp", "172.30.1.12:80"), bothMasq},
			{"ETP Local, pod: short-circuit", fromPod("tcp", lbIP+":80"), both},
			{"ETP Local, outside", fromOutside("tcp", lbIP+":80"), onlyA},
		}},
		{"NodeCIDR", with(localdetect.ByCIDR(rt.NodeCIDR)), []tcase{
			{"pod on this node", fromPod("tcp", "172.30.1.12:80"), both},
			{"pod on another node is masqueraded", fromRemote("tcp", "172.30.1.12:80"), bothMasq},
			{"ETP Local, pod on this node: short-circuit", fromPod("tcp", lbIP+":80"), both},
			{"ETP Local, pod on another node", fromRemote("tcp", lbIP+":80"), onlyA},
		}},
		{"BridgeInterface", with(localdetect.ByBridgeInterface("cni0")), []tcase{
			{"from the bridge", fromPod("tcp", "172.30.1.12:80"), both},
			{"pod address from another interface is masqueraded", rt.In("eth0", "tcp", client, "172.30.1.12:80"), bothMasq},
			{"ETP Local, from the bridge: short-circuit", fromPod("tcp", lbIP+":80"), both},
			{"ETP Local, from eth0", rt.In("eth0", "tcp", client, lbIP+":80"), onlyA},
			{"from the node itself is masqueraded", fromNode("tcp", "172.30.1.12:80"), bothMasq},
		}},
		{"InterfaceNamePrefix", with(localdetect.ByInterfaceNamePrefix("veth")), []tcase{
			{"from a veth", rt.In("veth1234", "tcp", client, "172.30.1.12:80"), both},
			{"from eth0 is masqueraded", rt.In("eth0", "tcp", client, "172.30.1.12:80"), bothMasq},
			{"from cni0 is masqueraded", fromPod("tcp", "172.30.1.12:80"), bothMasq},
			{"ETP Local, from a veth: short-circuit", rt.In("veth1234", "tcp", client, lbIP+":80"), both},
			{"from the node itself is masqueraded", fromNode("tcp", "172.30.1.12:80"), bothMasq},
		}},
		{"no detection", with(localdetect.NoOp()), []tcase{
			{"outside to the cluster IP is not masqueraded", fromOutside("tcp", "172.30.1.12:80"), both},
			{"NodePort is still masqueraded", fromOutside("tcp", rt.NodeIP+":30097"), bothMasq},
			{"ETP Local, pod: no short-circuit", fromPod("tcp", lbIP+":80"), onlyA},
			{"ETP Local, node: short-circuit", fromNode("tcp", lbIP+":80"), bothMasq},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(t, tt.cfg, svc, twoEndpoints("d"), etp, twoEndpoints("dl"))
			check(t, c, tt.cases)
		})
	}
}

func TestHairpin(t *testing.T) {
	c := cluster(t, v4, rt.Service("ns/h", "172.30.1.14"), twoEndpoints("h"))
	check(t, c, []tcase{
		{"a pod reaching itself is masqueraded", rt.In("cni0", "tcp", podA, "172.30.1.14:80"),
			rt.Where{podA + ":8080 masq": 0.5, podB + ":8080": 0.5}},
	})
}

func TestIPv6(t *testing.T) {
	cfg := rt.DefaultConfig(v1.IPv6Protocol)
	a6, b6 := "fd00:10:244:1::5", "fd00:10:244:2::5"
	ports := tcpPorts(8080)
	c := rt.NewCluster(t, cfg, []string{rt.NodeIP6b},
		rt.Service("ns/v6", "fd00:30::1", rt.LoadBalancer(30099, "2001:db8:1::10"), rt.ExternalIPs("2001:db8:2::7")),
		rt.Slice("ns/v6", "v6-1", ports, rt.Endpoint(a6, rt.NodeName), rt.Endpoint(b6, "node-b")),
		rt.Service("ns/v6none", "fd00:30::2"),
		rt.Service("ns/v6etp", "fd00:30::3", rt.NodePort(30100), rt.ExternalLocal(32005)),
		rt.Slice("ns/v6etp", "v6etp-1", ports, rt.Endpoint(a6, rt.NodeName), rt.Endpoint(b6, "node-b")),
		rt.Service("ns/v6fw", "fd00:30::4", rt.LoadBalancer(30101, "2001:db8:1::11"), rt.SourceRanges("2001:db8:50::/48", "198.51.100.0/24")),
		rt.Slice("ns/v6fw", "v6fw-1", ports, rt.Endpoint(a6, rt.NodeName), rt.Endpoint(b6, "node-b")),
		// The IPv4 side of the cluster is not this proxier's business.
		rt.Service("ns/v4", "172.30.1.15"), twoEndpoints("v4"),
	)
	pod6, out6 := "fd00:10:244:1::7", "2001:db8::50"
	both6 := rt.Even("["+a6+"]:8080", "["+b6+"]:8080")
	both6Masq := rt.Even("["+a6+"]:8080 masq", "["+b6+"]:8080 masq")
	check(t, c, []tcase{
		{"cluster IP from a pod", rt.In("cni0", "tcp", pod6, "[fd00:30::1]:80"), both6},
		{"cluster IP from outside", rt.In("eth0", "tcp", out6, "[fd00:30::1]:80"), both6Masq},
		{"NodePort on the node IP", rt.In("eth0", "tcp", out6, "["+rt.NodeIP6+"]:30099"), both6Masq},
		{"NodePort on another local address", rt.In("eth0", "tcp", out6, "["+rt.NodeIP6b+"]:30099"), both6Masq},
		{"no localhost NodePorts in IPv6", rt.Local("tcp", "::1", "[::1]:30099"), untouched("[::1]:30099")},
		{"LB IP", rt.In("eth0", "tcp", out6, "[2001:db8:1::10]:80"), both6Masq},
		{"external IP", rt.In("eth0", "tcp", out6, "[2001:db8:2::7]:80"), both6Masq},
		{"no endpoints", rt.In("cni0", "tcp", pod6, "[fd00:30::2]:80"), reject},
		{"ETP Local from outside", rt.In("eth0", "tcp", out6, "["+rt.NodeIP6+"]:30100"), rt.Where{"[" + a6 + "]:8080": 1}},
		{"ETP Local from a pod", rt.In("cni0", "tcp", pod6, "["+rt.NodeIP6+"]:30100"), both6},
		{"source range: allowed", rt.In("eth0", "tcp", "2001:db8:50::1", "[2001:db8:1::11]:80"), both6Masq},
		{"source range: other source dropped", rt.In("eth0", "tcp", out6, "[2001:db8:1::11]:80"), drop},
	})
}

func TestDualStackService(t *testing.T) {
	dual := rt.Service("ns/ds", "172.30.1.16", func(s *v1.Service) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:30::16")
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	})
	s4 := twoEndpoints("ds")
	s6 := rt.Slice("ns/ds", "ds-6", tcpPorts(8080), rt.Endpoint("fd00:10:244:1::5", rt.NodeName))
	c4 := cluster(t, v4, dual, s4, s6)
	c6 := rt.NewCluster(t, rt.DefaultConfig(v1.IPv6Protocol), nil, dual, s4, s6)
	check(t, c4, []tcase{{"IPv4 cluster IP", fromPod("tcp", "172.30.1.16:80"), both}})
	check(t, c6, []tcase{{"IPv6 cluster IP", rt.In("cni0", "tcp", "fd00:10:244:1::7", "[fd00:30::16]:80"), rt.Where{"[fd00:10:244:1::5]:8080": 1}}})
}

func TestIgnored(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/headless", "", rt.Headless(), rt.ExternalIPs("198.51.100.20")),
		rt.Slice("ns/headless", "headless-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
		rt.Service("ns/extname", "172.30.1.17", rt.ExternalName("example.com")),
		rt.Slice("ns/extname", "extname-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
		rt.Service("ns/other", "172.30.1.18", rt.Label(proxy.LabelServiceProxyName, "other-proxy"), rt.NodePort(30101)),
		rt.Slice("ns/other", "other-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName)),
		rt.Service("ns/fqdn", "172.30.1.19"),
		rt.Modify(rt.Slice("ns/fqdn", "fqdn-1", tcpPorts(8080), rt.Endpoint("backend.example.com", "")),
			func(s *discovery.EndpointSlice) { s.AddressType = discovery.AddressTypeFQDN }),
		rt.Service("ns/mixed", "172.30.1.20"),
		twoEndpoints("mixed"),
		rt.Modify(rt.Slice("ns/mixed", "mixed-fqdn", tcpPorts(8080), rt.Endpoint("backend.example.com", "")),
			func(s *discovery.EndpointSlice) { s.AddressType = discovery.AddressTypeFQDN }),
	)
	check(t, c, []tcase{
		{"headless Service's external IP", fromOutside("tcp", "198.51.100.20:80"), untouched("198.51.100.20:80")},
		{"ExternalName Service's cluster IP", fromPod("tcp", "172.30.1.17:80"), untouched("172.30.1.17:80")},
		{"another proxy's Service: cluster IP", fromPod("tcp", "172.30.1.18:80"), untouched("172.30.1.18:80")},
		{"another proxy's Service: NodePort", fromOutside("tcp", rt.NodeIP+":30101"), untouched(rt.NodeIP + ":30101")},
		{"FQDN slice: no endpoints", fromPod("tcp", "172.30.1.19:80"), reject},
		{"FQDN slice beside an IPv4 one", fromPod("tcp", "172.30.1.20:80"), both},
	})
}
