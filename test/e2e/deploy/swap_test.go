package deploy

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/test/e2e/echo"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// fillerServices is how many extra Services the swap test creates: more
// than a dispatch chain holds (rules.LeafMax, 16), in KUBE-SERVICES and the
// filter table's lists alike.
const fillerServices = 40

// restoreFailures matches kube-proxy's (and iptproxy's) count of failed
// iptables-restore runs.
var restoreFailures = regexp.MustCompile(`(?m)^kubeproxy_sync_proxy_rules_iptables_restore_failures_total(?:\{[^}]*\})? ([0-9.e+]+)$`)

// testSwap swaps kube-proxy for iptproxy and back on a node, as
// docs/install.md describes it (stop one, start the other, nothing cleaned
// in between), with a connection held open across both swaps. On the way
// back kube-proxy must delete iptproxy's nat dispatch chains itself (they
// are named like its own KUBE-SVC-* chains for that); then a Service is
// deleted: kube-proxy's "-X" of its chains would fail if a leftover
// dispatch chain still jumped to them. Last, hack/remove-dispatch-chains.sh
// tidies the unreferenced filter-table dispatch chains.
func (w *cluster) testSwap(t *testing.T) {
	fw.RequireKubeProxy(t)
	a := w.service(t, "swap-a")
	addrA := fw.ServiceAddr(a, v1.IPv4Protocol, 80)

	kp := w.node.StartKubeProxy(t)
	kp.WaitHealthy(t, converge)
	w.client.WaitForBackends(t, v1.ProtocolTCP, addrA, w.names, converge)
	held, err := w.client.Connect(t.Context(), v1.ProtocolTCP, addrA)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addrA, err)
	}
	defer held.Close() //nolint:errcheck // test connection
	mustAnswer(t, held, "through kube-proxy's rules")

	// Enough Services that iptproxy splits KUBE-SERVICES into dispatch
	// chains (more than a leaf holds).
	for i := range fillerServices {
		w.service(t, fmt.Sprintf("swap-fill-%d", i))
	}

	// kube-proxy -> iptproxy.
	kp.Stop(t)
	ipt := w.node.StartIPTProxy(t)
	ipt.WaitHealthy(t, converge)
	mustAnswer(t, held, "after iptproxy took over from kube-proxy")
	b := w.service(t, "swap-b")
	addrB := fw.ServiceAddr(b, v1.IPv4Protocol, 80)
	w.client.WaitForBackends(t, v1.ProtocolTCP, addrB, w.names, converge)
	t.Logf("iptproxy took over: held connection alive, new Service %s served", addrB)
	if dump := w.node.IPTablesSave(t, v1.IPv4Protocol, "nat"); !strings.Contains(dump, ":"+rules.PrefixDispatch) {
		t.Fatalf("iptproxy made no %s* chains with %d Services; the way back would prove nothing", rules.PrefixDispatch, fillerServices+2)
	}

	// iptproxy -> kube-proxy.
	ipt.Stop(t)
	kp = w.node.StartKubeProxy(t)
	kp.WaitHealthy(t, converge)
	mustAnswer(t, held, "after kube-proxy took over from iptproxy")
	w.client.WaitForBackends(t, v1.ProtocolTCP, addrB, w.names, converge)

	// kube-proxy's first sync deletes the nat dispatch chains with the
	// other KUBE-SVC-* chains it does not want: no step in between.
	fw.Eventually(t, converge, func(ctx context.Context) error {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if dump := w.node.IPTablesSave(t, fam, "nat"); strings.Contains(dump, rules.PrefixDispatch) {
				return fmt.Errorf("%s nat still has %s* chains after kube-proxy's first sync", fam, rules.PrefixDispatch)
			}
		}
		return nil
	})

	// kube-proxy deletes swap-a's chains.
	if err := w.c.Client().CoreV1().Services(testNS).Delete(t.Context(), a.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting Service %s: %v", a.Name, err)
	}
	fw.Eventually(t, converge, func(ctx context.Context) error {
		if dump := w.node.IPTablesSave(t, v1.IPv4Protocol, "nat"); strings.Contains(dump, testNS+"/"+a.Name) {
			return fmt.Errorf("kube-proxy has not removed %s/%s's rules yet", testNS, a.Name)
		}
		return nil
	})
	c := w.service(t, "swap-c")
	w.client.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(c, v1.IPv4Protocol, 80), w.names, converge)
	_, metrics, err := kp.Get(t.Context(), 10249, "/metrics")
	if err != nil {
		t.Fatalf("kube-proxy metrics: %v", err)
	}
	if !strings.Contains(metrics, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
		t.Fatalf("kube-proxy's metrics lack kubeproxy_sync_proxy_rules_last_timestamp_seconds:\n%s", metrics)
	}
	// A labelled counter: no series until the first failure.
	for _, m := range restoreFailures.FindAllStringSubmatch(metrics, -1) {
		if m[1] != "0" {
			t.Errorf("kube-proxy's iptables-restore failed after the way back: %s", m[0])
		}
	}
	script := filepath.Join(w.env.Root, "hack", "remove-dispatch-chains.sh")
	for _, backend := range []string{"nft", "legacy"} {
		// The filter table's dispatch chains stay behind unreferenced
		// (kube-proxy deletes stale chains in nat only); the script tidies
		// them. It refuses while a top-level chain still uses one.
		fw.Eventually(t, converge, func(ctx context.Context) error {
			out, err := w.node.Run(ctx, "sh", script, "--backend", backend)
			t.Logf("remove-dispatch-chains.sh --backend %s: %s %v", backend, strings.TrimSpace(out), err)
			return err
		})
	}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, table := range []string{"nat", "filter"} {
			if dump := w.node.IPTablesSave(t, fam, table); strings.Contains(dump, rules.PrefixDispatch) {
				t.Errorf("%s %s still has %s* chains:\n%s", fam, table, rules.PrefixDispatch, dump)
			}
		}
	}

	kp.Stop(t)
}

// service creates a ClusterIP Service for the two backend pods.
func (w *cluster) service(t *testing.T, name string) *v1.Service {
	t.Helper()
	svc := w.c.CreateService(t, fw.NewService(testNS, name, fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort)))
	w.c.SetEndpoints(t, svc, w.backends...)
	return svc
}

// mustAnswer sends a request over a held connection.
func mustAnswer(t *testing.T, conn *echo.Conn, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := conn.Request(ctx); err != nil {
		t.Fatalf("held connection %s: %v", when, err)
	}
}
