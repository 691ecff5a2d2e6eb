package proxy

import (
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Traffic scopes an Exclusion applies to.
const (
	// ScopeAll means no traffic to the Service port reaches the endpoint
	// from this node.
	ScopeAll = "all"
	// ScopeExternal means traffic from outside the cluster to the
	// NodePort, load-balancer IPs and external IPs does not reach the
	// endpoint (externalTrafficPolicy Local), while ClusterIP traffic may.
	// (As in kube-proxy, pods and the node itself reaching those addresses
	// are sent to the cluster-wide endpoints regardless.)
	ScopeExternal = "external"
	// ScopeInternal means ClusterIP traffic does not reach the endpoint
	// (internalTrafficPolicy Local), while external traffic may.
	ScopeInternal = "internal"
)

// Exclusion says why an endpoint is not used, for some traffic, by the
// rules of a Service port on this node.
type Exclusion struct {
	Endpoint *Endpoint
	// Scope is ScopeAll, ScopeExternal or ScopeInternal.
	Scope string
	// Reason is a short human explanation ("not ready", "terminating",
	// "topology: hinted for zone b", "on node n2; externalTrafficPolicy
	// is Local").
	Reason string
}

// Exclusions explains, for every endpoint of sp that Categorize leaves out
// for some traffic, why. It calls Categorize, so the two cannot disagree.
func Exclusions(eps []*Endpoint, sp *ServicePort, nodeName, zone string) []Exclusion {
	c := Categorize(eps, sp, nodeName, zone)
	inCluster, inLocal := set(c.Cluster), set(c.Local)
	used := func(policyLocal bool, e *Endpoint) bool {
		if policyLocal {
			return inLocal[e]
		}
		return inCluster[e]
	}
	external := sp.ExternallyAccessible()
	var out []Exclusion
	for _, e := range eps {
		internalOK := used(sp.InternalPolicyLocal, e)
		externalOK := !external || used(sp.ExternalPolicyLocal, e)
		internalWhy := reason(e, c, sp.InternalPolicyLocal, "internalTrafficPolicy", nodeName, zone)
		externalWhy := reason(e, c, sp.ExternalPolicyLocal, "externalTrafficPolicy", nodeName, zone)
		switch {
		case internalOK && externalOK:
			continue
		case !internalOK && (!external || !externalOK):
			why := internalWhy
			if external && externalWhy != internalWhy {
				why = "internal: " + internalWhy + "; external: " + externalWhy
			}
			out = append(out, Exclusion{Endpoint: e, Scope: ScopeAll, Reason: why})
		case !internalOK:
			out = append(out, Exclusion{Endpoint: e, Scope: ScopeInternal, Reason: internalWhy})
		default:
			out = append(out, Exclusion{Endpoint: e, Scope: ScopeExternal, Reason: externalWhy})
		}
	}
	return out
}

// reason explains why e is not used for traffic governed by a policy
// (policyLocal: the policy named policy is Local).
func reason(e *Endpoint, c Categorized, policyLocal bool, policy, nodeName, zone string) string {
	switch {
	case !e.Ready && e.Terminating && !e.Serving:
		return "terminating and not serving"
	case !e.Ready && e.Terminating:
		return "terminating (ready endpoints are preferred)"
	case !e.Ready:
		return "not ready"
	case policyLocal && !e.IsLocal:
		return "on node " + orUnknown(e.NodeName()) + ", not this node; " + policy + " is Local"
	}
	if !policyLocal {
		switch c.TopologyMode {
		case v1.ServiceTrafficDistributionPreferSameNode:
			if !e.HasNodeHint(nodeName) {
				return "topology: hinted for node " + strings.Join(e.NodeHints(), ",") + ", not this node (" + nodeName + ")"
			}
		case v1.ServiceTrafficDistributionPreferSameZone:
			if !e.HasZoneHint(zone) {
				return "topology: hinted for zone " + strings.Join(e.ZoneHints(), ",") + ", not this node's zone (" + orUnknown(zone) + ")"
			}
		}
	}
	return "not selected"
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func set(eps []*Endpoint) map[*Endpoint]bool {
	m := make(map[*Endpoint]bool, len(eps))
	for _, e := range eps {
		m[e] = true
	}
	return m
}

// SortExclusions orders exclusions by endpoint, for stable output.
func SortExclusions(ex []Exclusion) {
	slices.SortStableFunc(ex, func(a, b Exclusion) int { return compareEndpoints(a.Endpoint, b.Endpoint) })
}
