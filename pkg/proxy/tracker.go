package proxy

import (
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Tracker accumulates Service and EndpointSlice events for one IP family
// between syncs. Event handlers call the On* methods from informer
// goroutines; the sync loop calls Checkout, which folds the pending changes
// into the State it owns and says which Services changed.
type Tracker struct {
	family   v1.IPFamily
	nodeName string
	logger   klog.Logger

	mu              sync.Mutex
	pendingServices map[types.NamespacedName]*v1.Service // nil value: deleted
	pendingSlices   map[sliceKey]*discovery.EndpointSlice
	// triggerTimes records, per Service, when the oldest pending endpoint
	// change was made (the EndpointSlice's last-change-trigger-time
	// annotation), for network programming latency.
	triggerTimes map[types.NamespacedName][]time.Time

	// state is owned by the sync loop (Checkout's caller).
	state *State
}

type sliceKey struct {
	service types.NamespacedName
	name    string
}

// State is the model a sync renders: every Service port of one family with
// its endpoints. Only the goroutine that calls Tracker.Checkout may read it.
type State struct {
	// ServicePorts holds every served Service port.
	ServicePorts map[ServicePortName]*ServicePort
	// Endpoints holds, per Service port, its endpoints sorted by "ip:port".
	// It may hold ports no Service has (slices arrive before Services).
	Endpoints map[ServicePortName][]*Endpoint

	// services indexes the above per Service, and holds its slices.
	services map[types.NamespacedName]serviceEntry
}

// serviceEntry is what the state keeps per Service, in one map entry.
type serviceEntry struct {
	// portNames are the Service's ports in ServicePorts.
	portNames []ServicePortName
	// endpointPorts are its ports in Endpoints.
	endpointPorts []ServicePortName
	// slices are its EndpointSlices, sorted by name.
	slices []sliceData
}

// setEntry stores e as Service nn's entry, or drops the entry when e is
// empty.
func (s *State) setEntry(nn types.NamespacedName, e serviceEntry) {
	if len(e.portNames) == 0 && len(e.endpointPorts) == 0 && len(e.slices) == 0 {
		delete(s.services, nn)
		return
	}
	s.services[nn] = e
}

// Change describes what one Checkout folded in.
type Change struct {
	// Services lists the Services whose ports or endpoints changed.
	Services map[types.NamespacedName]bool
	// Previous holds, for every changed Service, its ports and endpoints
	// before the change (for stale conntrack cleanup).
	PreviousPorts     map[ServicePortName]*ServicePort
	PreviousEndpoints map[ServicePortName][]*Endpoint
	// TriggerTimes are the endpoint change times folded in, per Service.
	TriggerTimes map[types.NamespacedName][]time.Time
	// ServiceEvents and SliceEvents count the API events folded in.
	ServiceEvents, SliceEvents int
}

// NewTracker returns an empty tracker for one IP family on node nodeName.
func NewTracker(logger klog.Logger, family v1.IPFamily, nodeName string) *Tracker {
	return &Tracker{
		family:          family,
		nodeName:        nodeName,
		logger:          klog.LoggerWithValues(logger, "ipFamily", family),
		pendingServices: map[types.NamespacedName]*v1.Service{},
		pendingSlices:   map[sliceKey]*discovery.EndpointSlice{},
		triggerTimes:    map[types.NamespacedName][]time.Time{},
		state: &State{
			ServicePorts: map[ServicePortName]*ServicePort{},
			Endpoints:    map[ServicePortName][]*Endpoint{},
			services:     map[types.NamespacedName]serviceEntry{},
		},
	}
}

// Family is the IP family the tracker serves.
func (t *Tracker) Family() v1.IPFamily { return t.family }

// OnServiceUpdate records a Service's new version (svc nil with old set
// means deleted). It reports whether a sync is needed.
func (t *Tracker) OnServiceUpdate(old, svc *v1.Service) bool {
	obj := svc
	if obj == nil {
		obj = old
	}
	if obj == nil {
		return false
	}
	nn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pendingServices[nn] = svc
	return true
}

// OnEndpointSliceUpdate records a slice's new version (removed true when it
// was deleted). Slices of another family, FQDN slices and slices without a
// service-name label are ignored. It reports whether a sync is needed.
func (t *Tracker) OnEndpointSliceUpdate(slice *discovery.EndpointSlice, removed bool) bool {
	fam, ok := SliceFamily(slice)
	if !ok || fam != t.family {
		return false
	}
	svc, ok := SliceServiceName(slice)
	if !ok {
		t.logger.Info("Ignoring EndpointSlice without a service-name label", "endpointSlice", klog.KObj(slice), "label", discovery.LabelServiceName)
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	key := sliceKey{service: svc, name: slice.Name}
	if removed {
		t.pendingSlices[key] = nil
	} else {
		t.pendingSlices[key] = slice
		if ts, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
			if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				t.triggerTimes[svc] = append(t.triggerTimes[svc], tt)
			}
		}
	}
	return true
}

// Pending reports how many Service and EndpointSlice changes wait for the
// next Checkout.
func (t *Tracker) Pending() (services, slices int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pendingServices), len(t.pendingSlices)
}

// Checkout folds every pending change into the state and returns it with a
// description of what changed. Bad parts of objects are logged here, once
// per change, and left out.
func (t *Tracker) Checkout() (*State, Change) {
	t.mu.Lock()
	services := t.pendingServices
	slicesPending := t.pendingSlices
	triggers := t.triggerTimes
	t.pendingServices = map[types.NamespacedName]*v1.Service{}
	t.pendingSlices = map[sliceKey]*discovery.EndpointSlice{}
	t.triggerTimes = map[types.NamespacedName][]time.Time{}
	t.mu.Unlock()

	s := t.state
	ch := Change{
		Services:          map[types.NamespacedName]bool{},
		PreviousPorts:     map[ServicePortName]*ServicePort{},
		PreviousEndpoints: map[ServicePortName][]*Endpoint{},
		TriggerTimes:      triggers,
		ServiceEvents:     len(services),
		SliceEvents:       len(slicesPending),
	}
	remember := func(nn types.NamespacedName) {
		if ch.Services[nn] {
			return
		}
		ch.Services[nn] = true
		entry := s.services[nn]
		for _, spn := range entry.portNames {
			ch.PreviousPorts[spn] = s.ServicePorts[spn]
		}
		for _, spn := range entry.endpointPorts {
			ch.PreviousEndpoints[spn] = s.Endpoints[spn]
		}
	}

	for nn, svc := range services {
		var ports map[ServicePortName]*ServicePort
		if svc != nil {
			var errs []error
			ports, errs = ServicePortsFor(svc, t.family)
			for _, err := range errs {
				t.logger.Error(err, "Ignoring invalid part of Service", "service", nn)
			}
		}
		if !t.servicePortsChanged(nn, ports) {
			continue
		}
		remember(nn)
		entry := s.services[nn]
		entry.portNames = replaceService(s.ServicePorts, entry.portNames, ports)
		s.setEntry(nn, entry)
	}

	touched := map[types.NamespacedName]bool{}
	for key, slice := range slicesPending {
		entry := s.services[key.service]
		i, found := slices.BinarySearchFunc(entry.slices, key.name, func(d sliceData, name string) int { return strings.Compare(d.name, name) })
		if slice == nil {
			if !found {
				continue
			}
			entry.slices = slices.Delete(entry.slices, i, i+1)
			if len(entry.slices) == 0 {
				entry.slices = nil
			}
			s.setEntry(key.service, entry)
			touched[key.service] = true
			continue
		}
		d, errs := parseSlice(slice, t.family, t.nodeName)
		for _, err := range errs {
			t.logger.Error(err, "Ignoring invalid part of EndpointSlice", "service", key.service)
		}
		if found {
			if entry.slices[i].equal(&d) {
				continue // a resync or a change to fields iptproxy does not use
			}
			entry.slices[i] = d
		} else {
			entry.slices = slices.Insert(entry.slices, i, d)
			s.setEntry(key.service, entry)
		}
		touched[key.service] = true
	}
	for nn := range touched {
		entry := s.services[nn]
		merged := mergeSlices(nn, entry.slices)
		if !t.endpointsChanged(nn, merged) {
			// Same endpoints, new storage (a slice's ports were
			// reordered, say): point at the new blocks anyway so the
			// old ones, which no slice holds any more, can go.
			for spn, eps := range merged {
				s.Endpoints[spn] = eps
			}
			continue
		}
		remember(nn)
		entry.endpointPorts = replaceService(s.Endpoints, entry.endpointPorts, merged)
		s.setEntry(nn, entry)
	}
	return s, ch
}

func (t *Tracker) servicePortsChanged(nn types.NamespacedName, ports map[ServicePortName]*ServicePort) bool {
	s := t.state
	old := s.services[nn].portNames
	if len(old) != len(ports) {
		return true
	}
	for _, spn := range old {
		if !s.ServicePorts[spn].Equal(ports[spn]) {
			return true
		}
	}
	return false
}

func (t *Tracker) endpointsChanged(nn types.NamespacedName, merged map[ServicePortName][]*Endpoint) bool {
	s := t.state
	old := s.services[nn].endpointPorts
	if len(old) != len(merged) {
		return true
	}
	for _, spn := range old {
		a, b := s.Endpoints[spn], merged[spn]
		if len(a) != len(b) {
			return true
		}
		for i := range a {
			if !a[i].Equal(b[i]) {
				return true
			}
		}
	}
	return false
}

// ServicePortNames returns the ports of Service nn in the state: the
// state's own index, which callers must not modify.
func (s *State) ServicePortNames(nn types.NamespacedName) []ServicePortName {
	return s.services[nn].portNames
}

// EndpointCount returns the number of endpoints across all served ports.
func (s *State) EndpointCount() int {
	n := 0
	for spn := range s.ServicePorts {
		n += len(s.Endpoints[spn])
	}
	return n
}

// replaceService replaces a Service's entries in byPort (ServicePorts or
// Endpoints), listed in old, with values; it returns the new list.
func replaceService[V any](byPort map[ServicePortName]V, old []ServicePortName, values map[ServicePortName]V) []ServicePortName {
	for _, spn := range old {
		delete(byPort, spn)
	}
	if len(values) == 0 {
		return nil
	}
	names := make([]ServicePortName, 0, len(values))
	for spn, v := range values {
		byPort[spn] = v
		names = append(names, spn)
	}
	return names
}
