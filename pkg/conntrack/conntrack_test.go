package conntrack

import (
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// udpState is one UDP Service (ClusterIP 172.30.0.11:53, NodePort 30053)
// whose only endpoint is 10.1.0.8:5353.
func udpState(t *testing.T) *proxy.State {
	logger, _ := ktesting.NewTestContext(t)
	tr := proxy.NewTracker(logger, v1.IPv4Protocol, "node-a")
	tr.OnServiceUpdate(nil, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "dns"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, ClusterIP: "172.30.0.11", ClusterIPs: []string{"172.30.0.11"},
			Ports: []v1.ServicePort{{Name: "p", Port: 53, Protocol: v1.ProtocolUDP, NodePort: 30053}}},
	})
	tr.OnEndpointSliceUpdate(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "dns-1", Labels: map[string]string{discovery.LabelServiceName: "dns"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](5353), Protocol: ptr.To(v1.ProtocolUDP)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.1.0.8"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
	}, false)
	state, _ := tr.Checkout()
	return state
}

// TestStaleFlowsDeleted inserts real conntrack entries in a private
// namespace and checks that exactly the flows to the Service whose reply
// comes from a removed endpoint are deleted.
func TestStaleFlowsDeleted(t *testing.T) {
	kerneltest.Enter(t)
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("conntrack CLI not installed (apt-get install conntrack)")
	}
	insert := func(src, dst string, sport, dport int, rsrc string, rsport int) {
		t.Helper()
		out, err := exec.Command("conntrack", "-I", "-p", "udp", "-s", src, "-d", dst,
			"--sport", itoa(sport), "--dport", itoa(dport), "--reply-src", rsrc, "--reply-dst", src,
			"--reply-port-src", itoa(rsport), "--reply-port-dst", itoa(sport), "--timeout", "120").CombinedOutput()
		if err != nil {
			t.Skipf("cannot insert conntrack entries here: %v: %s", err, out)
		}
	}
	insert("10.9.0.1", "172.30.0.11", 1000, 53, "10.1.0.7", 5353)   // stale: endpoint 10.1.0.7 is gone
	insert("10.9.0.2", "172.30.0.11", 1001, 53, "10.1.0.8", 5353)   // live endpoint
	insert("10.9.0.3", "192.0.2.10", 1002, 30053, "10.1.0.7", 5353) // stale NodePort flow
	insert("10.9.0.4", "10.1.0.50", 1003, 53, "10.1.0.50", 53)      // not a Service: untouched

	ct := Netlink{}
	flows, err := ct.List(v1.IPv4Protocol)
	if err != nil {
		t.Fatal(err)
	}
	stale := Stale(udpState(t), flows)
	n, err := ct.Delete(v1.IPv4Protocol, stale)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("deleted %d flows, want 2", n)
	}
	left, _ := ct.List(v1.IPv4Protocol)
	var srcs []string
	for _, f := range left {
		a, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		srcs = append(srcs, a.Unmap().String())
	}
	got := strings.Join(srcs, ",")
	if !strings.Contains(got, "10.9.0.2") || !strings.Contains(got, "10.9.0.4") || strings.Contains(got, "10.9.0.1") || strings.Contains(got, "10.9.0.3") {
		t.Errorf("flows left from %s; want 10.9.0.2 and 10.9.0.4 only", got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestStaleMatchesKubeProxy replays the matrix of kube-proxy 1.37's
// TestCleanStaleEntries (pkg/proxy/conntrack/cleanup_test.go): flows of
// three protocols to the Service's addresses and NodePort, DNATed to a
// serving, a non-serving and a deleted endpoint; only UDP flows to the
// Service port or the NodePort that do not reply from a serving endpoint
// are stale.
func TestStaleMatchesKubeProxy(t *testing.T) {
	const (
		clusterIP, lbIP, extIP        = "172.30.1.1", "1.2.3.4", "5.6.7.8"
		servingEP, nonServingEP, gone = "10.240.0.4", "10.240.1.5", "10.240.2.6"
		svcPort, otherPort, nodePort  = 8000, 8001, 30000
		epPort, oldEPPort             = 3000, 3001
		client                        = "10.9.0.1"
	)
	logger, _ := ktesting.NewTestContext(t)
	tr := proxy.NewTracker(logger, v1.IPv4Protocol, "node-a")
	protos := map[string]v1.Protocol{"tcp": v1.ProtocolTCP, "udp": v1.ProtocolUDP, "sctp": v1.ProtocolSCTP}
	for name, proto := range protos {
		tr.OnServiceUpdate(nil, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
				ExternalIPs: []string{extIP},
				Ports:       []v1.ServicePort{{Name: "p", Port: svcPort, Protocol: proto, NodePort: nodePort}}},
			Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: lbIP}}}},
		})
		tr.OnEndpointSliceUpdate(&discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](epPort), Protocol: ptr.To(proto)}},
			Endpoints: []discovery.Endpoint{
				{Addresses: []string{servingEP}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}},
				{Addresses: []string{nonServingEP}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}},
			},
		}, false)
	}
	state, _ := tr.Checkout()

	protoNum := map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}
	flow := func(proto uint8, dst string, dport int, rsrc string, rsport int) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP(client), DstIP: net.ParseIP(dst), SrcPort: 40000, DstPort: uint16(dport)},
			Reverse:    netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP(rsrc), DstIP: net.ParseIP(client), SrcPort: uint16(rsport), DstPort: 40000},
		}
	}
	var flows []*netlink.ConntrackFlow
	wantStale := map[*netlink.ConntrackFlow]bool{}
	add := func(f *netlink.ConntrackFlow, stale bool) {
		flows = append(flows, f)
		wantStale[f] = stale
	}
	for _, dst := range []string{clusterIP, lbIP, extIP} {
		// The endpoint kept its IP but changed port.
		add(flow(unix.IPPROTO_UDP, dst, svcPort, servingEP, oldEPPort), true)
		// Not DNATed at all (no REJECT rule caught it).
		add(flow(unix.IPPROTO_UDP, dst, svcPort, dst, svcPort), true)
		add(flow(unix.IPPROTO_UDP, dst, otherPort, dst, otherPort), false)
	}
	for _, ep := range []string{servingEP, nonServingEP, gone} {
		for name, proto := range protoNum {
			for _, dst := range []string{clusterIP, lbIP, extIP} {
				add(flow(proto, dst, svcPort, ep, epPort), name == "udp" && ep != servingEP)
				add(flow(proto, dst, otherPort, ep, epPort), false)
			}
			add(flow(proto, "192.0.2.10", nodePort, ep, epPort), name == "udp" && ep != servingEP)
		}
	}
	got := map[*netlink.ConntrackFlow]bool{}
	for _, f := range Stale(state, flows) {
		got[f] = true
	}
	for _, f := range flows {
		if got[f] != wantStale[f] {
			t.Errorf("%s %s:%d replying from %s:%d: stale=%v, want %v", protoName(f.Forward.Protocol),
				f.Forward.DstIP, f.Forward.DstPort, f.Reverse.SrcIP, f.Reverse.SrcPort, got[f], wantStale[f])
		}
	}

	// Scaled to zero: every UDP flow to the Service's addresses is stale,
	// but NodePort flows are left alone (matched on the port only, they
	// could be anyone's).
	tr.OnEndpointSliceUpdate(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "udp-1", Labels: map[string]string{discovery.LabelServiceName: "udp"}},
		AddressType: discovery.AddressTypeIPv4,
	}, true)
	state, _ = tr.Checkout()
	toCluster := flow(unix.IPPROTO_UDP, clusterIP, svcPort, servingEP, epPort)
	toNodePort := flow(unix.IPPROTO_UDP, "192.0.2.10", nodePort, servingEP, epPort)
	stale := Stale(state, []*netlink.ConntrackFlow{toCluster, toNodePort})
	if len(stale) != 1 || stale[0] != toCluster {
		t.Errorf("after scaling to zero, stale = %v; want only the ClusterIP flow", stale)
	}
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}
