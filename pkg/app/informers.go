package app

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// EventHandler receives Service and EndpointSlice events; every proxier
// (one per IP family) is one. An old Service, and a removed Service or
// EndpointSlice seen only as missing from a relist, may be a stub: its
// namespace, name and resourceVersion, and for a slice its service-name
// label and address type.
type EventHandler interface {
	OnServiceUpdate(old, svc *v1.Service)
	OnEndpointSliceUpdate(slice *discovery.EndpointSlice, removed bool)
	OnServicesSynced()
	OnEndpointSlicesSynced()
}

// proxiedSelector selects the Services and EndpointSlices kube-proxy
// serves: no service-proxy-name label (another proxy's), no headless label.
func proxiedSelector() (labels.Selector, error) {
	noProxyName, err := labels.NewRequirement(proxy.LabelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	noHeadless, err := labels.NewRequirement(proxy.LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	return labels.NewSelector().Add(*noProxyName, *noHeadless), nil
}

// trimObject drops the parts of API objects iptproxy never reads, so that
// what is held between an event and the trackers' next checkout (and the
// Node informer's cache) stays small on big clusters.
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
