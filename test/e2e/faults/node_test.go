package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeObjectChanges changes the daemon's own Node object. As
// kube-proxy 1.37 (pkg/proxy/node.go: NodeManager.OnNodeChange and
// OnNodeDelete call exit(1) after one log line), iptproxy exits for a
// restart when the Node is deleted or its IPs change, leaving its rules in
// place so that traffic keeps flowing until the restart; other changes
// (a label) do not stop it.
func TestNodeObjectChanges(t *testing.T) {
	w := newWorld(t, worldOptions{})
	nodes := w.c.Client().CoreV1().Nodes()
	original, err := nodes.Get(t.Context(), w.n.Name(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	restore := func(ctx context.Context) error {
		cur, err := nodes.Get(ctx, w.n.Name(), metav1.GetOptions{})
		if err != nil {
			n := original.DeepCopy()
			n.ResourceVersion, n.UID = "", ""
			if cur, err = nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		cur.Status.Addresses = original.Status.Addresses
		cur.Status.Conditions = original.Status.Conditions
		_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	}

	for _, tc := range []struct {
		name    string
		change  func(ctx context.Context) error
		exits   bool
		logLine string
	}{
		{
			name: "a label changes: keeps running",
			change: func(ctx context.Context) error {
				n, err := nodes.Get(ctx, w.n.Name(), metav1.GetOptions{})
				if err != nil {
					return err
				}
				n.Labels["faults-test"] = "yes"
				_, err = nodes.Update(ctx, n, metav1.UpdateOptions{})
				return err
			},
		},
		{
			name: "its IPs change: exits",
			change: func(ctx context.Context) error {
				n, err := nodes.Get(ctx, w.n.Name(), metav1.GetOptions{})
				if err != nil {
					return err
				}
				n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "198.18.0.250"}}
				_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
				return err
			},
			exits:   true,
			logLine: "NodeIPs changed for the node",
		},
		{
			name: "it is deleted: exits",
			change: func(ctx context.Context) error {
				return nodes.Delete(ctx, w.n.Name(), metav1.DeleteOptions{})
			},
			exits:   true,
			logLine: "Node is being deleted",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.change(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := restore(context.Background()); err != nil {
					t.Errorf("restoring the Node: %v", err)
				}
			})
			if !tc.exits {
				// Two sync periods later it still runs and serves.
				time.Sleep(2 * syncPeriod)
				if !w.d.Running() {
					t.Fatalf("daemon exited after a label change: %v\n%s", w.d.Process().Err(), tail(w.d.Log()))
				}
				w.waitServed(t, converge)
				return
			}
			err := w.d.WaitExit(t, 20*time.Second)
			if err == nil {
				t.Errorf("daemon exited with status 0, want a failure status so that it is restarted")
			}
			if log := w.d.Log(); !strings.Contains(log, tc.logLine) {
				t.Errorf("log lacks %q:\n%s", tc.logLine, tail(log))
			}
			// Its rules stay: traffic flows while it is down.
			w.waitServed(t, 5*time.Second)
			// Put the Node back and restart, as the kubelet would.
			if err := restore(t.Context()); err != nil {
				t.Fatal(err)
			}
			w.d.Start(t)
			w.d.WaitHealthy(t, 60*time.Second)
			w.waitServing(t, w.podNames(), converge)
		})
	}
}

// tail returns the last lines of a log.
func tail(log string) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
