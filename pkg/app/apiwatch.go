package app

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// apiWatch lists and watches Services and EndpointSlices and hands every
// change to the handlers, without an informer cache of whole objects: the
// trackers behind the handlers hold the only parsed copy, and the watch
// keeps per object only a stubRecord, enough to skip redeliveries and to
// describe the deletions a relist reveals.
type apiWatch struct {
	services, slices *stubStore
	reflectors       []*cache.Reflector
}

// newAPIWatch returns the watch of client's Services and EndpointSlices,
// filtered as kube-proxy filters them (no service-proxy-name label, no
// headless label), delivering to handlers. Nothing runs until Run.
func newAPIWatch(logger klog.Logger, client kubernetes.Interface, handlers []EventHandler) (*apiWatch, error) {
	selector, err := proxiedSelector()
	if err != nil {
		return nil, fmt.Errorf("building the label selector: %w", err)
	}
	sel := selector.String()
	w := &apiWatch{
		services: newStubStore(logger, serviceSink{handlers: handlers}),
		slices:   newStubStore(logger, sliceSink{handlers: handlers}),
	}
	svcLW := selectedListWatch(client, sel,
		client.CoreV1().Services(metav1.NamespaceAll).List,
		client.CoreV1().Services(metav1.NamespaceAll).Watch)
	sliceLW := selectedListWatch(client, sel,
		client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List,
		client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch)
	// No resync period: a resync redelivers objects already delivered,
	// which the handlers would ignore anyway.
	w.reflectors = []*cache.Reflector{
		cache.NewReflectorWithOptions(svcLW, &v1.Service{}, w.services, cache.ReflectorOptions{Name: "services", Logger: &logger}),
		cache.NewReflectorWithOptions(sliceLW, &discovery.EndpointSlice{}, w.slices, cache.ReflectorOptions{Name: "endpointslices", Logger: &logger}),
	}
	return w, nil
}

// selectedListWatch lists and watches one kind through its typed client,
// with the label selector sel.
func selectedListWatch[L runtime.Object](client kubernetes.Interface, sel string,
	list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sel
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return watchFn(ctx, o)
		},
	}, client)
}

// Run lists, watches and relists (after a watch error or an expired
// resource version) until ctx ends, and returns once the watches stopped.
func (w *apiWatch) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range w.reflectors {
		wg.Go(func() { r.RunWithContext(ctx) })
	}
	wg.Wait()
}

// ServicesSynced reports whether the handlers have received every Service
// of the first list.
func (w *apiWatch) ServicesSynced() bool { return w.services.HasSynced() }

// SlicesSynced reports whether the handlers have received every
// EndpointSlice of the first list.
func (w *apiWatch) SlicesSynced() bool { return w.slices.HasSynced() }

// stubRecord is what the watch keeps of one object between events.
type stubRecord struct {
	resourceVersion string
	// serviceName and addressType are an EndpointSlice's
	// kubernetes.io/service-name label and address type: the trackers file
	// slices by them, so a removal must carry them.
	serviceName string
	addressType discovery.AddressType
}

// sameFiling reports whether the trackers file both versions of an object
// under the same key.
func (r stubRecord) sameFiling(o stubRecord) bool {
	return r.serviceName == o.serviceName && r.addressType == o.addressType
}

// stubSink is one kind of object (Services or EndpointSlices) as the
// stubStore sees it: how to record it, how to rebuild a stub from the
// record, and how to deliver it to the handlers.
type stubSink interface {
	// record returns the key and the record of obj.
	record(obj any) (types.NamespacedName, stubRecord, error)
	// stub rebuilds the minimal object a removal needs from its record.
	stub(nn types.NamespacedName, rec stubRecord) any
	// update delivers a new (old nil) or changed object.
	update(old, cur any)
	// remove delivers a deletion.
	remove(obj any)
}

// stubStore is the cache.ReflectorStore behind a Reflector: it forwards
// each change to its sink and keeps a stubRecord per object. Add and
// Update of an object at the resourceVersion already delivered are
// dropped; Replace (a list, a relist, or the end of a watch-list stream)
// delivers the objects whose resourceVersion changed and removals of the
// keys that disappeared, then marks the store synced. Every delivery
// happens before the call returns, so once HasSynced is true the handlers
// have received every object of the first list.
type stubStore struct {
	logger klog.Logger
	sink   stubSink

	mu      sync.Mutex
	records map[types.NamespacedName]stubRecord
	synced  atomic.Bool
}

var _ cache.TransformingStore = &stubStore{}

func newStubStore(logger klog.Logger, sink stubSink) *stubStore {
	return &stubStore{logger: logger, sink: sink, records: map[types.NamespacedName]stubRecord{}}
}

// HasSynced reports whether a first Replace has been delivered.
func (s *stubStore) HasSynced() bool { return s.synced.Load() }

// Transformer trims the objects a watch-list stream collects before
// Replace (the Reflector applies it to its temporary store).
func (s *stubStore) Transformer() cache.TransformFunc { return trimObject }

// Add delivers a new or changed object.
func (s *stubStore) Add(obj any) error { return s.upsert(obj) }

// Update delivers a changed object.
func (s *stubStore) Update(obj any) error { return s.upsert(obj) }

func (s *stubStore) upsert(obj any) error {
	obj, nn, rec, err := s.recordOf(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deliver(nn, rec, obj)
	s.records[nn] = rec
	return nil
}

// deliver passes obj on unless it is the version already delivered. A
// slice whose service-name label changed is removed under its old filing
// first. Callers hold s.mu.
func (s *stubStore) deliver(nn types.NamespacedName, rec stubRecord, obj any) {
	old, had := s.records[nn]
	switch {
	case !had:
		s.sink.update(nil, obj)
	case rec.resourceVersion != "" && rec.resourceVersion == old.resourceVersion:
		// A redelivery (synthetic ADDED events, a relist): nothing changed.
	case !old.sameFiling(rec):
		s.sink.remove(s.sink.stub(nn, old))
		s.sink.update(nil, obj)
	default:
		s.sink.update(s.sink.stub(nn, old), obj)
	}
}

// Delete delivers a deletion with the object's last state.
func (s *stubStore) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	obj, nn, rec, err := s.recordOf(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, had := s.records[nn]; had && !old.sameFiling(rec) {
		s.sink.remove(s.sink.stub(nn, old))
	}
	delete(s.records, nn)
	s.sink.remove(obj)
	return nil
}

// Replace delivers what changed between the recorded objects and list,
// then marks the store synced. Objects that cannot be recorded are logged
// and left out.
func (s *stubStore) Replace(list []any, resourceVersion string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[types.NamespacedName]stubRecord, len(list))
	for _, item := range list {
		obj, nn, rec, err := s.recordOf(item)
		if err != nil {
			s.logger.Error(err, "Ignoring a listed object", "resourceVersion", resourceVersion)
			continue
		}
		s.deliver(nn, rec, obj)
		next[nn] = rec
	}
	for nn, old := range s.records {
		if _, ok := next[nn]; !ok {
			s.sink.remove(s.sink.stub(nn, old))
		}
	}
	s.records = next
	s.synced.Store(true)
	return nil
}

// Resync does nothing: every object was delivered when it changed.
func (s *stubStore) Resync() error { return nil }

func (s *stubStore) recordOf(obj any) (any, types.NamespacedName, stubRecord, error) {
	obj, err := trimObject(obj)
	if err != nil {
		return nil, types.NamespacedName{}, stubRecord{}, err
	}
	nn, rec, err := s.sink.record(obj)
	return obj, nn, rec, err
}

// serviceSink delivers Services.
type serviceSink struct{ handlers []EventHandler }

func (serviceSink) record(obj any) (types.NamespacedName, stubRecord, error) {
	svc, ok := obj.(*v1.Service)
	if !ok {
		return types.NamespacedName{}, stubRecord{}, fmt.Errorf("not a Service: %T", obj)
	}
	return types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, stubRecord{resourceVersion: svc.ResourceVersion}, nil
}

func (serviceSink) stub(nn types.NamespacedName, rec stubRecord) any {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name, ResourceVersion: rec.resourceVersion}}
}

func (k serviceSink) update(old, cur any) {
	o, _ := old.(*v1.Service)
	c := cur.(*v1.Service)
	for _, h := range k.handlers {
		h.OnServiceUpdate(o, c)
	}
}

func (k serviceSink) remove(obj any) {
	svc := obj.(*v1.Service)
	for _, h := range k.handlers {
		h.OnServiceUpdate(svc, nil)
	}
}

// sliceSink delivers EndpointSlices.
type sliceSink struct{ handlers []EventHandler }

func (sliceSink) record(obj any) (types.NamespacedName, stubRecord, error) {
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return types.NamespacedName{}, stubRecord{}, fmt.Errorf("not an EndpointSlice: %T", obj)
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, stubRecord{
		resourceVersion: s.ResourceVersion,
		serviceName:     s.Labels[discovery.LabelServiceName],
		addressType:     s.AddressType,
	}, nil
}

func (sliceSink) stub(nn types.NamespacedName, rec stubRecord) any {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name, ResourceVersion: rec.resourceVersion},
		AddressType: rec.addressType,
	}
	if rec.serviceName != "" {
		s.Labels = map[string]string{discovery.LabelServiceName: rec.serviceName}
	}
	return s
}

func (k sliceSink) update(_, cur any) {
	s := cur.(*discovery.EndpointSlice)
	for _, h := range k.handlers {
		h.OnEndpointSliceUpdate(s, false)
	}
}

func (k sliceSink) remove(obj any) {
	s := obj.(*discovery.EndpointSlice)
	for _, h := range k.handlers {
		h.OnEndpointSliceUpdate(s, true)
	}
}
