package conntrack

import (
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"

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
