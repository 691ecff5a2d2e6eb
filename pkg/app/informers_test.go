package app

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// TestSameVersion checks that informer resyncs (the same object delivered
// again) are recognised, so bad parts of objects are not parsed and logged
// again every resync period, while real updates go through.
func TestSameVersion(t *testing.T) {
	svc := func(rv string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", ResourceVersion: rv}}
	}
	slice := func(rv string) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-1", ResourceVersion: rv}}
	}
	tests := []struct {
		name     string
		old, cur any
		want     bool
	}{
		{"Service resync", svc("7"), svc("7"), true},
		{"Service update", svc("7"), svc("8"), false},
		{"Service without a version (not from the API)", svc(""), svc(""), false},
		{"EndpointSlice resync", slice("9"), slice("9"), true},
		{"EndpointSlice update", slice("9"), slice("10"), false},
		{"not an object", "x", slice("9"), false},
	}
	for _, tc := range tests {
		if got := sameVersion(tc.old, tc.cur); got != tc.want {
			t.Errorf("%s: sameVersion = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// countingHandler counts the objects delivered to it, slowly, as a proxier
// busy with a large initial list would take them.
type countingHandler struct {
	mu             sync.Mutex
	services       int
	slices         int
	delayPerObject time.Duration
}

func (h *countingHandler) OnServiceUpdate(_, _ *v1.Service) {
	time.Sleep(h.delayPerObject)
	h.mu.Lock()
	h.services++
	h.mu.Unlock()
}

func (h *countingHandler) OnEndpointSliceUpdate(_ *discovery.EndpointSlice, _ bool) {
	time.Sleep(h.delayPerObject)
	h.mu.Lock()
	h.slices++
	h.mu.Unlock()
}

func (h *countingHandler) OnServicesSynced()       {}
func (h *countingHandler) OnEndpointSlicesSynced() {}

// TestHandlersSyncedAfterEveryInitialObject checks that the "synced"
// functions addHandlers returns turn true only once the handlers have been
// given every object of the initial lists. An informer's own HasSynced is
// true as soon as its store is filled; a first sync started then, on a
// large cluster, saw only part of the EndpointSlices and deleted the rules
// of the rest until the next sync.
func TestHandlersSyncedAfterEveryInitialObject(t *testing.T) {
	const n = 2000
	objs := make([]runtime.Object, 0, 2*n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		objs = append(objs,
			&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1"}},
			&discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name + "-1", ResourceVersion: "1",
				Labels: map[string]string{discovery.LabelServiceName: name}}})
	}
	factory, err := newInformerFactory(fake.NewClientset(objs...), 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &countingHandler{delayPerObject: 200 * time.Microsecond}
	svcSynced, sliceSynced, err := addHandlers(factory, []EventHandler{h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), svcSynced, sliceSynced) {
		t.Fatal("handlers did not sync")
	}
	h.mu.Lock()
	services, slices := h.services, h.slices
	h.mu.Unlock()
	if services != n || slices != n {
		t.Errorf("when synced, the handler had %d Services and %d EndpointSlices of %d each", services, slices, n)
	}
}
