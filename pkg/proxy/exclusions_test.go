package proxy

import "testing"

func TestExclusions(t *testing.T) {
	cluster := &ServicePort{}
	itpLocal := &ServicePort{InternalPolicyLocal: true}
	etpLocal := &ServicePort{ExternalPolicyLocal: true, NodePort: 30000}
	bothLocal := &ServicePort{InternalPolicyLocal: true, ExternalPolicyLocal: true, NodePort: 30000}
	onNode := func(n string) func(*Endpoint) { return func(e *Endpoint) { e.SetPlace(Place{NodeName: n}) } }
	type want struct{ scope, reason string }
	tests := []struct {
		name string
		sp   *ServicePort
		eps  []*Endpoint
		want map[string]want // by IP; endpoints not listed are used for all traffic
	}{
		{"all used", cluster, []*Endpoint{ep("10.0.0.1"), ep("10.0.0.2")}, nil},
		{"not ready", cluster, []*Endpoint{ep("10.0.0.1"), ep("10.0.0.2", notReady)},
			map[string]want{"10.0.0.2": {ScopeAll, "not ready"}}},
		{"terminating while ready ones exist", cluster, []*Endpoint{ep("10.0.0.1"), ep("10.0.0.2", terminating)},
			map[string]want{"10.0.0.2": {ScopeAll, "terminating (ready endpoints are preferred)"}}},
		{"terminating fallback is used", cluster, []*Endpoint{ep("10.0.0.1", terminating), ep("10.0.0.2", notServing)},
			map[string]want{"10.0.0.2": {ScopeAll, "terminating and not serving"}}},
		{"other zone", cluster, []*Endpoint{ep("10.0.0.1", zone("a")), ep("10.0.0.2", zone("b"))},
			map[string]want{"10.0.0.2": {ScopeAll, "topology: hinted for zone b, not this node's zone (a)"}}},
		{"internalTrafficPolicy Local, other node", itpLocal, []*Endpoint{ep("10.0.0.1", local), ep("10.0.0.2", onNode("node-b"))},
			map[string]want{"10.0.0.2": {ScopeAll, "on node node-b, not this node; internalTrafficPolicy is Local"}}},
		{"externalTrafficPolicy Local, other node", etpLocal, []*Endpoint{ep("10.0.0.1", local), ep("10.0.0.2", onNode("node-b"))},
			map[string]want{"10.0.0.2": {ScopeExternal, "on node node-b, not this node; externalTrafficPolicy is Local"}}},
		{"external local terminating", etpLocal, []*Endpoint{ep("10.0.0.1", local, terminating), ep("10.0.0.2", onNode("node-b"))},
			map[string]want{
				"10.0.0.1": {ScopeInternal, "terminating (ready endpoints are preferred)"},
				"10.0.0.2": {ScopeExternal, "on node node-b, not this node; externalTrafficPolicy is Local"},
			}},
		{"both Local, other node", bothLocal, []*Endpoint{ep("10.0.0.2", onNode("node-b"))},
			map[string]want{"10.0.0.2": {ScopeAll, "internal: on node node-b, not this node; internalTrafficPolicy is Local; external: on node node-b, not this node; externalTrafficPolicy is Local"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]want{}
			for _, x := range Exclusions(tc.eps, tc.sp, "node-a", "a") {
				got[x.Endpoint.IP.String()] = want{x.Scope, x.Reason}
			}
			if len(got) != len(tc.want) {
				t.Errorf("exclusions %v, want %v", got, tc.want)
			}
			for ip, w := range tc.want {
				if got[ip] != w {
					t.Errorf("%s: %+v, want %+v", ip, got[ip], w)
				}
			}
			// Consistency with Categorize: an endpoint excluded from all
			// traffic has no rules (unless externalTrafficPolicy Local
			// short-circuits in-cluster sources to the cluster
			// endpoints); one used by all has.
			c := Categorize(tc.eps, tc.sp, "node-a", "a")
			reach := set(c.Reachable)
			for _, e := range tc.eps {
				if w, ok := got[e.IP.String()]; ok && w.scope == ScopeAll && reach[e] && !tc.sp.ExternalPolicyLocal {
					t.Errorf("%s excluded from all traffic but reachable", e.IP)
				}
				if _, ok := got[e.IP.String()]; !ok && !reach[e] {
					t.Errorf("%s not excluded but unreachable", e.IP)
				}
			}
		})
	}
}
