package app

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// discardHandler drops every object, so that what stays live after the
// first lists is what the watch machinery itself holds.
type discardHandler struct{}

func (discardHandler) OnServiceUpdate(_, _ *v1.Service)                         {}
func (discardHandler) OnEndpointSliceUpdate(_ *discovery.EndpointSlice, _ bool) {}
func (discardHandler) OnServicesSynced()                                        {}
func (discardHandler) OnEndpointSlicesSynced()                                  {}

// scaleObjects returns n Services, each with one EndpointSlice of
// endpoints endpoints, filled as the API server and the EndpointSlice
// controller fill them.
func scaleObjects(n, endpoints int) []k8sruntime.Object {
	objs := make([]k8sruntime.Object, 0, 2*n)
	for i := range n {
		ns, name := fmt.Sprintf("ns-%d", i%100), fmt.Sprintf("svc-%d", i)
		ip := fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)
		objs = append(objs, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: fmt.Sprint(2*i + 1),
				UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", 2*i)), CreationTimestamp: metav1.Now(),
				Labels: map[string]string{"app": name}},
			Spec: v1.ServiceSpec{
				Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
				IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack),
				Selector:              map[string]string{"app": name},
				Ports:                 []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
				SessionAffinity:       v1.ServiceAffinityNone,
				InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyCluster),
			},
		})
		eps := make([]discovery.Endpoint, endpoints)
		for j := range eps {
			eps[j] = discovery.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 64+i/250, i%250, j+1)},
				Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
				NodeName:   ptr.To(fmt.Sprintf("node-%d", j)),
				Zone:       ptr.To("zone-a"),
				TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: fmt.Sprintf("%s-%d", name, j)},
			}
		}
		objs = append(objs, &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde", ResourceVersion: fmt.Sprint(2*i + 2),
				UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", 2*i+1)), CreationTimestamp: metav1.Now(),
				Labels: map[string]string{discovery.LabelServiceName: name, discovery.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   eps,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		})
	}
	return objs
}

// liveHeap is the heap in use after garbage collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// startInformerCache runs what the daemon ran before the stub watch: a
// shared informer factory with the same selector and transform, whose
// caches hold every (trimmed) object. It returns once the handlers have
// every object, and a stop function.
func startInformerCache(b *testing.B, client kubernetes.Interface, h EventHandler) func() {
	selector, err := proxiedSelector()
	if err != nil {
		b.Fatal(err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }),
		informers.WithTransform(trimObject))
	svcReg, err := factory.Core().V1().Services().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { h.OnServiceUpdate(nil, obj.(*v1.Service)) },
	})
	if err != nil {
		b.Fatal(err)
	}
	sliceReg, err := factory.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { h.OnEndpointSliceUpdate(obj.(*discovery.EndpointSlice), false) },
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcReg.HasSynced, sliceReg.HasSynced) {
		b.Fatal("informers did not sync")
	}
	return func() {
		cancel()
		factory.Shutdown()
	}
}

// startStubWatch runs the daemon's watch; see startInformerCache.
func startStubWatch(b *testing.B, client kubernetes.Interface, h EventHandler) func() {
	w, err := newAPIWatch(logr.Discard(), client, []EventHandler{h})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	waitCtx, waitCancel := context.WithTimeout(ctx, 5*time.Minute)
	defer waitCancel()
	if !cache.WaitForCacheSync(waitCtx.Done(), w.ServicesSynced, w.SlicesSynced) {
		b.Fatal("the watch did not sync")
	}
	return func() {
		cancel()
		<-done
	}
}

// BenchmarkInformerMemory10kx10 reports the live heap the watch machinery
// holds (live-MB) after delivering 10,000 Services and 10,000
// EndpointSlices of 10 endpoints to handlers that keep nothing: with the
// informer caches the daemon used before (informer-cache) and with the
// stub watch (stub-watch). The fake clientset's own copy is measured
// before the start and subtracted.
func BenchmarkInformerMemory10kx10(b *testing.B) {
	paths := []struct {
		name  string
		start func(*testing.B, kubernetes.Interface, EventHandler) func()
	}{
		{"informer-cache", startInformerCache},
		{"stub-watch", startStubWatch},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			var held float64
			for b.Loop() {
				b.StopTimer()
				client := fake.NewClientset(scaleObjects(10_000, 10)...)
				before := liveHeap()
				b.StartTimer()
				stop := p.start(b, client, discardHandler{})
				b.StopTimer()
				held = float64(int64(liveHeap())-int64(before)) / (1 << 20)
				stop()
				runtime.KeepAlive(client)
				b.StartTimer()
			}
			b.ReportMetric(held, "live-MB")
		})
	}
}
