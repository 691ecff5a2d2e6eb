package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// longSyncPeriod is the syncPeriod of the daemons whose repairs must come
// from a change or a restart alone: no periodic sync or drift check runs
// within a test.
const longSyncPeriod = 30 * time.Minute

// startLongSync starts iptproxy with longSyncPeriod.
func startLongSync(t *testing.T, n *fw.Node) *fw.Daemon {
	return n.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: longSyncPeriod}
		cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
	}})
}

// notServedBy sends n TCP requests from outside to the NodePort and fails
// the test if pod answers any of them, or if none is answered.
func (w *world) notServedBy(t *testing.T, pod *fw.Pod, n int) {
	t.Helper()
	answered := 0
	for range n {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		r, err := w.client.Request(ctx, v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP))
		cancel()
		if err != nil {
			continue
		}
		answered++
		if r.Name == pod.Name() {
			t.Fatalf("%s answered although its endpoint chain was flushed; the test breaks nothing", pod.Name())
		}
	}
	if answered == 0 {
		t.Fatalf("no request answered at all after flushing %s's endpoint chain", pod.Name())
	}
}

// TestKernelIsTheTruth changes iptproxy's rules behind its back, as a
// careless script or an operator would, and checks with real traffic that
// iptproxy repairs them: with the next change (kube-proxy's guarantee),
// on restart, and with no change at all within syncPeriod.
func TestKernelIsTheTruth(t *testing.T) {
	t.Run("a rule inserted into KUBE-SERVICES is gone after the next change of another Service", func(t *testing.T) {
		var other *v1.Service
		w := newWorld(t, worldOptions{start: startLongSync, before: func(t *testing.T, w *world) {
			other = w.c.CreateService(t, fw.NewService("default", "other", fw.ServicePort("tcp", v1.ProtocolTCP, 81, echoPort)))
			w.c.SetEndpoints(t, other, w.pods[0].Backend())
		}})
		w.iptables(t, "-t", "nat", "-I", "KUBE-SERVICES", "1", "-j", "RETURN")
		if err := w.served(t.Context()); err == nil {
			t.Fatal("traffic still served with RETURN at the top of KUBE-SERVICES; the test breaks nothing")
		}
		// A change that leaves KUBE-SERVICES' own content as it was.
		w.c.SetEndpoints(t, other, w.pods[0].Backend(), w.pods[1].Backend())
		took := w.waitServed(t, converge)
		t.Logf("served again %v after the other Service's endpoints changed", took.Round(10*time.Millisecond))
	})

	t.Run("a flushed endpoint chain is rewritten when its Service changes", func(t *testing.T) {
		w := newWorld(t, worldOptions{start: startLongSync})
		w.iptables(t, "-t", "nat", "-F", w.sepChain(t, w.pods[0]))
		w.notServedBy(t, w.pods[0], 20)
		// One endpoint more: the Service's chains are rendered again, and
		// pod-a's endpoint chain with them, unchanged in content.
		pod := w.n.AddPod(t, "pod-c")
		pod.StartEcho(t, fw.EchoOn(echoPort))
		w.pods = append(w.pods, pod)
		w.c.SetEndpoints(t, w.svc, w.pods[0].Backend(), w.pods[1].Backend(), pod.Backend())
		w.waitServing(t, w.podNames(), converge)
	})

	t.Run("a narrowed base jump is replaced by the exact one on restart", func(t *testing.T) {
		w := newWorld(t, worldOptions{start: startLongSync})
		w.d.Stop(t)
		jump := []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}
		w.iptables(t, append([]string{"-t", "nat", "-D", "PREROUTING"}, jump...)...)
		w.iptables(t, append([]string{"-t", "nat", "-I", "PREROUTING", "1", "-s", "192.0.2.1/32"}, jump...)...)
		if err := w.served(t.Context()); err == nil {
			t.Fatal("traffic still served with only a narrowed PREROUTING jump; the test breaks nothing")
		}
		w.d.Start(t)
		w.d.WaitHealthy(t, 60*time.Second)
		took := w.waitServed(t, converge)
		t.Logf("served again %v after the restart was healthy", took.Round(10*time.Millisecond))
		if save := w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"); !strings.Contains(save,
			`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`) {
			t.Errorf("exact PREROUTING jump missing after the restart:\n%s", save)
		}
	})

	t.Run("drift with no change at all is repaired within syncPeriod", func(t *testing.T) {
		w := newWorld(t, worldOptions{})
		// Let the syncs of the start and one periodic check pass, so that
		// a repair can only come from the periodic work.
		time.Sleep(syncPeriod + time.Second)
		for _, tc := range []struct {
			name  string
			chain string
			args  []string
		}{
			// The periodic sync rewrites KUBE-SERVICES too, as
			// kube-proxy's does; the drift check runs first and names it.
			{"stray RETURN at the top of KUBE-SERVICES", "KUBE-SERVICES", []string{"-t", "nat", "-I", "KUBE-SERVICES", "1", "-j", "RETURN"}},
			// Only the drift check can find this one: no sync writes the
			// chain of a Service that did not change.
			{"flushed endpoint chain", w.sepChain(t, w.pods[0]), []string{"-t", "nat", "-F", w.sepChain(t, w.pods[0])}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				w.waitServing(t, w.podNames(), converge)
				before := metric(t, w.d, "iptproxy_drift_chains_total", `ip_family="IPv4",table="nat"`)
				w.iptables(t, tc.args...)
				changed := time.Now()
				w.waitServing(t, w.podNames(), syncPeriod+10*time.Second)
				t.Logf("%s: both backends served again after %v (syncPeriod %v)", tc.name,
					time.Since(changed).Round(10*time.Millisecond), syncPeriod)
				if after := metric(t, w.d, "iptproxy_drift_chains_total", `ip_family="IPv4",table="nat"`); after <= before {
					t.Errorf("iptproxy_drift_chains_total did not grow (%v -> %v)", before, after)
				}
				if log := w.d.Log(); !strings.Contains(log, "Rules changed by someone else") || !strings.Contains(log, tc.chain) {
					t.Errorf("no log line names the drifted chain %s; the log ends with:\n%s", tc.chain, lastLines(log, 30))
				}
			})
		}
	})
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
