package proxy

import (
	"cmp"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// sliceData is what iptproxy keeps of one EndpointSlice: its ports and its
// endpoints, already parsed and checked.
type sliceData struct {
	ports     []slicePort
	endpoints []Endpoint // Port unset: filled in per slice port
}

type slicePort struct {
	name     string
	port     int
	protocol v1.Protocol
}

// SliceServiceName returns the Service an EndpointSlice belongs to; ok is
// false when the slice has no service-name label.
func SliceServiceName(slice *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := slice.Labels[discovery.LabelServiceName]
	if name == "" || slice.Namespace == "" || slice.Name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: slice.Namespace, Name: name}, true
}

// SliceFamily maps a slice's address type to the IP family it serves; ok is
// false for FQDN slices, which iptproxy ignores.
func SliceFamily(slice *discovery.EndpointSlice) (v1.IPFamily, bool) {
	switch slice.AddressType {
	case discovery.AddressTypeIPv4:
		return v1.IPv4Protocol, true
	case discovery.AddressTypeIPv6:
		return v1.IPv6Protocol, true
	}
	return "", false
}

// parseSlice converts an EndpointSlice of the given family. Bad endpoints
// and ports are left out and described in the returned errors.
func parseSlice(slice *discovery.EndpointSlice, family v1.IPFamily, nodeName string) (*sliceData, []error) {
	obj := "EndpointSlice " + slice.Namespace + "/" + slice.Name
	var errs []error
	bad := func(field, value, reason string) {
		errs = append(errs, &InvalidError{Object: obj, Field: field, Value: value, Reason: reason})
	}
	d := &sliceData{}
	for _, p := range slice.Ports {
		if p.Name == nil {
			// As kube-proxy: an unnamed port has the name "", never none.
			bad("ports.name", "<nil>", "missing")
			continue
		}
		if p.Port == nil || !validPort(*p.Port) {
			v := "<nil>"
			if p.Port != nil {
				v = portString(int(*p.Port))
			}
			bad("ports.port", v, "out of range 1-65535")
			continue
		}
		var proto v1.Protocol
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		proto, ok := normalizeProtocol(proto)
		if !ok {
			bad("ports.protocol", string(*p.Protocol), "unsupported protocol")
			continue
		}
		d.ports = append(d.ports, slicePort{name: *p.Name, port: int(*p.Port), protocol: proto})
	}
	for i := range slice.Endpoints {
		ep := &slice.Endpoints[i]
		if len(ep.Addresses) == 0 {
			bad("endpoints.addresses", "", "empty")
			continue
		}
		ip, reason := ParseServingIP(ep.Addresses[0])
		if reason != "" {
			bad("endpoints.addresses", ep.Addresses[0], reason)
			continue
		}
		if FamilyOf(ip) != family || (family == v1.IPv6Protocol && strings.Contains(ep.Addresses[0], ".")) {
			bad("endpoints.addresses", ep.Addresses[0], "not an "+string(family)+" address")
			continue
		}
		if !ip.IsGlobalUnicast() && !ip.IsPrivate() && !ip.IsLoopback() {
			bad("endpoints.addresses", ep.Addresses[0], "not a unicast address")
			continue
		}
		e := Endpoint{
			IP:          ip,
			Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
			Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
			Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		}
		if ep.NodeName != nil {
			e.NodeName = *ep.NodeName
			e.IsLocal = nodeName != "" && e.NodeName == nodeName
		}
		if ep.Zone != nil {
			e.Zone = *ep.Zone
		}
		if ep.Hints != nil {
			for _, z := range ep.Hints.ForZones {
				e.ZoneHints = append(e.ZoneHints, z.Name)
			}
			for _, n := range ep.Hints.ForNodes {
				e.NodeHints = append(e.NodeHints, n.Name)
			}
			slices.Sort(e.ZoneHints)
			slices.Sort(e.NodeHints)
		}
		d.endpoints = append(d.endpoints, e)
	}
	return d, errs
}

// mergeSlices builds the endpoints of every port of a Service from all its
// slices. An endpoint listed in several slices is kept once; as in
// kube-proxy, a non-terminating copy wins over a terminating one. Endpoints
// are sorted by "ip:port", the order kube-proxy writes them in.
func mergeSlices(svc types.NamespacedName, slicesByName map[string]*sliceData) map[ServicePortName][]*Endpoint {
	byPort := map[ServicePortName]map[string]*Endpoint{}
	// Iterate slices in name order so duplicates resolve deterministically.
	names := make([]string, 0, len(slicesByName))
	for n := range slicesByName {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		d := slicesByName[n]
		for _, p := range d.ports {
			spn := ServicePortName{NamespacedName: svc, Port: p.name, Protocol: p.protocol}
			set := byPort[spn]
			if set == nil {
				set = map[string]*Endpoint{}
				byPort[spn] = set
			}
			for i := range d.endpoints {
				e := d.endpoints[i]
				e.Port = p.port
				key := e.String()
				if _, exists := set[key]; !exists || !e.Terminating {
					set[key] = &e
				}
			}
		}
	}
	out := make(map[ServicePortName][]*Endpoint, len(byPort))
	for spn, set := range byPort {
		if len(set) == 0 {
			continue
		}
		eps := make([]*Endpoint, 0, len(set))
		for _, e := range set {
			eps = append(eps, e)
		}
		slices.SortFunc(eps, func(a, b *Endpoint) int { return cmp.Compare(a.String(), b.String()) })
		out[spn] = eps
	}
	return out
}
