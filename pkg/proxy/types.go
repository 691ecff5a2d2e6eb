// Package proxy holds iptproxy's model of what a node must serve: Service
// ports and their endpoints, built from Service and EndpointSlice objects,
// and the change tracker that accumulates API events between syncs.
//
// Nothing here touches the kernel or talks to the API server; the package is
// pure and fully unit-testable.
package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"unique"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one Service, as kube-proxy does:
// the namespaced Service name, the port's name and its protocol.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String renders the name as kube-proxy does ("ns/name:port", or "ns/name"
// for an unnamed port). Chain names are hashed from this string.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// ServicePort is everything iptproxy needs to know about one port of one
// Service in one IP family.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int
	Protocol  v1.Protocol
	NodePort  int

	ExternalIPs              []netip.Addr
	LoadBalancerVIPs         []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	// FirewallEnabled is true when loadBalancerSourceRanges restrict who
	// may reach the load-balancer IPs (LoadBalancerSourceRanges may then be
	// empty: every range given was invalid, and nobody is allowed).
	FirewallEnabled     bool
	HealthCheckNodePort int

	ExternalPolicyLocal bool
	InternalPolicyLocal bool

	// SessionAffinityClientIP is true for sessionAffinity: ClientIP, with
	// StickyMaxAgeSeconds the affinity timeout.
	SessionAffinityClientIP bool
	StickyMaxAgeSeconds     int
}

// ExternallyAccessible reports whether the port is reachable other than by
// its ClusterIP (NodePort, LoadBalancer or external IPs).
func (sp *ServicePort) ExternallyAccessible() bool {
	return sp.NodePort != 0 || len(sp.LoadBalancerVIPs) != 0 || len(sp.ExternalIPs) != 0
}

// UsesClusterEndpoints reports whether some traffic to the port is sent to
// endpoints on any node.
func (sp *ServicePort) UsesClusterEndpoints() bool {
	return !sp.InternalPolicyLocal || sp.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether some traffic to the port is sent only
// to endpoints on this node.
func (sp *ServicePort) UsesLocalEndpoints() bool {
	return sp.InternalPolicyLocal || (sp.ExternalPolicyLocal && sp.ExternallyAccessible())
}

// Equal reports whether two ServicePorts would render the same rules.
func (sp *ServicePort) Equal(o *ServicePort) bool {
	if sp == nil || o == nil {
		return sp == o
	}
	return sp.Name == o.Name && sp.ClusterIP == o.ClusterIP && sp.Port == o.Port &&
		sp.Protocol == o.Protocol && sp.NodePort == o.NodePort &&
		slices.Equal(sp.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(sp.LoadBalancerVIPs, o.LoadBalancerVIPs) &&
		slices.Equal(sp.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) &&
		sp.FirewallEnabled == o.FirewallEnabled &&
		sp.HealthCheckNodePort == o.HealthCheckNodePort &&
		sp.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		sp.InternalPolicyLocal == o.InternalPolicyLocal &&
		sp.SessionAffinityClientIP == o.SessionAffinityClientIP &&
		sp.StickyMaxAgeSeconds == o.StickyMaxAgeSeconds
}

// Endpoint is one backend of one Service port. The tracker shares
// Endpoints between syncs: treat them as read-only.
type Endpoint struct {
	IP netip.Addr

	// place says where the endpoint runs (see NodeName and Zone); one
	// pointer, shared by every endpoint on the same node.
	place unique.Handle[Place]

	// Hints are the endpoint's topology hints; nil when the slice gave
	// none. Endpoints of one slice with the same hints share them.
	Hints *TopologyHints

	Port uint16

	// IsLocal is true when the endpoint runs on this node.
	IsLocal bool

	Ready       bool
	Serving     bool
	Terminating bool
}

// Place is where an endpoint runs: its node and zone, as the slice gave
// them (empty when not given).
type Place struct {
	NodeName string
	Zone     string
}

// NodeName is the node the endpoint runs on ("" when not given):
// informational, and for explaining why an endpoint was left out.
func (e *Endpoint) NodeName() string { return e.Place().NodeName }

// Zone is the zone the endpoint runs in ("" when not given).
func (e *Endpoint) Zone() string { return e.Place().Zone }

// Place is where the endpoint runs.
func (e *Endpoint) Place() Place {
	if e.place == (unique.Handle[Place]{}) {
		return Place{}
	}
	return e.place.Value()
}

// SetPlace records where the endpoint runs.
func (e *Endpoint) SetPlace(p Place) {
	if p == (Place{}) {
		e.place = unique.Handle[Place]{}
		return
	}
	e.place = unique.Make(p)
}

// TopologyHints are the zones and nodes an endpoint is hinted for, each
// list sorted.
type TopologyHints struct {
	ForZones []string
	ForNodes []string
}

// String renders the endpoint as "ip:port" ("[ip]:port" for IPv6), the form
// DNAT takes and endpoint chain names are hashed from.
func (e *Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, e.Port).String()
}

// Equal reports whether two endpoints would render the same rules.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.IP == o.IP && e.Port == o.Port && e.place == o.place &&
		e.IsLocal == o.IsLocal && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.Hints.equal(o.Hints)
}

// ZoneHints returns the zones the endpoint is hinted for (nil when none).
func (e *Endpoint) ZoneHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.ForZones
}

// NodeHints returns the nodes the endpoint is hinted for (nil when none).
func (e *Endpoint) NodeHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.ForNodes
}

// HasZoneHint reports whether zone is among the endpoint's zone hints.
func (e *Endpoint) HasZoneHint(zone string) bool { return slices.Contains(e.ZoneHints(), zone) }

// HasNodeHint reports whether node is among the endpoint's node hints.
func (e *Endpoint) HasNodeHint(node string) bool { return slices.Contains(e.NodeHints(), node) }

func (h *TopologyHints) equal(o *TopologyHints) bool {
	if h == nil || o == nil {
		return h == o
	}
	return h == o || (slices.Equal(h.ForZones, o.ForZones) && slices.Equal(h.ForNodes, o.ForNodes))
}

// portString is strconv.Itoa for ports, kept here so callers read clearly.
func portString(p int) string { return strconv.Itoa(p) }

// InvalidError describes a part of an API object that was skipped.
type InvalidError struct {
	Object string
	Field  string
	Value  string
	Reason string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("%s: skipping %s %q: %s", e.Object, e.Field, e.Value, e.Reason)
}
