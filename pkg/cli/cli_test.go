package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/cli"
	"github.com/iptproxy/iptproxy/pkg/explain"
)

const fixture = "../explain/testdata/cluster.yaml"

// run runs the CLI and returns its exit status and output.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	logger, _ := ktesting.NewTestContext(t)
	var out, errOut bytes.Buffer
	env := cli.Env{
		Stdout: &out, Stderr: &errOut, Logger: logger,
		Hostname:       func() (string, error) { return "node-a", nil },
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil },
	}
	code := cli.Run(context.Background(), env, args)
	return code, out.String(), errOut.String()
}

// TestRenderThenTraceCLI renders the fixture with "iptproxy render", saves
// the payload, and traces packets through it with "iptproxy trace --rules"
// (and directly from the objects with -f): both must agree on where each
// packet goes.
func TestRenderThenTraceCLI(t *testing.T) {
	code, payload, stderr := run(t, "render", "-f", fixture, "--node", "node-a")
	if code != 0 {
		t.Fatalf("render: exit %d: %s", code, stderr)
	}
	rulesFile := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(rulesFile, []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	third := 1.0 / 3
	tests := []struct {
		name    string
		args    []string
		verdict string
		dests   map[string]float64
		masq    float64
	}{
		{"ClusterIP over 3 endpoints", []string{"--src", "10.244.1.50", "--in-interface", "cbr0", "--dst", "172.30.0.10", "--dport", "80"},
			explain.VerdictAccepted, map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third}, 0},
		{"no endpoints", []string{"--src", "10.244.1.50", "--in-interface", "cbr0", "--dst", "172.30.0.11", "--dport", "80"},
			explain.VerdictRejected, map[string]float64{"REJECT": 1}, 0},
		{"Local policy, no local endpoint", []string{"--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "10.0.0.1", "--dport", "30081"},
			explain.VerdictDropped, map[string]float64{"DROP": 1}, 0},
		{"not a Service", []string{"--src", "10.244.1.50", "--in-interface", "cbr0", "--dst", "10.244.2.99", "--dport", "443"},
			explain.VerdictNotService, map[string]float64{"10.244.2.99:443": 1}, 0},
		{"from the node itself", []string{"--src", "10.0.0.1", "--dst", "172.30.0.10", "--dport", "80"},
			explain.VerdictAccepted, map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third}, 0},
		{"masquerade from outside", []string{"--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "10.0.0.1", "--dport", "30080"},
			explain.VerdictAccepted, map[string]float64{"10.244.1.11:8080": third, "10.244.2.12:8080": third, "10.244.3.13:8080": third}, 1},
	}
	for _, tc := range tests {
		for source, extra := range map[string][]string{
			"rules file": {"--rules", rulesFile, "--node-ip", "10.0.0.1"},
			"objects":    {"-f", fixture, "--node", "node-a"},
		} {
			t.Run(tc.name+"/"+source, func(t *testing.T) {
				args := append(append([]string{"trace", "-o", "json"}, tc.args...), extra...)
				code, out, stderr := run(t, args...)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr)
				}
				var r explain.TraceReport
				if err := json.Unmarshal([]byte(out), &r); err != nil {
					t.Fatalf("-o json does not parse: %v\n%s", err, out)
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
					t.Errorf("targets %v, want %v", got, tc.dests)
				}
				for d, p := range tc.dests {
					if math.Abs(got[d]-p) > 1e-6 {
						t.Errorf("P(%s) = %v, want %v", d, got[d], p)
					}
				}
				if math.Abs(masq-tc.masq) > 1e-6 {
					t.Errorf("P(masquerade) = %v, want %v", masq, tc.masq)
				}
			})
		}
	}
}

func TestShowCLI(t *testing.T) {
	code, out, stderr := run(t, "show", "service", "shop/web", "-f", fixture, "--node", "node-a", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r explain.ServiceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("-o json does not parse: %v\n%s", err, out)
	}
	if r.Service != "shop/web" || r.Node != "node-a" || len(r.Ports) != 1 {
		t.Fatalf("report %+v", r)
	}
	reasons := map[string]string{}
	for _, l := range r.Ports[0].LeftOut {
		reasons[l.Address] = l.Reason
	}
	if reasons["10.244.3.14:8080"] != "not ready" || !strings.HasPrefix(reasons["10.244.2.15:8080"], "terminating") {
		t.Errorf("left-out reasons %v", reasons)
	}
	// The text form names the same endpoints.
	code, text, _ := run(t, "show", "service", "shop/web", "-f", fixture, "--node", "node-a")
	if code != 0 || !strings.Contains(text, "10.244.3.14:8080") || !strings.Contains(text, "33.3%") {
		t.Errorf("text output (exit %d):\n%s", code, text)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"show", "service", "noslash", "-f", fixture},
		{"show", "pods", "a/b", "-f", fixture},
		{"trace", "--src", "10.0.0.1", "--dst", "fd00::1", "--dport", "80", "-f", fixture},
		{"trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--dport", "0", "-f", fixture},
		{"trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--dport", "80", "--proto", "icmp", "-f", fixture},
		{"render", "-f", fixture, "-o", "yaml"},
		{"render", "--bogus"},
	} {
		if code, _, _ := run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, stderr := run(t, "show", "service", "shop/nope", "-f", fixture); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("missing Service: exit %d, %q", code, stderr)
	}
}

const features = "../explain/testdata/features.yaml"

// TestShowFeatures checks show's report for source ranges, external IPs,
// affinity, topology hints, internalTrafficPolicy Local and dual-stack.
func TestShowFeatures(t *testing.T) {
	type port struct {
		family   string
		entries  map[string]string  // kind -> verdict
		use      map[string]float64 // endpoint -> probability (every entry)
		leftOut  map[string]string  // endpoint -> reason
		affinity string
	}
	tests := []struct {
		svc   string
		ports []port
	}{
		{"f/lb", []port{{family: "IPv4", affinity: "ClientIP",
			entries: map[string]string{"ClusterIP": "accepted", "NodePort": "accepted", "LoadBalancer": "accepted", "ExternalIP": "accepted"},
			use:     map[string]float64{"10.244.1.1:8080": 0.5, "10.244.2.1:8080": 0.5}}}},
		{"f/zoned", []port{{family: "IPv4", affinity: "None",
			entries: map[string]string{"ClusterIP": "accepted"},
			use:     map[string]float64{"10.244.1.2:8080": 0.5, "10.244.3.2:8080": 0.5},
			leftOut: map[string]string{"10.244.4.2:8080": "topology: hinted for zone zone-b, not this node's zone (zone-a)"}}}},
		{"f/itp", []port{{family: "IPv4", affinity: "None",
			entries: map[string]string{"ClusterIP": "accepted"},
			use:     map[string]float64{"10.244.1.3:8080": 1},
			leftOut: map[string]string{"10.244.2.3:8080": "on node node-b, not this node; internalTrafficPolicy is Local"}}}},
		{"f/dual", []port{
			{family: "IPv4", affinity: "None", entries: map[string]string{"ClusterIP": "accepted"}, use: map[string]float64{"10.244.2.4:8080": 1}},
			{family: "IPv6", affinity: "None", entries: map[string]string{"ClusterIP": "accepted"}, use: map[string]float64{"[fd00:244:2::4]:8080": 0.5, "[fd00:244:3::4]:8080": 0.5}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.svc, func(t *testing.T) {
			code, out, stderr := run(t, "show", "service", tc.svc, "-f", features, "--node", "node-a", "-o", "json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var r explain.ServiceReport
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			if len(r.Ports) != len(tc.ports) {
				t.Fatalf("%d ports, want %d: %s", len(r.Ports), len(tc.ports), out)
			}
			for i, want := range tc.ports {
				p := r.Ports[i]
				if string(p.Family) != want.family || p.Affinity != want.affinity {
					t.Errorf("port %d: family %s affinity %s, want %s %s", i, p.Family, p.Affinity, want.family, want.affinity)
				}
				if len(p.Entries) != len(want.entries) {
					t.Errorf("entries %+v, want %v", p.Entries, want.entries)
				}
				for _, e := range p.Entries {
					if want.entries[e.Kind] != e.Verdict {
						t.Errorf("entry %s %s: %q, want %q", e.Kind, e.Address, e.Verdict, want.entries[e.Kind])
					}
				}
				if len(p.Endpoints) != len(want.use) {
					t.Errorf("endpoints %+v, want %v", p.Endpoints, want.use)
				}
				for _, ep := range p.Endpoints {
					for j, pr := range ep.Probability {
						if math.Abs(pr-want.use[ep.Address]) > 1e-6 {
							t.Errorf("%s via %s: %v, want %v", ep.Address, p.Entries[j].Kind, pr, want.use[ep.Address])
						}
					}
				}
				if len(p.LeftOut) != len(want.leftOut) {
					t.Errorf("left out %+v, want %v", p.LeftOut, want.leftOut)
				}
				for _, l := range p.LeftOut {
					if want.leftOut[l.Address] != l.Reason {
						t.Errorf("left out %s: %q, want %q", l.Address, l.Reason, want.leftOut[l.Address])
					}
				}
			}
		})
	}
}

// TestTraceFeatures traces through the rendered features fixture, reloaded
// from render's two-family output: the family comes from --dst.
func TestTraceFeatures(t *testing.T) {
	code, payload, stderr := run(t, "render", "-f", features, "--node", "node-a")
	if code != 0 {
		t.Fatalf("render: exit %d: %s", code, stderr)
	}
	rulesFile := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(rulesFile, []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		verdict string
		dests   map[string]float64
	}{
		{"IPv6 ClusterIP", []string{"--src", "fd00::1", "--dst", "fd00:30::4", "--dport", "80"},
			explain.VerdictAccepted, map[string]float64{"[fd00:244:2::4]:8080": 0.5, "[fd00:244:3::4]:8080": 0.5}},
		{"load balancer from an allowed source", []string{"--src", "198.51.100.9", "--in-interface", "eth0", "--dst", "203.0.113.20", "--dport", "80"},
			explain.VerdictAccepted, map[string]float64{"10.244.1.1:8080": 0.5, "10.244.2.1:8080": 0.5}},
		{"load balancer from outside the source ranges", []string{"--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "203.0.113.20", "--dport", "80"},
			explain.VerdictDropped, map[string]float64{"DROP": 1}},
		{"external IP", []string{"--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "192.0.2.50", "--dport", "80"},
			explain.VerdictAccepted, map[string]float64{"10.244.1.1:8080": 0.5, "10.244.2.1:8080": 0.5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"trace", "-o", "json", "--rules", rulesFile, "--node-ip", "10.0.0.1", "--node-ip", "fd00::1"}, tc.args...)
			code, out, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var r explain.TraceReport
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, tg := range r.Targets {
				got[tg.Destination] += tg.Probability
			}
			if r.Verdict != tc.verdict || len(got) != len(tc.dests) {
				t.Fatalf("verdict %q targets %v, want %q %v", r.Verdict, got, tc.verdict, tc.dests)
			}
			for d, p := range tc.dests {
				if math.Abs(got[d]-p) > 1e-6 {
					t.Errorf("P(%s) = %v, want %v", d, got[d], p)
				}
			}
		})
	}
}
