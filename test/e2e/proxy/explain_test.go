package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/test/e2e/echo"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestExplain checks the operator tools against a live node: "iptproxy
// trace" on the node's kernel rules agrees with where real packets go,
// "iptproxy render" from YAML of the objects equals what the daemon
// applied, "iptproxy diff" finds nothing to change, and
// /debug/services shows the endpoint real packets reach.
func TestExplain(t *testing.T) {
	bin := fw.RequireIPTProxy(t)
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 2})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	v4 := v1.IPv4Protocol
	for _, cidr := range c.ServiceCIDRs() {
		n1.AddRoute(t, cidr, c.Host().IP(v4))
	}
	remote := n2.AddPod(t, "remote")
	remote.StartEcho(t, fw.EchoOn(echoPort))
	near := n1.AddPod(t, "near")
	near.StartEcho(t, fw.EchoOn(echoPort))
	client := c.AddClient(t, "outside")
	d := n1.StartDaemon(t, fw.DaemonOptions{Binary: bin, Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 3 * time.Second}
		cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
	}})
	d.WaitHealthy(t, 60*time.Second)

	tcpPort := fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort)
	one := c.CreateService(t, fw.NewService("default", "one", tcpPort))
	c.SetEndpoints(t, one, remote.Backend())
	none := c.CreateService(t, fw.NewService("default", "none", tcpPort))
	oneAddr, noneAddr := fw.ServiceAddr(one, v4, 80), fw.ServiceAddr(none, v4, 80)

	// Real packets first: from node-1 itself, "one" reaches the remote pod
	// and "none" is refused.
	n1.WaitForBackends(t, v1.ProtocolTCP, oneAddr, []string{remote.Name()}, converge)
	fw.Eventually(t, converge, func(ctx context.Context) error {
		_, err := n1.Request(ctx, v1.ProtocolTCP, noneAddr)
		if !errors.Is(err, echo.ErrRefused) {
			return fmt.Errorf("want connection refused, got %v", err)
		}
		return nil
	})

	// traceFrom runs "iptproxy trace" in node-1's namespace on its live
	// rules; extra adds --in-interface for arriving packets.
	traceFrom := func(t *testing.T, src, dst string, dport int, extra ...string) *explain.TraceReport {
		t.Helper()
		args := append([]string{"trace", "--src", src, "--dst", dst, "--dport", fmt.Sprint(dport), "--proto", "tcp"}, extra...)
		out := n1.Exec(t, bin, append(args, "-o", "json")...)
		var r explain.TraceReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("trace -o json: %v\n%s", err, out)
		}
		// The text form, for people (and the docs' examples).
		t.Logf("iptproxy %s:\n%s", strings.Join(args, " "), n1.Exec(t, bin, args...))
		return &r
	}
	traceLive := func(t *testing.T, dst string) *explain.TraceReport {
		t.Helper()
		return traceFrom(t, n1.IP(v4).String(), dst, 80)
	}

	t.Run("trace on the live rules agrees with real packets", func(t *testing.T) {
		r := traceLive(t, oneAddr.Addr().String())
		want := fmt.Sprintf("%s:%d", remote.IP(v4), echoPort)
		if r.Verdict != explain.VerdictAccepted || len(r.Targets) != 1 || r.Targets[0].Destination != want || r.Targets[0].Probability != 1 {
			t.Errorf("trace to %s: verdict %q targets %+v; real packets reached %s (pod %s)", oneAddr, r.Verdict, r.Targets, want, remote.Name())
		}
		r = traceLive(t, noneAddr.Addr().String())
		if r.Verdict != explain.VerdictRejected {
			t.Errorf("trace to %s (no endpoints, connection refused): verdict %q, targets %+v", noneAddr, r.Verdict, r.Targets)
		}
		// An address no Service has passes untouched.
		r = traceLive(t, remote.IP(v4).String())
		if r.Verdict != explain.VerdictNotService {
			t.Errorf("trace to the pod itself: verdict %q, want %q", r.Verdict, explain.VerdictNotService)
		}
	})

	t.Run("trace agrees with real packets: two endpoints, pod source, Local NodePort", func(t *testing.T) {
		two := c.CreateService(t, fw.NewService("default", "two", tcpPort))
		c.SetEndpoints(t, two, near.Backend(), remote.Backend())
		twoAddr := fw.ServiceAddr(two, v4, 80)
		seen := n1.WaitForBackends(t, v1.ProtocolTCP, twoAddr, []string{near.Name(), remote.Name()}, converge)
		r := traceFrom(t, n1.IP(v4).String(), twoAddr.Addr().String(), 80)
		want := map[string]bool{fmt.Sprintf("%s:%d", near.IP(v4), echoPort): true, fmt.Sprintf("%s:%d", remote.IP(v4), echoPort): true}
		if r.Verdict != explain.VerdictAccepted || len(r.Targets) != 2 {
			t.Fatalf("trace to %s: %q %+v; real packets reached %v", twoAddr, r.Verdict, r.Targets, seen)
		}
		for _, tg := range r.Targets {
			if !want[tg.Destination] || tg.Probability < 0.4999 || tg.Probability > 0.5001 {
				t.Errorf("target %+v; want each of %v at 0.5", tg, want)
			}
		}

		// From a pod (arriving on the pod bridge): the trace says the
		// source is kept, and the remote endpoint sees the pod's address.
		r = traceFrom(t, near.IP(v4).String(), oneAddr.Addr().String(), 80, "--in-interface", "cbr0")
		if len(r.Targets) != 1 || r.Targets[0].Masqueraded != 0 {
			t.Errorf("trace from pod %s: %+v, want one unmasqueraded target", near.Name(), r.Targets)
		}
		if reply := near.MustRequest(t, v1.ProtocolTCP, oneAddr); reply.Source.Addr() != near.IP(v4) {
			t.Errorf("remote endpoint saw source %v, the trace says unmasqueraded (%v)", reply.Source.Addr(), near.IP(v4))
		}

		// externalTrafficPolicy Local on node-1, whose pod is not a
		// backend: the trace says dropped, and a real client gets nothing.
		local := fw.NewService("default", "np-local", tcpPort)
		local.Spec.Type = v1.ServiceTypeNodePort
		local.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		local = c.CreateService(t, local)
		c.SetEndpoints(t, local, remote.Backend())
		np := int(local.Spec.Ports[0].NodePort)
		fw.Eventually(t, converge, func(context.Context) error {
			if r := traceFrom(t, client.IP(v4).String(), n1.IP(v4).String(), np, "--in-interface", "eth0"); r.Verdict != explain.VerdictDropped {
				return fmt.Errorf("trace of the Local NodePort from outside: %q %+v, want dropped", r.Verdict, r.Targets)
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if reply, err := client.Request(ctx, v1.ProtocolTCP, netip.AddrPortFrom(n1.IP(v4), uint16(np))); err == nil {
			t.Errorf("the trace says dropped, but the client got an answer from %s", reply.Name)
		}
	})

	t.Run("render from YAML equals what the daemon applied", func(t *testing.T) {
		objects := filepath.Join(t.TempDir(), "objects.yaml")
		writeObjects(t, c, n1.Name(), objects)
		var applied string
		fw.Eventually(t, converge, func(ctx context.Context) error {
			code, body, err := d.Get(ctx, 10249, "/debug/rules")
			if err != nil || code != 200 {
				return fmt.Errorf("/debug/rules: %d %v", code, err)
			}
			applied = explain.Section(body, v4)
			if !strings.Contains(applied, oneAddr.Addr().String()) || !strings.Contains(applied, noneAddr.Addr().String()) {
				return errors.New("the daemon has not synced both Services yet")
			}
			return nil
		})
		rendered := n1.Exec(t, bin, "render", "-f", objects, "--node", n1.Name(), "--config", d.ConfigPath(), "--family", "IPv4")
		rendered = explain.Section(rendered, v4)
		if rendered != applied {
			t.Errorf("render differs from the daemon's rules:\n--- render\n%s\n--- daemon\n%s", rendered, applied)
		}
		// The same from the API server (read-only), as an operator would.
		fromAPI := explain.Section(n1.Exec(t, bin, "render", "--kubeconfig", c.AdminKubeconfig(), "--node", n1.Name(), "--config", d.ConfigPath()), v4)
		if fromAPI != applied {
			t.Errorf("render --kubeconfig differs from the daemon's rules:\n--- render\n%s\n--- daemon\n%s", fromAPI, applied)
		}
		// The kernel holds the daemon's chains: diff finds nothing to do.
		out := n1.Exec(t, bin, "diff", "-f", objects, "--node", n1.Name(), "--config", d.ConfigPath(), "-o", "json")
		var diffs []struct {
			Family       v1.IPFamily         `json:"ipFamily"`
			Tables       []explain.TableDiff `json:"tables"`
			MissingJumps []string            `json:"missingJumps"`
		}
		if err := json.Unmarshal([]byte(out), &diffs); err != nil {
			t.Fatalf("diff -o json: %v\n%s", err, out)
		}
		for _, df := range diffs {
			if df.Family == v4 && (len(df.Tables) > 0 || len(df.MissingJumps) > 0) {
				t.Errorf("diff on a synced node: %+v, missing jumps %q", df.Tables, df.MissingJumps)
			}
		}
	})

	t.Run("/debug/services shows where packets go", func(t *testing.T) {
		code, body, err := d.Get(t.Context(), 10249, "/debug/services/default/one?output=json")
		if err != nil || code != 200 {
			t.Fatalf("/debug/services: %d %v %s", code, err, body)
		}
		var r explain.ServiceReport
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		want := fmt.Sprintf("%s:%d", remote.IP(v4), echoPort)
		if len(r.Ports) != 1 || len(r.Ports[0].Endpoints) != 1 || r.Ports[0].Endpoints[0].Address != want || r.Ports[0].Endpoints[0].Probability[0] != 1 {
			t.Errorf("/debug/services/default/one: %s", body)
		}
		if code, body, err := d.Get(t.Context(), 10249, "/debug/services/default/one"); err != nil || code != 200 {
			t.Errorf("/debug/services text: %d %v", code, err)
		} else {
			t.Logf("/debug/services/default/one:\n%s", body)
		}
		if code, _, err := d.Get(t.Context(), 10249, "/debug/services/default/nosuch"); err != nil || code != 404 {
			t.Errorf("/debug/services of a missing Service: %d %v, want 404", code, err)
		}
	})
}

// writeObjects writes the cluster's Services and EndpointSlices, and node's
// Node, as multi-document YAML, as an operator would with "kubectl get -o
// yaml".
func writeObjects(t *testing.T, c *fw.Cluster, node, path string) {
	t.Helper()
	ctx := t.Context()
	var docs []string
	svcs, err := c.Client().CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices, err := c.Client().DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcs.APIVersion, svcs.Kind = "v1", "ServiceList"
	slices.APIVersion, slices.Kind = "discovery.k8s.io/v1", "EndpointSliceList"
	n.APIVersion, n.Kind = "v1", "Node"
	for _, obj := range []any{svcs, slices, n} {
		b, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	if err := os.WriteFile(path, []byte(strings.Join(docs, "---\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}
