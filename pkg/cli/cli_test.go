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
