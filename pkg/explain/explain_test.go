package explain_test

import (
	"math"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

func testConfig() rules.Config {
	return rules.Config{
		Family:        v1.IPv4Protocol,
		NodeName:      "node-a",
		Zone:          "zone-a",
		NodeIPs:       []netip.Addr{netip.MustParseAddr("10.0.0.1")},
		MasqueradeBit: 14,
		LocalTraffic:  rules.LocalTraffic{IfLocal: []string{"-s", "10.244.0.0/16"}, IfNotLocal: []string{"!", "-s", "10.244.0.0/16"}},
	}
}

// fixtureModel renders testdata/cluster.yaml for node-a.
func fixtureModel(t *testing.T) *explain.Model {
	t.Helper()
	logger, ctx := ktesting.NewTestContext(t)
	objs, err := explain.LoadFiles([]string{"testdata/cluster.yaml"}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if objs.Node == nil || len(objs.Services) != 3 || len(objs.Slices) != 2 {
		t.Fatalf("loaded node %v, %d Services, %d slices; want node-a, 3, 2", objs.Node != nil, len(objs.Services), len(objs.Slices))
	}
	m, err := explain.Build(ctx, logger, objs, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func pkt(src, dst string, port int, in string) trace.Packet {
	p := trace.Packet{Protocol: "tcp", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), DstPort: port, InInterface: in}
	p.Local = in == ""
	return p
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

// TestRenderThenTrace renders the fixture (through the daemon's proxier
// into the fake), reloads the rendered payload the way "trace --rules"
// does, and checks where packets go in both.
func TestRenderThenTrace(t *testing.T) {
	m := fixtureModel(t)
	logger, ctx := ktesting.NewTestContext(t)
	reloaded, err := explain.LoadRules(ctx, logger, m.Payload(), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	node := trace.Node{LocalAddrs: m.Config.NodeIPs}
	third := 1.0 / 3
	tests := []struct {
		name    string
		pkt     trace.Packet
		verdict string
		dests   map[string]float64
		masq    float64 // probability of masquerade
	}{
		{
			name:    "ClusterIP balanced over 3 ready endpoints",
			pkt:     pkt("10.244.1.50", "172.30.0.10", 80, "cbr0"),
			verdict: explain.VerdictAccepted,
			dests:   map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third},
			masq:    0,
		},
		{
			name:    "no endpoints: rejected",
			pkt:     pkt("10.244.1.50", "172.30.0.11", 80, "cbr0"),
			verdict: explain.VerdictRejected,
			dests:   map[string]float64{"REJECT": 1},
		},
		{
			name:    "Local policy without local endpoint: dropped",
			pkt:     pkt("198.18.0.1", "203.0.113.12", 80, "eth0"),
			verdict: explain.VerdictDropped,
			dests:   map[string]float64{"DROP": 1},
		},
		{
			name:    "not a Service",
			pkt:     pkt("10.244.1.50", "10.244.2.99", 443, "cbr0"),
			verdict: explain.VerdictNotService,
			dests:   map[string]float64{"10.244.2.99:443": 1},
		},
		{
			name:    "NodePort from outside is masqueraded",
			pkt:     pkt("198.18.0.1", "10.0.0.1", 30080, "eth0"),
			verdict: explain.VerdictAccepted,
			dests:   map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third},
			masq:    1,
		},
		{
			name:    "ClusterIP from outside the cluster is masqueraded",
			pkt:     pkt("198.18.0.1", "172.30.0.10", 80, "eth0"),
			verdict: explain.VerdictAccepted,
			dests:   map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third},
			masq:    1,
		},
	}
	for _, tc := range tests {
		for name, rs := range map[string]*explain.Model{"rendered": m, "reloaded": {Tables: reloaded}} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				r, err := explain.Trace(rs.Tables, node, tc.pkt)
				if err != nil {
					t.Fatal(err)
				}
				if r.Verdict != tc.verdict {
					t.Errorf("verdict %q, want %q", r.Verdict, tc.verdict)
				}
				got := map[string]float64{}
				masq := 0.0
				for _, tg := range r.Targets {
					got[tg.Destination] += tg.Probability
					masq += tg.Probability * tg.Masqueraded
				}
				if len(got) != len(tc.dests) {
					t.Errorf("destinations %v, want %v", got, tc.dests)
				}
				for d, p := range tc.dests {
					if !near(got[d], p) {
						t.Errorf("P(%s) = %v, want %v (all: %v)", d, got[d], p, got)
					}
				}
				if !near(masq, tc.masq) {
					t.Errorf("P(masquerade) = %v, want %v", masq, tc.masq)
				}
				if len(r.Paths) == 0 || len(r.Paths[0].Steps) == 0 {
					t.Errorf("no path steps: %+v", r.Paths)
				}
			})
		}
	}
}

func TestShowService(t *testing.T) {
	m := fixtureModel(t)
	tests := []struct {
		svc string
		// endpoints in use with their probability per entry kind
		use map[string]map[string]float64
		// left-out endpoints: address -> scope + reason
		leftOut map[string][2]string
		entries map[string]string // kind -> verdict
	}{
		{
			svc: "shop/web",
			use: map[string]map[string]float64{
				"10.244.1.11:8080": {explain.EntryClusterIP: 1.0 / 3, explain.EntryNodePort: 1.0 / 3},
				"10.244.2.12:8080": {explain.EntryClusterIP: 1.0 / 3, explain.EntryNodePort: 1.0 / 3},
				"10.244.3.13:8080": {explain.EntryClusterIP: 1.0 / 3, explain.EntryNodePort: 1.0 / 3},
			},
			leftOut: map[string][2]string{
				"10.244.3.14:8080": {"all", "not ready"},
				"10.244.2.15:8080": {"all", "terminating (ready endpoints are preferred)"},
			},
			entries: map[string]string{explain.EntryClusterIP: explain.VerdictAccepted, explain.EntryNodePort: explain.VerdictAccepted},
		},
		{
			svc:     "shop/empty",
			entries: map[string]string{explain.EntryClusterIP: explain.VerdictRejected},
		},
		{
			svc: "shop/local",
			use: map[string]map[string]float64{
				"10.244.2.21:8080": {explain.EntryClusterIP: 1},
			},
			leftOut: map[string][2]string{
				"10.244.2.21:8080": {"external", "on node node-b, not this node; externalTrafficPolicy is Local"},
			},
			entries: map[string]string{
				explain.EntryClusterIP:    explain.VerdictAccepted,
				explain.EntryNodePort:     explain.VerdictDropped,
				explain.EntryLoadBalancer: explain.VerdictDropped,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.svc, func(t *testing.T) {
			ns, name, _ := cut(tc.svc)
			r, err := explain.ShowService([]*explain.Model{m}, types.NamespacedName{Namespace: ns, Name: name})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Ports) != 1 {
				t.Fatalf("%d ports, want 1", len(r.Ports))
			}
			p := r.Ports[0]
			kinds := map[string]int{}
			for i, e := range p.Entries {
				kinds[e.Kind] = i
				if want, ok := tc.entries[e.Kind]; !ok || want != e.Verdict {
					t.Errorf("entry %s %s: verdict %q, want %q", e.Kind, e.Address, e.Verdict, want)
				}
			}
			if len(p.Entries) != len(tc.entries) {
				t.Errorf("entries %+v, want %v", p.Entries, tc.entries)
			}
			if len(p.Endpoints) != len(tc.use) {
				t.Errorf("endpoints %+v, want %v", p.Endpoints, tc.use)
			}
			for _, ep := range p.Endpoints {
				want := tc.use[ep.Address]
				for kind, i := range kinds {
					if !near(ep.Probability[i], want[kind]) {
						t.Errorf("%s via %s: p=%v, want %v", ep.Address, kind, ep.Probability[i], want[kind])
					}
				}
			}
			if len(p.LeftOut) != len(tc.leftOut) {
				t.Errorf("left out %+v, want %v", p.LeftOut, tc.leftOut)
			}
			for _, l := range p.LeftOut {
				if want := tc.leftOut[l.Address]; want != [2]string{l.Scope, l.Reason} {
					t.Errorf("left out %s: %s %q, want %v", l.Address, l.Scope, l.Reason, want)
				}
			}
			if len(p.Chains) == 0 {
				t.Errorf("no chains")
			}
		})
	}
	if _, err := explain.ShowService([]*explain.Model{m}, types.NamespacedName{Namespace: "shop", Name: "nope"}); err == nil {
		t.Errorf("showing a missing Service: no error")
	}
}

func TestDiff(t *testing.T) {
	logger, ctx := ktesting.NewTestContext(t)
	m := fixtureModel(t)
	objs, err := explain.LoadFiles([]string{"testdata/cluster.yaml"}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	without := func(name string) *explain.Objects {
		o := &explain.Objects{Node: objs.Node, Slices: objs.Slices}
		for _, s := range objs.Services {
			if s.Name != name {
				o.Services = append(o.Services, s)
			}
		}
		return o
	}
	// A Service the API no longer has, with endpoints, still in the kernel.
	staleSvc, staleSlice := objs.Services[0].DeepCopy(), objs.Slices[0].DeepCopy()
	staleSvc.Name, staleSvc.Spec.ClusterIP, staleSvc.Spec.ClusterIPs = "gone", "172.30.0.99", []string{"172.30.0.99"}
	staleSvc.Spec.Ports[0].NodePort = 30099
	staleSlice.Name, staleSlice.Labels["kubernetes.io/service-name"] = "gone-1", "gone"
	extra := &explain.Objects{Node: objs.Node,
		Services: append(objs.Services[:len(objs.Services):len(objs.Services)], staleSvc),
		Slices:   append(objs.Slices[:len(objs.Slices):len(objs.Slices)], staleSlice)}
	tests := []struct {
		name                    string
		kernel                  *explain.Objects
		added, changed, removed bool
	}{
		{name: "kernel up to date", kernel: objs},
		{name: "Service missing from the kernel", kernel: without("web"), added: true, changed: true},
		{name: "stale Service in the kernel", kernel: extra, changed: true, removed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			km, err := explain.Build(ctx, logger, tc.kernel, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			saves := map[iptables.Table][]byte{}
			for _, tb := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
				saves[tb] = km.Tables.Save(string(tb))
			}
			d := explain.Diff(m.Desired, saves)
			var added, changed, removed int
			for _, td := range d.Tables {
				added += len(td.Added)
				changed += len(td.Changed)
				removed += len(td.Removed)
			}
			if (added > 0) != tc.added || (changed > 0) != tc.changed || (removed > 0) != tc.removed {
				t.Errorf("added %d, changed %d, removed %d; want some: %v, %v, %v (%+v)", added, changed, removed, tc.added, tc.changed, tc.removed, d.Tables)
			}
			// Applying the plan's payload brings the kernel to the desired
			// state: a second diff is empty.
			if d.Empty() {
				return
			}
			fake, err := explain.BaseTables(ctx, logger, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			for _, tb := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
				if err := fake.Restore(ctx, km.Tables.Save(string(tb))); err != nil {
					t.Fatal(err)
				}
			}
			if err := fake.Restore(ctx, []byte(d.Payload)); err != nil {
				t.Fatalf("applying the diff: %v", err)
			}
			for _, tb := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
				saves[tb], _ = fake.Save(ctx, tb)
			}
			if d2 := explain.Diff(m.Desired, saves); !d2.Empty() {
				t.Errorf("after applying the diff, still: %+v", d2.Tables)
			}
		})
	}
}

func TestDiffJumps(t *testing.T) {
	logger, ctx := ktesting.NewTestContext(t)
	m := fixtureModel(t)
	base, err := explain.BaseTables(ctx, logger, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	onlyChains, err := ruleset.ParseWith(m.Payload(), ruleset.Options{Family: ruleset.FamilyIPv4})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		kernel  *ruleset.Ruleset
		missing bool
	}{
		{"node synced by the daemon", m.Tables, false},
		{"chains without the jumps to them", onlyChains, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &explain.DiffReport{}
			if err := d.CheckJumps(base.Ruleset(), tc.kernel); err != nil {
				t.Fatal(err)
			}
			if (len(d.MissingJumps) > 0) != tc.missing || d.Empty() == tc.missing {
				t.Errorf("missing jumps %q, want some: %v", d.MissingJumps, tc.missing)
			}
		})
	}
}

func cut(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return "", s, false
}
