package proxy

import (
	"bytes"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// sliceData is what iptproxy keeps of one EndpointSlice: its ports and its
// endpoints, already parsed and checked.
type sliceData struct {
	// name is the EndpointSlice's name.
	name  string
	ports []slicePort
	// endpoints are the slice's endpoints in "ip:port" order, one per IP
	// (duplicates resolved as across slices, see sortAndDedup), with Port
	// set to ports[0]'s number (0 when the slice has no valid port). A
	// Service port served at that number points into this block.
	endpoints []Endpoint
}

type slicePort struct {
	name     string
	protocol v1.Protocol
	port     uint16
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

// equal reports whether d and o hold the same ports and endpoints.
func (d *sliceData) equal(o *sliceData) bool {
	return d.name == o.name && slices.Equal(d.ports, o.ports) &&
		slices.EqualFunc(d.endpoints, o.endpoints, func(a, b Endpoint) bool { return a.Equal(&b) })
}

// parseSlice converts an EndpointSlice of the given family. Bad endpoints
// and ports are left out and described in the returned errors.
func parseSlice(slice *discovery.EndpointSlice, family v1.IPFamily, nodeName string) (sliceData, []error) {
	obj := "EndpointSlice " + slice.Namespace + "/" + slice.Name
	var errs []error
	bad := func(field, value, reason string) {
		errs = append(errs, &InvalidError{Object: obj, Field: field, Value: value, Reason: reason})
	}
	d := sliceData{name: slice.Name}
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
		if d.ports == nil {
			d.ports = make([]slicePort, 0, len(slice.Ports))
		}
		d.ports = append(d.ports, slicePort{name: *p.Name, port: uint16(*p.Port), protocol: proto})
	}
	var port uint16
	if len(d.ports) > 0 {
		port = d.ports[0].port
	}
	var hints hintSet
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
			Port:        port,
			Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
			Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
			Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		}
		var place Place
		if ep.NodeName != nil {
			place.NodeName = *ep.NodeName
			e.IsLocal = nodeName != "" && place.NodeName == nodeName
		}
		if ep.Zone != nil {
			place.Zone = *ep.Zone
		}
		e.SetPlace(place)
		if ep.Hints != nil {
			e.Hints = hints.get(ep.Hints)
		}
		if d.endpoints == nil {
			d.endpoints = make([]Endpoint, 0, len(slice.Endpoints))
		}
		d.endpoints = append(d.endpoints, e)
	}
	d.endpoints = sortAndDedup(d.endpoints)
	return d, errs
}

// hintSet shares one *TopologyHints among the endpoints of a slice that
// carry the same hints (typically every endpoint of a zone).
type hintSet []*TopologyHints

// maxSharedHints bounds the linear search for hints to share.
const maxSharedHints = 8

func (hs *hintSet) get(h *discovery.EndpointHints) *TopologyHints {
	if len(h.ForZones) == 0 && len(h.ForNodes) == 0 {
		return nil
	}
	th := &TopologyHints{}
	for _, z := range h.ForZones {
		th.ForZones = append(th.ForZones, z.Name)
	}
	for _, n := range h.ForNodes {
		th.ForNodes = append(th.ForNodes, n.Name)
	}
	slices.Sort(th.ForZones)
	slices.Sort(th.ForNodes)
	for _, seen := range *hs {
		if seen.equal(th) {
			return seen
		}
	}
	if len(*hs) < maxSharedHints {
		*hs = append(*hs, th)
	}
	return th
}

// portSource is one slice's contribution to one Service port: the slice's
// endpoints, served at port.
type portSource struct {
	spn       ServicePortName
	endpoints []Endpoint
	port      uint16
}

// mergeSlices builds the endpoints of every port of a Service from all its
// slices (sorted by name). An endpoint listed in several slices is kept
// once; as in kube-proxy, a non-terminating copy wins over a terminating
// one. Endpoints are sorted by "ip:port", the order kube-proxy writes them
// in. A port fed by one slice points into that slice's endpoints when it
// is served at the slice's first port number, else into one copied block;
// a port fed by several slices gets one merged block.
func mergeSlices(svc types.NamespacedName, bySlice []sliceData) map[ServicePortName][]*Endpoint {
	var sources []portSource
	for i := range bySlice {
		d := &bySlice[i]
		if len(d.endpoints) == 0 {
			continue
		}
		for _, p := range d.ports {
			spn := ServicePortName{NamespacedName: svc, Port: p.name, Protocol: p.protocol}
			sources = append(sources, portSource{spn: spn, endpoints: d.endpoints, port: p.port})
		}
	}
	if len(sources) == 0 {
		return nil
	}
	out := make(map[ServicePortName][]*Endpoint, len(sources))
	if len(sources) == 1 {
		out[sources[0].spn] = pointers(atPort(sources[0].endpoints, sources[0].port))
		return out
	}
	// Group sources by port, keeping slice order within each group.
	groups := make(map[ServicePortName][]portSource, len(sources))
	for _, src := range sources {
		groups[src.spn] = append(groups[src.spn], src)
	}
	for spn, group := range groups {
		if len(group) == 1 {
			out[spn] = pointers(atPort(group[0].endpoints, group[0].port))
			continue
		}
		n := 0
		for _, src := range group {
			n += len(src.endpoints)
		}
		block := make([]Endpoint, 0, n)
		for _, src := range group {
			start := len(block)
			block = append(block, src.endpoints...)
			for i := start; i < len(block); i++ {
				block[i].Port = src.port
			}
		}
		out[spn] = pointers(sortAndDedup(block))
	}
	return out
}

// atPort returns eps served at port: eps itself when it already is, else a
// copy.
func atPort(eps []Endpoint, port uint16) []Endpoint {
	if len(eps) == 0 || eps[0].Port == port {
		return eps
	}
	out := slices.Clone(eps)
	for i := range out {
		out[i].Port = port
	}
	return out
}

func pointers(eps []Endpoint) []*Endpoint {
	out := make([]*Endpoint, len(eps))
	for i := range eps {
		out[i] = &eps[i]
	}
	return out
}

// sortAndDedup sorts eps in "ip:port" order and keeps one endpoint per
// ip:port, reusing eps' storage. Of several copies (in the order given),
// the last one not terminating wins, else the first: kube-proxy's rule that
// a non-terminating copy wins over a terminating one.
func sortAndDedup(eps []Endpoint) []Endpoint {
	if len(eps) < 2 {
		return eps
	}
	slices.SortStableFunc(eps, func(a, b Endpoint) int { return compareEndpoints(&a, &b) })
	out := eps[:0]
	for i := 0; i < len(eps); {
		j, win := i+1, i
		for ; j < len(eps) && eps[j].IP == eps[i].IP && eps[j].Port == eps[i].Port; j++ {
			if !eps[j].Terminating {
				win = j
			}
		}
		out = append(out, eps[win])
		i = j
	}
	clear(eps[len(out):])
	return out
}

// compareEndpoints orders endpoints as cmp.Compare(a.String(), b.String())
// does, without allocating. Two different addresses are ordered by their
// text up to the first difference; when one text is a prefix of the other,
// the character that follows it in "ip:port" (':' for IPv4, ']' for IPv6)
// decides, so the port never matters unless the addresses are equal.
func compareEndpoints(a, b *Endpoint) int {
	if a.IP == b.IP {
		if a.Port == b.Port {
			return 0
		}
		var pa, pb [5]byte
		return bytes.Compare(strconv.AppendUint(pa[:0], uint64(a.Port), 10), strconv.AppendUint(pb[:0], uint64(b.Port), 10))
	}
	var ka, kb [48]byte
	return bytes.Compare(addrOrderKey(ka[:0], a.IP), addrOrderKey(kb[:0], b.IP))
}

// addrOrderKey appends ip's text as it appears in "ip:port", followed by the
// character after it (the common "[" of IPv6 is left out).
func addrOrderKey(b []byte, ip netip.Addr) []byte {
	b = ip.AppendTo(b)
	if ip.Is4() {
		return append(b, ':')
	}
	return append(b, ']')
}
