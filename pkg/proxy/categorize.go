package proxy

import v1 "k8s.io/api/core/v1"

// Topology labels the node may carry.
const LabelTopologyZone = v1.LabelTopologyZone

// Categorized is the result of choosing which endpoints a Service port uses
// on this node, as kube-proxy's CategorizeEndpoints does. Its lists may
// share the storage of the endpoints given to Categorize: read-only.
type Categorized struct {
	// Cluster are the endpoints for "Cluster" traffic policy (after
	// topology filtering and the terminating fallback).
	Cluster []*Endpoint
	// Local are the endpoints on this node for "Local" traffic policy.
	Local []*Endpoint
	// Reachable is every endpoint some rule on this node may DNAT to;
	// each needs a KUBE-SEP chain.
	Reachable []*Endpoint
	// HasAny is true when the Service has usable endpoints anywhere.
	HasAny bool
	// TopologyMode is "PreferSameNode", "PreferSameZone" or "" (hints
	// ignored or absent).
	TopologyMode string
}

// Categorize picks the endpoints of sp for Cluster and Local traffic policy
// on node nodeName in zone zone: ready endpoints; serving-and-terminating
// ones only when none is ready; never not-serving ones; topology hints used
// only when every ready endpoint has one and one matches this node or zone.
func Categorize(eps []*Endpoint, sp *ServicePort, nodeName, zone string) Categorized {
	var c Categorized
	if len(eps) == 0 {
		return c
	}
	servingTerminatingFallback := false
	if sp.UsesClusterEndpoints() {
		c.TopologyMode = topologyMode(eps, nodeName, zone)
		c.Cluster = filter(eps, func(e *Endpoint) bool {
			return e.Ready && availableForTopology(e, c.TopologyMode, nodeName, zone)
		})
		if len(c.Cluster) == 0 {
			c.Cluster = filter(eps, func(e *Endpoint) bool { return e.Serving && e.Terminating })
		}
		if len(c.Cluster) > 0 {
			c.HasAny = true
		}
	}
	if !sp.UsesLocalEndpoints() {
		c.Reachable = c.Cluster
		return c
	}
	var localReady, localServingTerminating bool
	for _, e := range eps {
		if e.Ready {
			c.HasAny = true
			localReady = localReady || e.IsLocal
		} else if e.Serving && e.Terminating {
			c.HasAny = true
			localServingTerminating = localServingTerminating || e.IsLocal
		}
	}
	switch {
	case localReady:
		c.Local = filter(eps, func(e *Endpoint) bool { return e.IsLocal && e.Ready })
	case localServingTerminating:
		servingTerminatingFallback = true
		c.Local = filter(eps, func(e *Endpoint) bool { return e.IsLocal && e.Serving && e.Terminating })
	}
	if !sp.UsesClusterEndpoints() {
		c.Reachable = c.Local
		return c
	}
	if c.TopologyMode == "" && !servingTerminatingFallback {
		c.Reachable = c.Cluster
		return c
	}
	// Union of cluster and local endpoints, in endpoint order.
	in := map[*Endpoint]bool{}
	for _, e := range c.Cluster {
		in[e] = true
	}
	for _, e := range c.Local {
		in[e] = true
	}
	c.Reachable = filter(eps, func(e *Endpoint) bool { return in[e] })
	return c
}

func topologyMode(eps []*Endpoint, nodeName, zone string) string {
	hasReady, forNode, allNodeHints, forZone, allZoneHints := false, false, true, false, true
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		hasReady = true
		if len(e.NodeHints()) == 0 {
			allNodeHints = false
		} else if e.HasNodeHint(nodeName) {
			forNode = true
		}
		if len(e.ZoneHints()) == 0 {
			allZoneHints = false
		} else if e.HasZoneHint(zone) {
			forZone = true
		}
	}
	switch {
	case !hasReady:
		return ""
	case allNodeHints && forNode:
		return v1.ServiceTrafficDistributionPreferSameNode
	case allZoneHints && forZone:
		return v1.ServiceTrafficDistributionPreferSameZone
	}
	return ""
}

func availableForTopology(e *Endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case "":
		return true
	case v1.ServiceTrafficDistributionPreferSameNode:
		return e.HasNodeHint(nodeName)
	case v1.ServiceTrafficDistributionPreferSameZone:
		return e.HasZoneHint(zone)
	}
	return false
}

// filter returns the endpoints of eps that keep accepts, in order: eps
// itself when it accepts them all (the common case: no allocation), else a
// new slice.
func filter(eps []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	for i, e := range eps {
		if keep(e) {
			continue
		}
		out := make([]*Endpoint, i, len(eps)-1)
		copy(out, eps[:i])
		for _, e := range eps[i+1:] {
			if keep(e) {
				out = append(out, e)
			}
		}
		return out
	}
	return eps
}
