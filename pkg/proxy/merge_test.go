package proxy

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
)

var mergeSvc = types.NamespacedName{Namespace: "ns", Name: "s"}

// sliceOf builds an IPv4 EndpointSlice of Service ns/s. Ports are
// "name/port/protocol"; endpoints are "ip" (ready), "ip/T" (serving and
// terminating), "ip/N" (not ready) or "ip@node".
func sliceOf(name string, ports []string, eps ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: mergeSvc.Namespace, Name: name, Labels: map[string]string{discovery.LabelServiceName: mergeSvc.Name}},
		AddressType: discovery.AddressTypeIPv4,
	}
	if strings.Contains(strings.Join(eps, ","), ":") {
		s.AddressType = discovery.AddressTypeIPv6
	}
	for _, p := range ports {
		var pname, proto string
		var port int32
		if _, err := fmt.Sscanf(strings.ReplaceAll(p, "/", " "), "%s %d %s", &pname, &port, &proto); err != nil {
			panic(fmt.Sprintf("port %q: %v", p, err))
		}
		if pname == "-" {
			pname = ""
		}
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(pname), Port: ptr.To(port), Protocol: ptr.To(v1.Protocol(proto))})
	}
	for _, e := range eps {
		addr, node, _ := strings.Cut(e, "@")
		addr, state, _ := strings.Cut(addr, "/")
		de := discovery.Endpoint{Addresses: []string{addr}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}
		switch state {
		case "T":
			de.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
		case "N":
			de.Conditions.Ready = ptr.To(false)
		}
		if node != "" {
			de.NodeName = ptr.To(node)
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

// describe renders a port's endpoints as "ip:port" with "/T" for
// terminating, "/N" for not ready and "@node" for the node.
func describe(eps []*Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		s := e.String()
		switch {
		case e.Terminating:
			s += "/T"
		case !e.Ready:
			s += "/N"
		}
		if e.NodeName() != "" {
			s += "@" + e.NodeName()
		}
		out = append(out, s)
	}
	return out
}

func TestTrackerMergePaths(t *testing.T) {
	http := []string{"http/8080/TCP"}
	type step struct {
		slice  *discovery.EndpointSlice
		remove bool
	}
	tests := []struct {
		name  string
		steps []step
		want  map[string][]string // by "port/protocol"
	}{
		{"one slice, sorted by ip:port string", []step{{slice: sliceOf("a", http, "10.0.0.9", "10.0.0.10", "10.0.0.1", "10.0.1.1")}},
			map[string][]string{"http/TCP": {"10.0.0.10:8080", "10.0.0.1:8080", "10.0.0.9:8080", "10.0.1.1:8080"}}},
		{"one slice, duplicate: the ready copy wins", []step{{slice: sliceOf("a", http, "10.0.0.1/T@n1", "10.0.0.1@n2", "10.0.0.2")}},
			map[string][]string{"http/TCP": {"10.0.0.1:8080@n2", "10.0.0.2:8080"}}},
		{"one slice, duplicate: the last non-terminating copy wins", []step{{slice: sliceOf("a", http, "10.0.0.1@n1", "10.0.0.1/T@n2", "10.0.0.1/N@n3")}},
			map[string][]string{"http/TCP": {"10.0.0.1:8080/N@n3"}}},
		{"one slice, all copies terminating: the first wins", []step{{slice: sliceOf("a", http, "10.0.0.1/T@n1", "10.0.0.1/T@n2")}},
			map[string][]string{"http/TCP": {"10.0.0.1:8080/T@n1"}}},
		{"one slice, several ports", []step{{slice: sliceOf("a", []string{"http/8080/TCP", "dns/53/UDP", "dns-tcp/53/TCP"}, "10.0.0.2", "10.0.0.1")}},
			map[string][]string{
				"http/TCP":    {"10.0.0.1:8080", "10.0.0.2:8080"},
				"dns/UDP":     {"10.0.0.1:53", "10.0.0.2:53"},
				"dns-tcp/TCP": {"10.0.0.1:53", "10.0.0.2:53"},
			}},
		{"one slice without endpoints", []step{{slice: sliceOf("a", http)}}, map[string][]string{}},
		{"two slices, duplicate across: ready wins whatever the slice order", []step{
			{slice: sliceOf("a", http, "10.0.0.1@n1", "10.0.0.3")},
			{slice: sliceOf("b", http, "10.0.0.1/T@n2", "10.0.0.2")},
		}, map[string][]string{"http/TCP": {"10.0.0.1:8080@n1", "10.0.0.2:8080", "10.0.0.3:8080"}}},
		{"two slices, duplicate across: terminating first, ready second", []step{
			{slice: sliceOf("a", http, "10.0.0.1/T@n1")},
			{slice: sliceOf("b", http, "10.0.0.1@n2")},
		}, map[string][]string{"http/TCP": {"10.0.0.1:8080@n2"}}},
		{"two slices, same port name at different numbers: both kept", []step{
			{slice: sliceOf("a", []string{"http/80/TCP"}, "10.0.0.1", "10.0.0.10")},
			{slice: sliceOf("b", []string{"http/8080/TCP"}, "10.0.0.1")},
		}, map[string][]string{"http/TCP": {"10.0.0.10:80", "10.0.0.1:80", "10.0.0.1:8080"}}},
		{"two slices, different ports", []step{
			{slice: sliceOf("a", []string{"http/80/TCP"}, "10.0.0.1")},
			{slice: sliceOf("b", []string{"dns/53/UDP"}, "10.0.0.2")},
		}, map[string][]string{"http/TCP": {"10.0.0.1:80"}, "dns/UDP": {"10.0.0.2:53"}}},
		{"slice removed, the other stays", []step{
			{slice: sliceOf("a", http, "10.0.0.1")},
			{slice: sliceOf("b", http, "10.0.0.2")},
			{slice: sliceOf("a", http), remove: true},
		}, map[string][]string{"http/TCP": {"10.0.0.2:8080"}}},
		{"last slice removed", []step{
			{slice: sliceOf("a", http, "10.0.0.1")},
			{slice: sliceOf("a", http), remove: true},
		}, map[string][]string{}},
		{"slice replaced", []step{
			{slice: sliceOf("b", http, "10.0.0.1")},
			{slice: sliceOf("a", http, "10.0.0.3")},
			{slice: sliceOf("b", http, "10.0.0.2")},
		}, map[string][]string{"http/TCP": {"10.0.0.2:8080", "10.0.0.3:8080"}}},
		{"IPv6, sorted by [ip]:port string", []step{{slice: sliceOf("a", http, "fd00::1a", "fd00::10", "fd00::1", "fd00::2")}},
			map[string][]string{"http/TCP": {"[fd00::10]:8080", "[fd00::1]:8080", "[fd00::1a]:8080", "[fd00::2]:8080"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			family := v1.IPv4Protocol
			if tc.steps[0].slice.AddressType == discovery.AddressTypeIPv6 {
				family = v1.IPv6Protocol
			}
			tr := NewTracker(logger, family, "n1")
			var state *State
			for _, st := range tc.steps {
				// One Checkout per step, so that every step re-merges.
				tr.OnEndpointSliceUpdate(st.slice, st.remove)
				state, _ = tr.Checkout()
			}
			got := map[string][]string{}
			for spn, eps := range state.Endpoints {
				got[spn.Port+"/"+string(spn.Protocol)] = describe(eps)
			}
			if !maps.EqualFunc(got, tc.want, slices.Equal) {
				t.Errorf("endpoints = %v\nwant        %v", got, tc.want)
			}
			if got := len(state.services[mergeSvc].endpointPorts); got != len(tc.want) {
				t.Errorf("index lists %d ports, want %d", got, len(tc.want))
			}
			if _, kept := state.services[mergeSvc]; kept && len(state.services[mergeSvc].slices) == 0 {
				t.Errorf("an empty entry is kept for the Service")
			}
		})
	}
}

// referenceMerge is the tracker's original merge: a map per port keyed by
// "ip:port", the non-terminating copy wins, then a sort on String(). The
// differential test holds the block-based merge to it.
// raw holds each slice's endpoints as listed, unsorted and with duplicates.
func referenceMerge(svc types.NamespacedName, bySlice []sliceData, raw [][]Endpoint) map[ServicePortName][]string {
	byPort := map[ServicePortName]map[string]*Endpoint{}
	for si, d := range bySlice {
		for _, p := range d.ports {
			spn := ServicePortName{NamespacedName: svc, Port: p.name, Protocol: p.protocol}
			set := byPort[spn]
			if set == nil {
				set = map[string]*Endpoint{}
				byPort[spn] = set
			}
			for _, e := range raw[si] {
				e.Port = p.port
				key := e.String()
				if _, exists := set[key]; !exists || !e.Terminating {
					set[key] = &e
				}
			}
		}
	}
	out := map[ServicePortName][]string{}
	for spn, set := range byPort {
		if len(set) == 0 {
			continue
		}
		eps := slices.Collect(maps.Values(set))
		slices.SortFunc(eps, func(a, b *Endpoint) int { return cmp.Compare(a.String(), b.String()) })
		out[spn] = describe(eps)
	}
	return out
}

func TestMergeSlicesMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	v4 := []string{"10.0.0.1", "10.0.0.10", "10.0.0.100", "10.0.0.2", "10.0.1.0", "10.0.10.1", "10.10.0.1", "10.1.0.1", "192.168.0.1"}
	v6 := []string{"fd00::1", "fd00::10", "fd00::1a", "fd00::a", "fd00::a:1", "fd00::", "fd00:1::1", "fd00:10::1", "2001:db8::1"}
	portNames := []string{"http", "dns", ""}
	portNums := []int{80, 8080, 9, 10, 53}
	states := []string{"", "/T", "/N"}
	for iter := range 2000 {
		addrs, family := v4, v1.IPv4Protocol
		if iter%2 == 1 {
			addrs, family = v6, v1.IPv6Protocol
		}
		var bySlice []sliceData
		var raw [][]Endpoint
		for si := range 1 + rng.IntN(3) {
			var ports []string
			for range rng.IntN(3) {
				ports = append(ports, fmt.Sprintf("%s/%d/%s", cmp.Or(portNames[rng.IntN(len(portNames))], "-"),
					portNums[rng.IntN(len(portNums))], []string{"TCP", "UDP"}[rng.IntN(2)]))
			}
			var eps []string
			for range rng.IntN(6) {
				eps = append(eps, fmt.Sprintf("%s%s@n%d", addrs[rng.IntN(len(addrs))], states[rng.IntN(len(states))], rng.IntN(3)))
			}
			s := sliceOf(fmt.Sprintf("s-%d", si), ports, eps...)
			if family == v1.IPv6Protocol {
				s.AddressType = discovery.AddressTypeIPv6
			}
			d, errs := parseSlice(s, family, "n1")
			if len(errs) != 0 {
				t.Fatalf("parse: %v", errs)
			}
			raw = append(raw, rawEndpoints(s, family))
			bySlice = append(bySlice, d)
		}
		got := map[ServicePortName][]string{}
		for spn, eps := range mergeSlices(mergeSvc, bySlice) {
			got[spn] = describe(eps)
		}
		want := referenceMerge(mergeSvc, bySlice, raw)
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Fatalf("case %d: merged\n%v\nwant\n%v", iter, got, want)
		}
	}
}

func TestCompareEndpointsIsStringOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	addr := func(v6 bool) netip.Addr {
		if !v6 {
			return netip.AddrFrom4([4]byte{10, byte(rng.IntN(3) * 50), byte(rng.IntN(12)), byte(rng.IntN(256))})
		}
		var b [16]byte
		b[0], b[1] = 0xfd, 0
		for _, i := range []int{13, 14, 15} {
			b[i] = byte(rng.IntN(40))
		}
		if rng.IntN(2) == 0 {
			b[4] = byte(rng.IntN(3))
		}
		return netip.AddrFrom16(b)
	}
	for i := range 200000 {
		v6 := i%2 == 1
		a := Endpoint{IP: addr(v6), Port: uint16(1 + rng.IntN(12000))}
		b := Endpoint{IP: addr(v6), Port: uint16(1 + rng.IntN(12000))}
		if rng.IntN(4) == 0 {
			b.IP = a.IP
		}
		if got, want := compareEndpoints(&a, &b), cmp.Compare(a.String(), b.String()); got != want {
			t.Fatalf("compareEndpoints(%s, %s) = %d, string order says %d", a.String(), b.String(), got, want)
		}
	}
}

func TestSliceEndpointsSharePlaceAndHints(t *testing.T) {
	s := sliceOf("a", []string{"http/80/TCP"}, "10.0.0.1@n1", "10.0.0.2@n1", "10.0.0.3@n2", "10.0.0.4")
	for i, z := range []string{"z1", "z1", "z2"} {
		s.Endpoints[i].Zone = ptr.To(z)
		s.Endpoints[i].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: z}}}
	}
	d, _ := parseSlice(s, v1.IPv4Protocol, "n2")
	e := d.endpoints
	if e[0].Hints != e[1].Hints || e[0].Hints == e[2].Hints || e[3].Hints != nil {
		t.Errorf("hints shared: %p %p %p %p; want the first two shared, the third its own, none for the fourth", e[0].Hints, e[1].Hints, e[2].Hints, e[3].Hints)
	}
	if !e[2].HasZoneHint("z2") || e[2].HasZoneHint("z1") || e[0].HasNodeHint("n1") || e[3].HasZoneHint("z1") {
		t.Errorf("hints = %+v, %+v", *e[0].Hints, *e[2].Hints)
	}
	want := []Place{{NodeName: "n1", Zone: "z1"}, {NodeName: "n1", Zone: "z1"}, {NodeName: "n2", Zone: "z2"}, {}}
	for i := range e {
		if e[i].Place() != want[i] || e[i].NodeName() != want[i].NodeName || e[i].Zone() != want[i].Zone {
			t.Errorf("endpoint %d runs at %+v (node %q, zone %q), want %+v", i, e[i].Place(), e[i].NodeName(), e[i].Zone(), want[i])
		}
		if e[i].IsLocal != (want[i].NodeName == "n2") {
			t.Errorf("endpoint %d: IsLocal = %v", i, e[i].IsLocal)
		}
	}
	other := Endpoint{IP: e[1].IP, Port: e[1].Port, Hints: &TopologyHints{ForZones: []string{"z1"}}, Ready: true, Serving: true}
	other.SetPlace(Place{NodeName: "n1", Zone: "z1"})
	if !other.Equal(&e[1]) || other.Equal(&e[2]) {
		t.Error("Equal does not compare places by value")
	}
}

// rawEndpoints parses a slice's endpoints in the order given, without the
// sort and dedup parseSlice does, for the reference merge.
func rawEndpoints(s *discovery.EndpointSlice, family v1.IPFamily) []Endpoint {
	var out []Endpoint
	for _, de := range s.Endpoints {
		one := *s
		one.Endpoints = []discovery.Endpoint{de}
		d, _ := parseSlice(&one, family, "n1")
		out = append(out, d.endpoints...)
	}
	return out
}

func TestTrackerForgetsDeletedServices(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: mergeSvc.Namespace, Name: mergeSvc.Name},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.5", Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	http := []string{"http/8080/TCP"}
	type event struct {
		svc    *v1.Service // nil: delete the Service
		slice  *discovery.EndpointSlice
		remove bool
	}
	tests := []struct {
		name                   string
		events                 [][]event // one Checkout per inner list
		ports, endpoints, kept int       // what the state holds at the end
	}{
		{"Service and slice", [][]event{{{svc: svc}, {slice: sliceOf("a", http, "10.0.0.1")}}}, 1, 1, 1},
		{"Service deleted, slice stays", [][]event{{{svc: svc}, {slice: sliceOf("a", http, "10.0.0.1")}}, {{}}}, 0, 1, 1},
		{"slice deleted, Service stays", [][]event{{{svc: svc}, {slice: sliceOf("a", http, "10.0.0.1")}}, {{slice: sliceOf("a", http), remove: true}}}, 1, 0, 1},
		{"both deleted in one Checkout", [][]event{{{svc: svc}, {slice: sliceOf("a", http, "10.0.0.1")}}, {{}, {slice: sliceOf("a", http), remove: true}}}, 0, 0, 0},
		{"both deleted one after the other", [][]event{{{svc: svc}, {slice: sliceOf("a", http, "10.0.0.1")}}, {{slice: sliceOf("a", http), remove: true}}, {{}}}, 0, 0, 0},
		{"slice without endpoints kept until deleted", [][]event{{{slice: sliceOf("a", http)}}}, 0, 0, 1},
		{"unknown slice deleted", [][]event{{{slice: sliceOf("a", http), remove: true}}}, 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			tr := NewTracker(logger, v1.IPv4Protocol, "n1")
			var state *State
			for _, batch := range tc.events {
				for _, ev := range batch {
					if ev.slice != nil {
						tr.OnEndpointSliceUpdate(ev.slice, ev.remove)
					} else if ev.svc != nil {
						tr.OnServiceUpdate(nil, ev.svc)
					} else {
						tr.OnServiceUpdate(svc, nil)
					}
				}
				state, _ = tr.Checkout()
			}
			if len(state.ServicePorts) != tc.ports || len(state.ServicePortNames(mergeSvc)) != tc.ports {
				t.Errorf("%d Service ports (%d indexed), want %d", len(state.ServicePorts), len(state.ServicePortNames(mergeSvc)), tc.ports)
			}
			if len(state.Endpoints) != tc.endpoints {
				t.Errorf("endpoints for %d ports, want %d", len(state.Endpoints), tc.endpoints)
			}
			if len(state.services) != tc.kept {
				t.Errorf("%d Service entries kept, want %d", len(state.services), tc.kept)
			}
		})
	}
}

// TestTrackerKeepsOneBlockPerSlice checks that after any update the
// endpoints of a one-slice Service point into the block the tracker keeps
// for the slice, so no replaced block stays alive behind them.
func TestTrackerKeepsOneBlockPerSlice(t *testing.T) {
	twoPorts := sliceOf("a", []string{"http/80/TCP", "dns/53/UDP"}, "10.0.0.1", "10.0.0.2")
	reordered := sliceOf("a", []string{"dns/53/UDP", "http/80/TCP"}, "10.0.0.2", "10.0.0.1")
	relabelled := twoPorts.DeepCopy()
	relabelled.Annotations = map[string]string{"x": "y"}
	moved := sliceOf("a", []string{"http/80/TCP", "dns/53/UDP"}, "10.0.0.1", "10.0.0.3")
	tests := []struct {
		name        string
		update      *discovery.EndpointSlice
		wantChanged bool
		// wantKept: the update is a no-op, the old block is kept as is.
		wantKept bool
	}{
		{"same slice again (resync)", twoPorts, false, true},
		{"unused field changed", relabelled, false, true},
		{"ports and endpoints reordered", reordered, false, false},
		{"endpoint moved", moved, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			tr := NewTracker(logger, v1.IPv4Protocol, "n1")
			tr.OnEndpointSliceUpdate(twoPorts, false)
			state, _ := tr.Checkout()
			old := &state.services[mergeSvc].slices[0].endpoints[0]
			tr.OnEndpointSliceUpdate(tc.update, false)
			state, ch := tr.Checkout()
			if ch.Services[mergeSvc] != tc.wantChanged {
				t.Errorf("change reported = %v, want %v", ch.Services[mergeSvc], tc.wantChanged)
			}
			block := state.services[mergeSvc].slices[0].endpoints
			if kept := &block[0] == old; kept != tc.wantKept {
				t.Errorf("old block kept = %v, want %v", kept, tc.wantKept)
			}
			inBlock := func(e *Endpoint) bool {
				for i := range block {
					if e == &block[i] {
						return true
					}
				}
				return false
			}
			for spn, eps := range state.Endpoints {
				for _, e := range eps {
					if e.Port == block[0].Port && !inBlock(e) {
						t.Errorf("%s: endpoint %s is not in the slice's block", spn, e)
					}
				}
			}
		})
	}
}
