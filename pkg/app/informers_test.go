package app

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
)

// startAPIWatch runs the daemon's Service and EndpointSlice watch over
// client until the test ends, and waits until handlers have every object
// of the first lists.
func startAPIWatch(t testing.TB, client kubernetes.Interface, handlers ...EventHandler) *apiWatch {
	t.Helper()
	logger, _ := ktesting.NewTestContext(t)
	w, err := newAPIWatch(logger, client, handlers)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitCtx, waitCancel := context.WithTimeout(ctx, 60*time.Second)
	defer waitCancel()
	if !cache.WaitForCacheSync(waitCtx.Done(), w.ServicesSynced, w.SlicesSynced) {
		t.Fatal("the watch did not sync")
	}
	return w
}

// event is one delivery to a handler, as the trackers read it.
type event struct {
	kind        string // "svc" or "slice"
	namespace   string
	name        string
	rv          string
	serviceName string // slices: the service-name label
	addressType discovery.AddressType
	removed     bool
}

func (e event) String() string {
	return fmt.Sprintf("%s %s/%s rv=%s svc=%q type=%q removed=%v", e.kind, e.namespace, e.name, e.rv, e.serviceName, e.addressType, e.removed)
}

// recordingHandler records every delivery, optionally slowly, as a
// proxier busy with a large initial list would take them.
type recordingHandler struct {
	delayPerObject time.Duration

	mu     sync.Mutex
	events []event
}

func (h *recordingHandler) OnServiceUpdate(old, svc *v1.Service) {
	time.Sleep(h.delayPerObject)
	e := event{kind: "svc"}
	if svc != nil {
		e.namespace, e.name, e.rv = svc.Namespace, svc.Name, svc.ResourceVersion
	} else {
		e.namespace, e.name, e.rv, e.removed = old.Namespace, old.Name, old.ResourceVersion, true
	}
	h.add(e)
}

func (h *recordingHandler) OnEndpointSliceUpdate(s *discovery.EndpointSlice, removed bool) {
	time.Sleep(h.delayPerObject)
	h.add(event{kind: "slice", namespace: s.Namespace, name: s.Name, rv: s.ResourceVersion,
		serviceName: s.Labels[discovery.LabelServiceName], addressType: s.AddressType, removed: removed})
}

func (h *recordingHandler) OnServicesSynced()       {}
func (h *recordingHandler) OnEndpointSlicesSynced() {}

func (h *recordingHandler) add(e event) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// take returns the events recorded since the last take.
func (h *recordingHandler) take() []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.events
	h.events = nil
	return out
}

// count returns how many Service and slice events were recorded.
func (h *recordingHandler) count() (services, slices int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		if e.kind == "svc" {
			services++
		} else {
			slices++
		}
	}
	return services, slices
}

// waitFor waits until want events have been recorded and returns them.
func (h *recordingHandler) waitFor(t *testing.T, want int) []event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h.mu.Lock()
		n := len(h.events)
		h.mu.Unlock()
		if n >= want || time.Now().After(deadline) {
			// Give a wrong extra delivery a moment to show.
			time.Sleep(50 * time.Millisecond)
			return h.take()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func service(ns, name, rv string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv,
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}}
}

func endpointSlice(ns, name, svc string, at discovery.AddressType, rv string) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
	}
}

func sameEvents(got, want []event) bool {
	if len(got) != len(want) {
		return false
	}
	left := map[event]int{}
	for _, e := range want {
		left[e]++
	}
	for _, e := range got {
		if left[e] == 0 {
			return false
		}
		left[e]--
	}
	return true
}

// TestStubStore drives the store behind the reflectors as they do (lists,
// relists, watch events) and checks what the handlers are given: changes
// once, no redelivery of a version already delivered, and removals, even
// of objects seen only as absent from a relist, that carry what the
// trackers file them by (namespace, name, service-name label, address
// type).
func TestStubStore(t *testing.T) {
	type op struct {
		do   string // "replace", "add", "update", "delete"
		objs []any
	}
	a1, a2 := endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "1"), endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "2")
	b1 := endpointSlice("ns", "b-1", "b", discovery.AddressTypeIPv6, "3")
	moved := endpointSlice("ns", "a-1", "other", discovery.AddressTypeIPv4, "4")
	s1, s2 := service("ns", "a", "5"), service("ns", "a", "6")
	add := func(o any) event {
		switch o := o.(type) {
		case *v1.Service:
			return event{kind: "svc", namespace: o.Namespace, name: o.Name, rv: o.ResourceVersion}
		case *discovery.EndpointSlice:
			return event{kind: "slice", namespace: o.Namespace, name: o.Name, rv: o.ResourceVersion,
				serviceName: o.Labels[discovery.LabelServiceName], addressType: o.AddressType}
		}
		panic(o)
	}
	del := func(o any) event { e := add(o); e.removed = true; return e }
	tests := []struct {
		name    string
		sink    string // "svc" or "slice"
		initial []any
		ops     []op
		want    []event
	}{
		{name: "initial list", sink: "slice", initial: []any{a1, b1}},
		{name: "add, update, delete after sync", sink: "slice", initial: []any{a1},
			ops:  []op{{"add", []any{b1}}, {"update", []any{a2}}, {"delete", []any{b1}}},
			want: []event{add(b1), add(a2), del(b1)}},
		{name: "update at the delivered version (resync, synthetic ADDED)", sink: "slice", initial: []any{a1},
			ops: []op{{"update", []any{a1}}, {"add", []any{a1}}}},
		{name: "relist: vanished slice removed from a stub", sink: "slice", initial: []any{a1, b1},
			ops:  []op{{"replace", []any{a1}}},
			want: []event{del(b1)}},
		{name: "relist: changed slice delivered, unchanged not", sink: "slice", initial: []any{a1, b1},
			ops:  []op{{"replace", []any{a2, b1}}},
			want: []event{add(a2)}},
		{name: "slice moved to another Service: removed under the old one", sink: "slice", initial: []any{a1},
			ops:  []op{{"update", []any{moved}}},
			want: []event{del(a1), add(moved)}},
		{name: "relist: vanished Service removed", sink: "svc", initial: []any{s1},
			ops:  []op{{"replace", nil}},
			want: []event{del(s1)}},
		{name: "Service update and delete", sink: "svc", initial: []any{s1},
			ops:  []op{{"update", []any{s1}}, {"update", []any{s2}}, {"delete", []any{cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: s2}}}},
			want: []event{add(s2), del(s2)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			h := &recordingHandler{}
			var sink stubSink = sliceSink{handlers: []EventHandler{h}}
			if tc.sink == "svc" {
				sink = serviceSink{handlers: []EventHandler{h}}
			}
			s := newStubStore(logger, sink)
			if s.HasSynced() {
				t.Fatal("synced before the first list")
			}
			var wantInitial []event
			for _, o := range tc.initial {
				wantInitial = append(wantInitial, add(o))
			}
			if err := s.Replace(tc.initial, "10"); err != nil {
				t.Fatal(err)
			}
			if got := h.take(); !s.HasSynced() || !sameEvents(got, wantInitial) {
				t.Fatalf("first list: synced %v, delivered %v, want %v", s.HasSynced(), got, wantInitial)
			}
			for _, o := range tc.ops {
				for _, obj := range o.objs {
					var err error
					switch o.do {
					case "add":
						err = s.Add(obj)
					case "update":
						err = s.Update(obj)
					case "delete":
						err = s.Delete(obj)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				if o.do == "replace" {
					if err := s.Replace(o.objs, "20"); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := h.take(); !sameEvents(got, tc.want) {
				t.Errorf("delivered %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAPIWatch runs the watch over a fake clientset: the first lists, then
// creations, updates and deletions through the API reach the handlers, an
// update that does not change the resourceVersion does not. (The fake's
// watches ignore label selectors; TestInformersIgnoreLabelledObjects checks
// the selector on its lists.)
func TestAPIWatch(t *testing.T) {
	client := fake.NewClientset(service("ns", "a", "1"), endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "2"))
	h := &recordingHandler{}
	startAPIWatch(t, client, h)
	if got, want := h.take(), []event{
		{kind: "svc", namespace: "ns", name: "a", rv: "1"},
		{kind: "slice", namespace: "ns", name: "a-1", rv: "2", serviceName: "a", addressType: discovery.AddressTypeIPv4},
	}; !sameEvents(got, want) {
		t.Fatalf("initial list: %v, want %v", got, want)
	}
	ctx := context.Background()
	svcs, slices := client.CoreV1().Services("ns"), client.DiscoveryV1().EndpointSlices("ns")
	steps := []struct {
		name string
		do   func() error
		want []event
	}{
		{"create a Service", func() error { _, err := svcs.Create(ctx, service("ns", "b", "4"), metav1.CreateOptions{}); return err },
			[]event{{kind: "svc", namespace: "ns", name: "b", rv: "4"}}},
		{"update a slice", func() error {
			_, err := slices.Update(ctx, endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "5"), metav1.UpdateOptions{})
			return err
		}, []event{{kind: "slice", namespace: "ns", name: "a-1", rv: "5", serviceName: "a", addressType: discovery.AddressTypeIPv4}}},
		{"update a slice without a new version", func() error {
			_, err := slices.Update(ctx, endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "5"), metav1.UpdateOptions{})
			return err
		}, nil},
		{"delete a slice", func() error { return slices.Delete(ctx, "a-1", metav1.DeleteOptions{}) },
			[]event{{kind: "slice", namespace: "ns", name: "a-1", rv: "5", serviceName: "a", addressType: discovery.AddressTypeIPv4, removed: true}}},
		{"delete a Service", func() error { return svcs.Delete(ctx, "a", metav1.DeleteOptions{}) },
			[]event{{kind: "svc", namespace: "ns", name: "a", rv: "1", removed: true}}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := h.waitFor(t, len(st.want)); !sameEvents(got, st.want) {
			t.Errorf("%s: delivered %v, want %v", st.name, got, st.want)
		}
	}
}

// TestAPIWatchRelist ends the EndpointSlice watch with "too old resource
// version" after a slice was deleted unseen: the relist that follows must
// deliver the removal, built from what the watch kept of the slice, and
// the Service watch goes on.
func TestAPIWatchRelist(t *testing.T) {
	gone := endpointSlice("ns", "a-2", "a", discovery.AddressTypeIPv6, "3")
	client := fake.NewClientset(service("ns", "a", "1"), endpointSlice("ns", "a-1", "a", discovery.AddressTypeIPv4, "2"), gone)
	first := stallFirstWatch(client, "endpointslices")
	h := &recordingHandler{}
	startAPIWatch(t, client, h)
	h.take()
	// Deleted while the watch sees nothing, as during an apiserver outage.
	gvr := discovery.SchemeGroupVersion.WithResource("endpointslices")
	if err := client.Tracker().Delete(gvr, "ns", "a-2"); err != nil {
		t.Fatal(err)
	}
	expire(first)
	want := []event{{kind: "slice", namespace: "ns", name: "a-2", rv: "3", serviceName: "a", addressType: discovery.AddressTypeIPv6, removed: true}}
	if got := h.waitFor(t, 1); !sameEvents(got, want) {
		t.Fatalf("after the relist: delivered %v, want %v", got, want)
	}
	// The new watch delivers.
	if err := client.Tracker().Add(endpointSlice("ns", "a-3", "a", discovery.AddressTypeIPv4, "7")); err != nil {
		t.Fatal(err)
	}
	want = []event{{kind: "slice", namespace: "ns", name: "a-3", rv: "7", serviceName: "a", addressType: discovery.AddressTypeIPv4}}
	if got := h.waitFor(t, 1); !sameEvents(got, want) {
		t.Errorf("after the relist, the new watch delivered %v, want %v", got, want)
	}
}

// stallFirstWatch makes the first watch of resource on client one that
// sees nothing, as a watch cut off by an apiserver outage; later watches
// are the fake's own. End it with an error to make the reflector relist.
func stallFirstWatch(client *fake.Clientset, resource string) *watch.FakeWatcher {
	first := watch.NewFakeWithChanSize(1, false)
	var mu sync.Mutex
	watches := 0
	client.PrependWatchReactor(resource, func(k8stesting.Action) (bool, watch.Interface, error) {
		mu.Lock()
		defer mu.Unlock()
		watches++
		if watches == 1 {
			return true, first, nil
		}
		return false, nil, nil
	})
	return first
}

// expire ends w as the apiserver ends a watch whose resourceVersion was
// compacted away: the reflector must list again.
func expire(w *watch.FakeWatcher) {
	expired := apierrors.NewResourceExpired("too old resource version: 2 (10)")
	w.Error(&expired.ErrStatus)
}

// TestHandlersSyncedAfterEveryInitialObject checks that the watch reports
// synced only once the handlers have been given every object of the
// initial lists. A first sync started earlier, on a large cluster, saw
// only part of the EndpointSlices and deleted the rules of the rest until
// the next sync.
func TestHandlersSyncedAfterEveryInitialObject(t *testing.T) {
	const n = 2000
	objs := make([]runtime.Object, 0, 2*n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		objs = append(objs, service("ns", name, "1"), endpointSlice("ns", name+"-1", name, discovery.AddressTypeIPv4, "1"))
	}
	h := &recordingHandler{delayPerObject: 200 * time.Microsecond}
	startAPIWatch(t, fake.NewClientset(objs...), h)
	if services, slices := h.count(); services != n || slices != n {
		t.Errorf("when synced, the handler had %d Services and %d EndpointSlices of %d each", services, slices, n)
	}
}
