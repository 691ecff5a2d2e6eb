package planner

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

func testService(i int) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: fmt.Sprintf("172.30.0.%d", i+1),
			Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
}

func testSlice(i int, ip string) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d-x", i), Labels: map[string]string{discovery.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
	}
}

// TestPlanner checks the handshake: what each plan renders and writes as
// changes come, the node changes, the record is forgotten or a plan is not
// committed.
func TestPlanner(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	tr := proxy.NewTracker(logger, v1.IPv4Protocol, "node-a")
	for i := range 3 {
		tr.OnServiceUpdate(nil, testService(i))
		tr.OnEndpointSliceUpdate(testSlice(i, fmt.Sprintf("10.1.0.%d", i+1)), false)
	}
	p := NewPlanner(rules.Config{Family: v1.IPv4Protocol, NodeName: "node-a", MasqueradeBit: 14}, rules.IsServiceChain)
	type step struct {
		name        string
		do          func()
		full        bool
		noCommit    bool
		incremental bool
		rendered    int
	}
	for _, s := range []step{
		{name: "first plan renders everything", rendered: 3},
		{name: "one endpoint changes", do: func() { tr.OnEndpointSliceUpdate(testSlice(1, "10.1.9.9"), false) }, incremental: true, rendered: 1},
		{name: "nothing changes", incremental: true, rendered: 0},
		{name: "a plan not committed", do: func() { tr.OnEndpointSliceUpdate(testSlice(2, "10.1.9.8"), false) }, incremental: true, rendered: 1, noCommit: true},
		{name: "after a plan not committed, everything is rendered", rendered: 3},
		{name: "a full sync renders everything", full: true, rendered: 3},
		{name: "the node moves zone", do: func() { p.SetNode("zone-b", []netip.Addr{netip.MustParseAddr("192.168.0.2")}) }, rendered: 3},
		{name: "a Service goes", do: func() { tr.OnServiceUpdate(testService(0), nil) }, incremental: true, rendered: 0},
		{name: "the record is forgotten", do: func() { p.Forget(iptables.TableNAT) }, rendered: 2},
	} {
		if s.do != nil {
			s.do()
		}
		state, change := tr.Checkout()
		rs, plan, err := p.Plan(state, change, s.full, 0)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if plan.Incremental != s.incremental || rs.Stats.Rendered != s.rendered {
			t.Errorf("%s: incremental %v rendered %d; want %v %d", s.name, plan.Incremental, rs.Stats.Rendered, s.incremental, s.rendered)
		}
		if rs.Generation != p.Generation() {
			t.Errorf("%s: ruleset generation %d, planner %d", s.name, rs.Generation, p.Generation())
		}
		if !s.noCommit {
			p.Commit(plan)
		}
	}
	if p.SetNode("zone-b", []netip.Addr{netip.MustParseAddr("192.168.0.2")}) {
		t.Error("SetNode with the same node reports a change")
	}
	state, _ := tr.Checkout()
	if d := p.Desired(state); d.Delta != nil || d.Generation != p.Generation() || d.Stats.Rendered != 2 {
		t.Errorf("Desired: delta %v generation %d rendered %d", d.Delta, d.Generation, d.Stats.Rendered)
	}
}

func TestChangedPorts(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	tr := proxy.NewTracker(logger, v1.IPv4Protocol, "node-a")
	tr.OnServiceUpdate(nil, testService(0))
	tr.OnServiceUpdate(nil, testService(1))
	tr.Checkout()
	renamed := testService(1)
	renamed.Spec.Ports[0].Name = "q"
	tr.OnServiceUpdate(testService(1), renamed)
	state, change := tr.Checkout()
	got := ChangedPorts(state, change)
	if len(got) != 2 {
		t.Fatalf("changed %v; want svc-1's old and new port", got)
	}
	for spn := range got {
		if spn.Name != "svc-1" {
			t.Errorf("%v changed", spn)
		}
	}
}
