package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// lockHold is how long the other writer holds the xtables lock: longer
// than iptproxy's wait (-w 5, as kube-proxy) after the change, which
// comes up to 3 s after the lock is taken, so at least one restore
// fails and must be retried.
const lockHold = 12 * time.Second

// TestXtablesLockHeldByAnotherWriter runs iptproxy on the legacy backend
// (iptables-nft takes no lock) while another writer, as kubelet or a
// firewall daemon would, holds the xtables lock for longer than iptproxy
// waits. A Service change made meanwhile must be applied once the lock is
// free, and traffic through the old rules must keep working throughout.
//
// The lock file /run/xtables.lock is shared by every namespace on the
// machine; the daemon and the holder use a private one through
// XTABLES_LOCKFILE so that no other test is blocked.
func TestXtablesLockHeldByAnotherWriter(t *testing.T) {
	fw.RequireCommands(t, "flock", "iptables-legacy", "iptables-legacy-save", "iptables-nft")
	dir := t.TempDir()
	lockFile := filepath.Join(dir, "xtables.lock")
	env := "XTABLES_LOCKFILE=" + lockFile
	// A wrapper named like the daemon, so that the harness runs iptproxy
	// with the private lock file in its environment.
	wrapper := filepath.Join(dir, "iptproxy")
	script := fmt.Sprintf("#!/bin/sh\nexport %s\nexec %s \"$@\"\n", env, fw.RequireIPTProxy(t))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, worldOptions{start: func(t *testing.T, n *fw.Node) *fw.Daemon {
		return n.StartDaemon(t, fw.DaemonOptions{Binary: wrapper, Configure: configure, Args: []string{"--iptables-backend=legacy"}})
	}})
	iptEnv := func(ctx context.Context, args ...string) (string, error) {
		return w.n.Run(ctx, "env", append([]string{env}, args...)...)
	}
	if out, err := iptEnv(t.Context(), "iptables-legacy-save", "-t", "nat"); err != nil || !strings.Contains(out, "KUBE-SERVICES") {
		t.Fatalf("iptproxy's rules are not in the legacy tables: %v\n%s", err, out)
	}

	failuresBefore := metric(t, w.d, restoreFailures, `ip_family="IPv4"`)

	// The other writer takes the lock.
	holder := exec.CommandContext(t.Context(), "flock", "--exclusive", lockFile, "sleep", lockHold.String())
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	fwatch := failWatch{t: t, w: w}
	fwatch.eventually("the holder to take the lock", func() bool {
		_, err := iptEnv(t.Context(), "iptables-legacy", "-w", "1", "-t", "nat", "-S", "OUTPUT")
		return err != nil
	})
	// The lock is honoured through XTABLES_LOCKFILE by legacy; nft takes
	// none.
	if out, err := iptEnv(t.Context(), "iptables-legacy", "-w", "1", "-t", "nat", "-S", "OUTPUT"); err == nil {
		t.Fatalf("iptables-legacy ignored the lock held on %s:\n%s", lockFile, out)
	}
	if _, err := iptEnv(t.Context(), "iptables-nft", "-w", "1", "-t", "nat", "-S", "OUTPUT"); err != nil {
		t.Errorf("iptables-nft waited for the xtables lock: %v", err)
	}

	// A Service change while the lock is held: pod-b leaves "web", and a
	// new Service "late" appears.
	podA, podB := w.pods[0], w.pods[1]
	w.c.SetEndpoints(t, w.svc, podA.Backend())
	late := fw.NewService("default", "late", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	late = w.c.CreateService(t, late)
	w.c.SetEndpoints(t, late, podB.Backend())
	lateAddr := fw.ServiceAddr(late, v1.IPv4Protocol, 80)

	// While held: the old rules serve, the change cannot be applied.
	for time.Since(held) < lockHold-time.Second {
		if err := w.served(t.Context()); err != nil {
			t.Fatalf("traffic broke while the lock was held: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := w.pods[0].Request(ctx, v1.ProtocolTCP, lateAddr)
		cancel()
		if err == nil {
			t.Fatalf("Service %s served %v after the lock was taken: was the lock really held?", lateAddr, time.Since(held))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := holder.Wait(); err != nil {
		t.Fatalf("lock holder: %v", err)
	}
	released := time.Now()
	log := w.d.Log()
	if !strings.Contains(log, "Sync failed") || !strings.Contains(strings.ToLower(log), "xtables lock") {
		t.Errorf("no failed sync mentioning the xtables lock in the log")
	}
	if got := metric(t, w.d, restoreFailures, `ip_family="IPv4"`); got <= failuresBefore {
		t.Errorf("%s did not count the restore that timed out on the lock (%v before, %v after)", restoreFailures, failuresBefore, got)
	}

	// After release: the change is applied, nothing lost.
	w.pods[0].WaitForBackends(t, v1.ProtocolTCP, lateAddr, []string{podB.Name()}, syncPeriod+10*time.Second)
	t.Logf("change applied %v after the lock was released (held %v, iptproxy waits 5 s, retries every %v)",
		time.Since(released).Round(10*time.Millisecond), lockHold, syncPeriod)
	w.waitServing(t, []string{podA.Name()}, converge)
}
