package iptables

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"
)

// CanaryChain is the empty chain kube-proxy creates in mangle, nat and
// filter to notice that someone flushed the tables (a firewall reload).
const CanaryChain = "KUBE-PROXY-CANARY"

// CanaryTables are the tables kube-proxy keeps a canary in, in the order
// it checks them (mangle first: it is usually the smallest, cheap to list).
func CanaryTables() []Table {
	return []Table{TableMangle, TableNAT, TableFilter}
}

const (
	// flushSettleTimeout is how long CanaryMissing waits, once the first
	// table's canary is gone, for the other canaries to go too, so that a
	// resync does not start in the middle of a flush (kube-proxy: 5s).
	flushSettleTimeout = 5 * time.Second
	// flushSettlePoll is how often it checks meanwhile (kube-proxy: 100ms).
	flushSettlePoll = 100 * time.Millisecond
)

// EnsureCanaries creates chain in every table that lacks it. Call it at
// start and after every full resync that CanaryMissing triggered. It tries
// every table and returns the joined errors.
func EnsureCanaries(ctx context.Context, ipt Interface, chain string, tables []Table) error {
	var errs []error
	for _, table := range tables {
		if _, err := ipt.EnsureChain(ctx, table, chain); err != nil {
			errs = append(errs, fmt.Errorf("creating canary: %w", err))
		}
	}
	return errors.Join(errs...)
}

// DeleteCanaries removes chain from every table, as kube-proxy does when
// its monitor stops.
func DeleteCanaries(ctx context.Context, ipt Interface, chain string, tables []Table) error {
	var errs []error
	for _, table := range tables {
		if err := ipt.DeleteChain(ctx, table, chain); err != nil {
			errs = append(errs, fmt.Errorf("deleting canary: %w", err))
		}
	}
	return errors.Join(errs...)
}

// CanaryMissing implements one tick of kube-proxy's iptables Monitor for a
// sync loop, without a goroutine of its own. It checks tables[0] for
// chain: if the canary is there it returns false. If it is gone, it waits
// (up to 5 s, polling every 100 ms) for the canaries of the other tables to
// be gone too, so that the caller's resync does not race a flush still in
// progress, and returns true; the caller then does a full resync and calls
// EnsureCanaries again.
//
// An error from the first check (a lock timeout, say; see IsLockTimeout)
// is returned with false: it says nothing about a flush, so the caller
// should log it and check again next time. If the other canaries are still
// there after the wait (a partial flush), it logs that and still returns
// true. It returns the context's error if ctx ends while waiting.
func CanaryMissing(ctx context.Context, ipt Interface, chain string, tables []Table) (bool, error) {
	return canaryMissing(ctx, ipt, chain, tables, flushSettlePoll, flushSettleTimeout)
}

func canaryMissing(ctx context.Context, ipt Interface, chain string, tables []Table, poll, timeout time.Duration) (bool, error) {
	if len(tables) == 0 {
		return false, errors.New("no canary tables given")
	}
	logger := klog.FromContext(ctx)
	exists, err := ipt.ChainExists(ctx, tables[0], chain)
	if err != nil {
		return false, fmt.Errorf("checking canary: %w", err)
	}
	if exists {
		return false, nil
	}
	logger.V(2).Info("iptables canary deleted", "family", ipt.Family(), "table", tables[0], "chain", chain)

	deadline := time.Now().Add(timeout)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-timer.C:
		}
		if othersGone(ctx, ipt, chain, tables[1:]) {
			return true, nil
		}
		if !time.Now().Before(deadline) {
			logger.Info("Inconsistent iptables state detected: canary gone from some tables only",
				"family", ipt.Family(), "chain", chain, "tables", tables)
			return true, nil
		}
		timer.Reset(poll)
	}
}

// othersGone reports whether chain is missing from every table; an error
// counts as "still there", as in kube-proxy.
func othersGone(ctx context.Context, ipt Interface, chain string, tables []Table) bool {
	for _, table := range tables {
		if exists, err := ipt.ChainExists(ctx, table, chain); exists || err != nil {
			return false
		}
	}
	return true
}
