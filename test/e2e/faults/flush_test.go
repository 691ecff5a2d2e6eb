package faults

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// TestTablesFlushedByAnotherProgram flushes iptproxy's rules the way a
// firewall script or an operator would, and checks that traffic through
// the NodePort and the ClusterIP is repaired within syncPeriod (plus the
// time one sync takes).
func TestTablesFlushedByAnotherProgram(t *testing.T) {
	w := newWorld(t, worldOptions{})
	canaryTables := []string{"mangle", "nat", "filter"}
	for _, tc := range []struct {
		name string
		// flush is what the other program runs.
		flush [][]string
		// broken: whether traffic stops until iptproxy repairs it.
		broken bool
	}{
		{
			name: "all tables",
			flush: [][]string{
				{"-t", "nat", "-F"}, {"-t", "nat", "-X"},
				{"-t", "filter", "-F"}, {"-t", "filter", "-X"},
				{"-t", "mangle", "-F"}, {"-t", "mangle", "-X"},
			},
			broken: true,
		},
		{
			name:   "only nat",
			flush:  [][]string{{"-t", "nat", "-F"}, {"-t", "nat", "-X"}},
			broken: true,
		},
		{
			name: "only the canary chains",
			flush: [][]string{
				{"-t", "mangle", "-X", "KUBE-PROXY-CANARY"},
				{"-t", "nat", "-X", "KUBE-PROXY-CANARY"},
				{"-t", "filter", "-X", "KUBE-PROXY-CANARY"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Let a periodic canary check pass first, so that every case
			// starts from a settled daemon.
			w.waitServed(t, converge)
			before := fullSyncs(w.d.Log())
			for _, args := range tc.flush {
				w.iptables(t, args...)
			}
			flushed := time.Now()
			if tc.broken {
				if err := w.served(t.Context()); err == nil {
					t.Fatalf("traffic still served right after the flush; the test does not break anything")
				}
			}
			took := w.waitServed(t, syncPeriod+5*time.Second)
			// The canaries come back with the repairing full sync.
			deadline := time.Now().Add(syncPeriod + 5*time.Second)
			for _, table := range canaryTables {
				for !strings.Contains(w.n.IPTablesSave(t, v1.IPv4Protocol, table), ":KUBE-PROXY-CANARY") {
					if time.Now().After(deadline) {
						t.Fatalf("canary chain not recreated in %s within %v", table, syncPeriod+5*time.Second)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			repaired := time.Since(flushed)
			if after := fullSyncs(w.d.Log()); after <= before {
				t.Errorf("no full sync logged after the flush (%d before, %d after)", before, after)
			}
			t.Logf("flush of %s: traffic served again after %v, canaries back after %v (syncPeriod %v)",
				tc.name, took.Round(10*time.Millisecond), repaired.Round(10*time.Millisecond), syncPeriod)
			// Both backends, not just one, are reachable again.
			w.waitServing(t, w.podNames(), converge)
		})
	}
}
