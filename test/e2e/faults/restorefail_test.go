package faults

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

const restoreFailures = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"

// TestRestoreRefusedByTheKernel makes the kernel refuse iptproxy's restore:
// another program adds a rule in a built-in chain that jumps to the
// KUBE-SEP chain of an endpoint, then the endpoint is removed, so the
// "-X KUBE-SEP-..." of the next restore fails ("Device or resource busy").
// The failure must be logged with the failing line, counted, retried as a
// full sync, leave the existing rules in place, turn /healthz 503 only
// after kube-proxy's window (2 x syncPeriod after the first unapplied
// change) and recover once the obstacle is gone.
func TestRestoreRefusedByTheKernel(t *testing.T) {
	w := newWorld(t, worldOptions{})
	podA, podB := w.pods[0], w.pods[1]
	sep := w.sepChain(t, podB)
	obstacle := []string{"-t", "nat", "-I", "OUTPUT", "-d", "192.0.2.1/32", "-m", "comment", "--comment", "faults test obstacle", "-j", sep}
	w.iptables(t, obstacle...)
	failuresBefore := metric(t, w.d, restoreFailures, `ip_family="IPv4"`)
	fullBefore := fullSyncs(w.d.Log())

	// Remove pod-b: iptproxy now wants to delete sep.
	changed := time.Now()
	w.c.SetEndpoints(t, w.svc, podA.Backend())

	// The failure is logged with the failing line and counted.
	fw := failWatch{t: t, w: w}
	fw.eventually("the restore failure to be logged with the failing line", func() bool {
		log := w.d.Log()
		return strings.Contains(log, "iptables-restore failed") && strings.Contains(log, "-X "+sep)
	})
	fw.eventually("the restore failure to be counted", func() bool {
		return metric(t, w.d, restoreFailures, `ip_family="IPv4"`) > failuresBefore
	})

	// Until the window ends: rules stay in place (both backends still
	// answer, including pod-b whose chain could not be deleted), /healthz
	// stays 200. Then it must turn 503.
	window := 2 * syncPeriod
	var unhealthyAt time.Duration
	seen := map[string]bool{}
	for time.Since(changed) < window+5*time.Second {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		r, err := w.client.Request(ctx, v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP))
		code := healthz(ctx, w.d)
		cancel()
		if err != nil {
			t.Fatalf("NodePort traffic broke while the restore kept failing: %v", err)
		}
		seen[r.Name] = true
		elapsed := time.Since(changed)
		if code == http.StatusServiceUnavailable {
			unhealthyAt = elapsed
			break
		}
		if code != http.StatusOK {
			t.Fatalf("/healthz answered %d", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if unhealthyAt == 0 {
		t.Fatalf("/healthz still 200 %v after the first unapplied change (window %v)", time.Since(changed), window)
	}
	// The change was queued at most a moment after SetEndpoints returned;
	// allow 500 ms for the watch to deliver it.
	if unhealthyAt < window-500*time.Millisecond {
		t.Errorf("/healthz turned 503 after %v, before kube-proxy's window of %v", unhealthyAt, window)
	}
	if !seen[podB.Name()] {
		t.Logf("note: pod-b did not happen to answer during the window (answers from %v)", seen)
	}
	t.Logf("/healthz turned 503 %v after the change (window %v)", unhealthyAt.Round(10*time.Millisecond), window)
	// Still in place: every backend of the old set answers.
	w.client.WaitForBackends(t, v1.ProtocolTCP, w.nodePort(v1.ProtocolTCP), []string{podA.Name(), podB.Name()}, 10*time.Second)

	// Retried as full syncs.
	if n := fullSyncs(w.d.Log()); n <= fullBefore {
		t.Errorf("no full sync retried after the failure (%d full syncs before, %d after)", fullBefore, n)
	}

	// The obstacle goes away: the next retry succeeds.
	obstacle[2] = "-D"
	w.iptables(t, obstacle...)
	removed := time.Now()
	fw.eventually("sep chain to be deleted", func() bool {
		return !strings.Contains(w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"), ":"+sep+" ")
	})
	fw.eventually("/healthz to turn 200", func() bool { return healthz(t.Context(), w.d) == http.StatusOK })
	t.Logf("recovered %v after the obstacle was removed", time.Since(removed).Round(10*time.Millisecond))
	w.waitServing(t, []string{podA.Name()}, converge)
}

// failWatch polls conditions with a deadline of a few sync periods.
type failWatch struct {
	t *testing.T
	w *world
}

func (f failWatch) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(3*syncPeriod + 5*time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNeverSyncedIsNotReady starts iptproxy on a node where a stale
// KUBE-SEP chain (left by an earlier proxy) is referenced by another
// program's rule, so the first full sync, which deletes stale chains,
// fails. Until a sync succeeds the NodePort does not work, so /healthz must
// not answer 200 (kube-proxy would, for 2 x syncPeriod), while /livez keeps
// kube-proxy's start-up grace. Once the obstacle is gone, the retry
// succeeds and both turn 200.
func TestNeverSyncedIsNotReady(t *testing.T) {
	const stale = "KUBE-SEP-FAULTSTESTSTALE0"
	obstacle := []string{"-t", "nat", "-I", "OUTPUT", "-d", "192.0.2.1/32", "-j", stale}
	w := newWorld(t, worldOptions{
		noWait: true,
		before: func(t *testing.T, w *world) {
			w.iptables(t, "-t", "nat", "-N", stale)
			w.iptables(t, obstacle...)
		},
	})
	started := time.Now()
	fw := failWatch{t: t, w: w}
	fw.eventually("the first sync to fail", func() bool {
		return strings.Contains(w.d.Log(), "iptables-restore failed") && strings.Contains(w.d.Log(), "-X "+stale)
	})
	// Within the window: never synced, so /healthz 503 and traffic is
	// refused; /livez 200 (start-up grace).
	for time.Since(started) < syncPeriod {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		hz := healthz(ctx, w.d)
		lz, _, lerr := w.d.Get(ctx, 10256, "/livez")
		cancel()
		if hz != http.StatusServiceUnavailable {
			t.Fatalf("/healthz answered %d before any sync succeeded, want 503", hz)
		}
		if lerr == nil && time.Since(started) < 2*syncPeriod-time.Second && lz != http.StatusOK {
			t.Errorf("/livez answered %d inside the start-up window, want 200", lz)
		}
		if err := w.served(t.Context()); err == nil {
			t.Fatalf("traffic served although no sync succeeded; the test does not break anything")
		}
		time.Sleep(200 * time.Millisecond)
	}
	obstacle[2] = "-D"
	w.iptables(t, obstacle...)
	removed := time.Now()
	fw.eventually("/healthz to turn 200", func() bool { return healthz(t.Context(), w.d) == http.StatusOK })
	t.Logf("first successful sync %v after the obstacle was removed", time.Since(removed).Round(10*time.Millisecond))
	w.waitServing(t, w.podNames(), converge)
	if strings.Contains(w.n.IPTablesSave(t, v1.IPv4Protocol, "nat"), ":"+stale+" ") {
		t.Errorf("stale chain %s still there after the successful sync", stale)
	}
}
