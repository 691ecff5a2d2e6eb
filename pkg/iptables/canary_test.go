package iptables

import (
	"context"
	"errors"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"
)

// chainSet is a minimal Interface that only knows which chains exist. After
// removeAfter ChainExists calls, the chains in pending disappear (a flush
// in progress).
type chainSet struct {
	chains      map[Table]bool
	errs        map[Table]error
	pending     []Table
	removeAfter int
	calls       int
}

func (c *chainSet) Family() v1.IPFamily                                        { return v1.IPv4Protocol }
func (c *chainSet) Restore(context.Context, []byte) error                      { return nil }
func (c *chainSet) Save(context.Context, Table) ([]byte, error)                { return nil, nil }
func (c *chainSet) DeleteRule(context.Context, Table, string, ...string) error { return nil }
func (c *chainSet) EnsureRulePrepended(context.Context, Table, string, ...string) (bool, error) {
	return false, nil
}

func (c *chainSet) EnsureChain(_ context.Context, table Table, _ string) (bool, error) {
	if err := c.errs[table]; err != nil {
		return false, err
	}
	existed := c.chains[table]
	c.chains[table] = true
	return existed, nil
}

func (c *chainSet) ChainExists(_ context.Context, table Table, _ string) (bool, error) {
	c.calls++
	if c.removeAfter > 0 && c.calls >= c.removeAfter {
		for _, t := range c.pending {
			delete(c.chains, t)
		}
	}
	if err := c.errs[table]; err != nil {
		return false, err
	}
	return c.chains[table], nil
}

func (c *chainSet) DeleteChain(_ context.Context, table Table, _ string) error {
	delete(c.chains, table)
	return nil
}

func TestCanaryMissing(t *testing.T) {
	errLock := errors.New("lock timeout")
	all := map[Table]bool{TableMangle: true, TableNAT: true, TableFilter: true}
	tests := []struct {
		name        string
		chains      map[Table]bool
		errs        map[Table]error
		pending     []Table
		removeAfter int
		want        bool
		wantErr     bool
		minCalls    int
	}{
		{name: "all present", chains: all, want: false},
		{name: "all gone", chains: map[Table]bool{}, want: true},
		{name: "first table check fails", chains: map[Table]bool{}, errs: map[Table]error{TableMangle: errLock}, wantErr: true},
		{name: "only first table checked", chains: map[Table]bool{TableMangle: true}, want: false},
		{
			name:        "flush still in progress",
			chains:      map[Table]bool{TableNAT: true, TableFilter: true},
			pending:     []Table{TableNAT, TableFilter},
			removeAfter: 5,
			want:        true,
			minCalls:    5,
		},
		{name: "partial flush gives up and reports missing", chains: map[Table]bool{TableNAT: true}, want: true},
		{name: "errors count as still there", chains: map[Table]bool{}, errs: map[Table]error{TableFilter: errLock}, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			c := &chainSet{chains: tc.chains, errs: tc.errs, pending: tc.pending, removeAfter: tc.removeAfter}
			got, err := canaryMissing(ctx, c, CanaryChain, CanaryTables(), time.Millisecond, 50*time.Millisecond)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("canaryMissing() = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
			if c.calls < tc.minCalls {
				t.Errorf("ChainExists called %d times, want at least %d", c.calls, tc.minCalls)
			}
		})
	}
}

func TestCanaryMissingContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &chainSet{chains: map[Table]bool{TableNAT: true}}
	if _, err := canaryMissing(ctx, c, CanaryChain, CanaryTables(), time.Millisecond, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("canaryMissing() with canceled context: %v", err)
	}
	if _, err := CanaryMissing(context.Background(), c, CanaryChain, nil); err == nil {
		t.Errorf("CanaryMissing() with no tables: no error")
	}
}

func TestEnsureAndDeleteCanaries(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	errBoom := errors.New("boom")
	c := &chainSet{chains: map[Table]bool{}, errs: map[Table]error{TableNAT: errBoom}}
	err := EnsureCanaries(ctx, c, CanaryChain, CanaryTables())
	if !errors.Is(err, errBoom) {
		t.Errorf("EnsureCanaries() = %v, want the nat error", err)
	}
	if !c.chains[TableMangle] || !c.chains[TableFilter] {
		t.Errorf("EnsureCanaries() stopped at the failing table: %v", c.chains)
	}
	if err := DeleteCanaries(ctx, c, CanaryChain, CanaryTables()); err != nil || len(c.chains) != 0 {
		t.Errorf("DeleteCanaries() = %v, left %v", err, c.chains)
	}
}
