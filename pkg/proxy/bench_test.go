package proxy

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// benchObjects builds services Services with one TCP port each and one
// IPv4 EndpointSlice per Service of perSlice ready endpoints, spread over
// 100 nodes in 3 zones, as a large cluster's informers would hand them over.
func benchObjects(services, perSlice int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, services)
	slices := make([]*discovery.EndpointSlice, services)
	n := 0
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		ns := fmt.Sprintf("ns-%d", i%100)
		svcs[i] = &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.ServiceSpec{
				Type:       v1.ServiceTypeClusterIP,
				ClusterIP:  netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)}).String(),
				Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
				IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			},
		}
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde",
				Labels: map[string]string{discovery.LabelServiceName: name}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		}
		for range perSlice {
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{
				Addresses:  []string{netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}).String()},
				Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
				NodeName:   ptr.To(fmt.Sprintf("node-%d", n%100)),
				Zone:       ptr.To(fmt.Sprintf("zone-%c", 'a'+n%3)),
			})
			n++
		}
		slices[i] = s
	}
	return svcs, slices
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkTrackerMemory10kx10 feeds 10,000 Services with 10 endpoints each
// through a Tracker and reports the heap the tracker keeps once the API
// objects are dropped (retained-MB) and how long the first Checkout of
// them all took (first-checkout-ms), both measured once, then times
// Checkout after one EndpointSlice change (ns/op).
func BenchmarkTrackerMemory10kx10(b *testing.B) {
	const services, perSlice = 10000, 10
	before := heapAlloc()
	tr := NewTracker(klog.Background(), v1.IPv4Protocol, "node-7")
	svcs, slices := benchObjects(services, perSlice)
	for _, svc := range svcs {
		tr.OnServiceUpdate(nil, svc)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(s, false)
	}
	start := time.Now()
	state, _ := tr.Checkout()
	initial := time.Since(start)
	if got := state.EndpointCount(); got != services*perSlice {
		b.Fatalf("tracker holds %d endpoints, want %d", got, services*perSlice)
	}
	changed := slices[services/2]
	svcs, slices, state = nil, nil, nil
	retained := heapAlloc() - before

	// Two versions of one slice, alternated: each Checkout re-parses and
	// re-merges one Service whose first endpoint moved.
	versions := [2]*discovery.EndpointSlice{changed, changed.DeepCopy()}
	versions[1].Endpoints[0].Addresses = []string{"10.255.0.1"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tr.OnEndpointSliceUpdate(versions[(i+1)%2], false)
		if _, ch := tr.Checkout(); len(ch.Services) != 1 {
			b.Fatalf("checkout %d changed %d Services, want 1", i, len(ch.Services))
		}
	}
	b.StopTimer()
	runtime.KeepAlive(tr)
	// Reported last: ResetTimer deletes metrics reported before it.
	b.ReportMetric(float64(retained)/(1<<20), "retained-MB")
	b.ReportMetric(float64(retained)/(services*perSlice), "retained-B/endpoint")
	b.ReportMetric(float64(initial.Milliseconds()), "first-checkout-ms")
}

// BenchmarkCategorize times Categorize for the common Service port: ten
// ready endpoints, Cluster traffic policy, no topology hints (allocs/op is
// the figure to watch: the renderer calls it for every port it renders).
func BenchmarkCategorize(b *testing.B) {
	eps := make([]*Endpoint, 10)
	for i := range eps {
		eps[i] = ep(fmt.Sprintf("10.0.0.%d", i+1))
	}
	sp := &ServicePort{}
	b.ReportAllocs()
	for b.Loop() {
		if c := Categorize(eps, sp, "node-a", "zone-a"); len(c.Reachable) != len(eps) {
			b.Fatalf("%d reachable endpoints, want %d", len(c.Reachable), len(eps))
		}
	}
}
