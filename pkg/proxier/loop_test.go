package proxier

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// healthLog records the HealthReporter calls.
type healthLog struct {
	mu    sync.Mutex
	calls []string
	// restores returns how many restores the kernel has seen; Updated
	// records it.
	restores      func() int
	restoresAtUpd []int
}

func (h *healthLog) add(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, s)
}

func (h *healthLog) Started(v1.IPFamily)      { h.add("started") }
func (h *healthLog) QueuedUpdate(v1.IPFamily) { h.add("queued") }
func (h *healthLog) Updated(v1.IPFamily) {
	n := h.restores()
	h.add("updated")
	h.mu.Lock()
	h.restoresAtUpd = append(h.restoresAtUpd, n)
	h.mu.Unlock()
}

func (h *healthLog) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// TestRunHealthAndRetries runs the sync loop on the fake: the health window
// opens with Started (not Updated), a failed sync reports no Updated and is
// retried after the sync period, and cancelling the context ends the loop.
func TestRunHealthAndRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failFirst bool
	}{
		{name: "first sync succeeds"},
		{name: "first sync fails, the retry succeeds", failFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, ctx := ktesting.NewTestContext(t)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			fake := memory.New(v1.IPv4Protocol)
			if tc.failFirst {
				fake.FailNextRestore(nil)
			}
			health := &healthLog{restores: func() int { return len(fake.Restores()) }}
			const period = 200 * time.Millisecond
			p := New(logger, Options{
				Rules: rules.Config{
					Family:        v1.IPv4Protocol,
					NodeName:      "node-a",
					NodeIPs:       []netip.Addr{netip.MustParseAddr("192.0.2.10")},
					MasqueradeBit: 14,
				},
				SyncPeriod: period,
				IPTables:   fake,
				Health:     health,
			})
			loadRichCluster(p)
			done := make(chan struct{})
			go func() { p.Run(ctx); close(done) }()
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()

			deadline := time.Now().Add(10 * time.Second)
			for !slices.Contains(health.get(), "updated") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			calls := health.get()
			// Started may come after the informers' first QueuedUpdate.
			if !slices.Contains(calls, "started") {
				t.Errorf("health calls %v, want Started", calls)
			}
			if !slices.Contains(calls, "updated") {
				t.Fatalf("no successful sync reported: %v", calls)
			}
			health.mu.Lock()
			firstUpdate := health.restoresAtUpd[0]
			health.mu.Unlock()
			// Updated only after a restore that succeeded: the second
			// when the first failed.
			want := 1
			if tc.failFirst {
				want = 2
			}
			if firstUpdate < want {
				t.Errorf("first Updated after %d restores (first fails: %v)", firstUpdate, tc.failFirst)
			}
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after the context ended")
			}
		})
	}
}

// savesCounter counts the iptables-save runs on a fake.
type savesCounter struct {
	*memory.Tables
	mu    sync.Mutex
	saves int
}

func (s *savesCounter) Save(ctx context.Context, table iptables.Table) ([]byte, error) {
	s.mu.Lock()
	s.saves++
	s.mu.Unlock()
	return s.Tables.Save(ctx, table)
}

func (s *savesCounter) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves
}

// TestRunReadsTablesWhileInformersList checks that the loop reads the
// tables (iptables-save, seconds at scale) as it starts, while the
// informers still list, and that the first sync adopts those dumps rather
// than reading again, unless they grew too old.
func TestRunReadsTablesWhileInformersList(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wait      time.Duration // clock advance between the dumps and the lists' end
		wantSaves int
	}{
		{name: "lists end soon: the first sync adopts the early dumps", wait: time.Second, wantSaves: 2},
		{name: "lists end late: the first sync reads again", wait: time.Minute, wantSaves: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, ctx := ktesting.NewTestContext(t)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ipt := &savesCounter{Tables: memory.New(v1.IPv4Protocol)}
			var clockMu sync.Mutex
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
			health := &healthLog{restores: func() int { return len(ipt.Restores()) }}
			p := New(logger, Options{
				Rules:      rules.Config{Family: v1.IPv4Protocol, NodeName: "node-a", MasqueradeBit: 14},
				SyncPeriod: time.Minute,
				IPTables:   ipt,
				Health:     health,
				Clock:      clock,
			})
			loadRichCluster(p)
			done := make(chan struct{})
			go func() { p.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()

			deadline := time.Now().Add(10 * time.Second)
			for ipt.count() < 2 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if n := ipt.count(); n != 2 {
				t.Fatalf("%d tables read before the informers synced; want 2 (filter, nat)", n)
			}
			clockMu.Lock()
			now = now.Add(tc.wait)
			clockMu.Unlock()
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
			for !slices.Contains(health.get(), "updated") && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if rs := ipt.Restores(); len(rs) == 0 || rs[0].Err != nil || !bytes.Contains(rs[0].Payload, []byte(":"+rules.ChainServices)) {
				t.Fatalf("restores %+v; want a first sync that wrote the rules", rs)
			}
			if n := ipt.count(); n != tc.wantSaves {
				t.Errorf("%d tables read in all; want %d", n, tc.wantSaves)
			}
		})
	}
}
