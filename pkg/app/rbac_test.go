package app

// A static check of deploy/base/rbac.yaml against what this package does
// with the API.

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// permission is one verb on one resource of one API group.
type permission struct{ group, resource, verb string }

// daemonPermissions returns everything the daemon does with the API
// (pkg/app): it lists and watches Services and EndpointSlices (informers),
// gets, lists and watches its own Node (startup and the node watch), and
// writes Events through the events.k8s.io recorder. optional are grants
// that are tolerated without being needed: Events in the core group, for
// recorders that fall back to it.
func daemonPermissions() (needed, optional map[permission]bool) {
	needed, optional = map[permission]bool{}, map[permission]bool{}
	add := func(to map[permission]bool, group, resource string, verbs ...string) {
		for _, v := range verbs {
			to[permission{group, resource, v}] = true
		}
	}
	add(needed, "", "services", "list", "watch")
	add(needed, "discovery.k8s.io", "endpointslices", "list", "watch")
	add(needed, "", "nodes", "get", "list", "watch")
	add(needed, "events.k8s.io", "events", "create", "patch", "update")
	add(optional, "", "events", "create", "patch", "update")
	return needed, optional
}

// parityExcess are grants the daemon does not use, kept on purpose: the
// role is a copy of kube-proxy's bootstrap ClusterRole system:node-proxier
// (hack/verify-manifests.sh enforces the copy), which lets kube-proxy read
// Endpoints and ServiceCIDRs. They are reported by the test, not failed;
// dropping them means changing the role and that script together.
var parityExcess = map[permission]bool{
	{"", "endpoints", "list"}:                      true,
	{"", "endpoints", "watch"}:                     true,
	{"networking.k8s.io", "servicecidrs", "list"}:  true,
	{"networking.k8s.io", "servicecidrs", "watch"}: true,
}

// TestRBACGrantsOnlyWhatTheDaemonUses reads deploy/base/rbac.yaml and checks
// that its ClusterRole grants nothing beyond reading what the daemon reads
// and writing events (no wildcard, no write on anything else, no
// resourceNames tricks needed), and everything the daemon needs.
func TestRBACGrantsOnlyWhatTheDaemonUses(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "base", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var roles []rbacv1.ClusterRole
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("parsing rbac.yaml: %v", err)
		}
		switch meta.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(doc, &r); err != nil {
				t.Fatalf("parsing ClusterRole: %v", err)
			}
			roles = append(roles, r)
		case "Role":
			t.Errorf("rbac.yaml holds a namespaced Role; the daemon needs none")
		}
	}
	if len(roles) != 1 {
		t.Fatalf("rbac.yaml holds %d ClusterRoles, want 1", len(roles))
	}
	needed, optional := daemonPermissions()
	granted := map[permission]bool{}
	for _, rule := range roles[0].Rules {
		if len(rule.NonResourceURLs) > 0 {
			t.Errorf("rule %+v grants non-resource URLs", rule)
		}
		for _, g := range rule.APIGroups {
			for _, r := range rule.Resources {
				for _, v := range rule.Verbs {
					p := permission{g, r, v}
					if g == "*" || r == "*" || v == "*" {
						t.Errorf("wildcard grant %+v", p)
						continue
					}
					granted[p] = true
					switch {
					case needed[p] || optional[p]:
					case parityExcess[p]:
						t.Logf("grants %q on %q (group %q): unused, kept for parity with system:node-proxier", v, r, g)
					default:
						t.Errorf("grants %q on %q (group %q), which the daemon never does", v, r, g)
					}
				}
			}
		}
	}
	var missing []permission
	for p := range needed {
		if !granted[p] {
			missing = append(missing, p)
		}
	}
	slices.SortFunc(missing, func(a, b permission) int {
		return bytes.Compare([]byte(a.group+a.resource+a.verb), []byte(b.group+b.resource+b.verb))
	})
	for _, p := range missing {
		t.Errorf("does not grant %q on %q (group %q), which the daemon needs", p.verb, p.resource, p.group)
	}
}
