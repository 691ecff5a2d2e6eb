package app

import (
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// EventHandler receives Service and EndpointSlice events; every proxier
// (one per IP family) is one.
type EventHandler interface {
	OnServiceUpdate(old, svc *v1.Service)
	OnEndpointSliceUpdate(slice *discovery.EndpointSlice, removed bool)
	OnServicesSynced()
	OnEndpointSlicesSynced()
}

// newInformerFactory returns the factory for Services and EndpointSlices,
// filtered as kube-proxy filters them (no service-proxy-name label, no
// headless label) and trimmed to what the renderer reads.
func newInformerFactory(client kubernetes.Interface, resync time.Duration) (informers.SharedInformerFactory, error) {
	noProxyName, err := labels.NewRequirement(proxy.LabelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	noHeadless, err := labels.NewRequirement(proxy.LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	selector := labels.NewSelector().Add(*noProxyName, *noHeadless)
	return informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }),
		informers.WithTransform(trimObject),
	), nil
}

// trimObject drops the parts of API objects iptproxy never reads, so the
// informer caches stay small on big clusters.
func trimObject(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
		if ann := a.GetAnnotations(); len(ann) > 0 {
			keep := map[string]string{}
			if t, ok := ann[v1.EndpointsLastChangeTriggerTime]; ok {
				keep[v1.EndpointsLastChangeTriggerTime] = t
			}
			a.SetAnnotations(keep)
		}
	}
	switch o := obj.(type) {
	case *v1.Service:
		o.Spec.Selector = nil
		o.Status.Conditions = nil
	case *discovery.EndpointSlice:
		for i := range o.Endpoints {
			o.Endpoints[i].TargetRef = nil
			o.Endpoints[i].DeprecatedTopology = nil
			o.Endpoints[i].Hostname = nil
		}
	}
	return obj, nil
}

// addHandlers fans informer events out to every handler. The returned
// functions report when each handler registration has received every object
// of its informer's initial list: an informer's own HasSynced turns true
// once its store is filled, possibly long before the handlers have been
// called for every object (thousands of EndpointSlices), and a first sync
// then would delete the rules of every Service not yet delivered.
func addHandlers(factory informers.SharedInformerFactory, handlers []EventHandler) (servicesSynced, slicesSynced cache.InformerSynced, err error) {
	svcInformer := factory.Core().V1().Services().Informer()
	svcReg, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if svc, ok := obj.(*v1.Service); ok {
				for _, h := range handlers {
					h.OnServiceUpdate(nil, svc)
				}
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*v1.Service)
			c, ok2 := cur.(*v1.Service)
			if ok1 && ok2 && !sameVersion(o, c) {
				for _, h := range handlers {
					h.OnServiceUpdate(o, c)
				}
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if svc, ok := obj.(*v1.Service); ok {
				for _, h := range handlers {
					h.OnServiceUpdate(svc, nil)
				}
			}
		},
	})
	if err != nil {
		return nil, nil, err
	}
	sliceInformer := factory.Discovery().V1().EndpointSlices().Informer()
	sliceReg, err := sliceInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*discovery.EndpointSlice); ok {
				for _, h := range handlers {
					h.OnEndpointSliceUpdate(s, false)
				}
			}
		},
		UpdateFunc: func(old, cur any) {
			if s, ok := cur.(*discovery.EndpointSlice); ok && !sameVersion(old, s) {
				for _, h := range handlers {
					h.OnEndpointSliceUpdate(s, false)
				}
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if s, ok := obj.(*discovery.EndpointSlice); ok {
				for _, h := range handlers {
					h.OnEndpointSliceUpdate(s, true)
				}
			}
		},
	})
	if err != nil {
		return nil, nil, err
	}
	return svcReg.HasSynced, sliceReg.HasSynced, nil
}

// sameVersion reports whether an update carries the object the informer
// already delivered (a periodic resync): nothing changed, so the trackers
// are not asked to parse it again and its bad parts are not logged again.
func sameVersion(old, cur any) bool {
	o, err1 := meta.Accessor(old)
	c, err2 := meta.Accessor(cur)
	if err1 != nil || err2 != nil {
		return false
	}
	return o.GetResourceVersion() != "" && o.GetResourceVersion() == c.GetResourceVersion()
}
