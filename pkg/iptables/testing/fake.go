// Package testing provides Fake, an in-memory iptables.Interface for unit
// tests. It keeps the tables in a ruleset.Ruleset, applies restore
// payloads with iptables-restore's semantics, records every payload and can
// trace packets through the rules.
package testing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// Fake is an in-memory iptables.Interface for one IP family. Restore
// validates payloads strictly, the way the kernel and iptables-restore
// would (unknown extensions, jumps to missing chains, deleting referenced
// chains, loops, addresses of the other family are all errors), and
// commits each table at its COMMIT. It is safe for concurrent use.
type Fake struct {
	family v1.IPFamily

	mu       sync.Mutex
	rs       *ruleset.Ruleset
	restores []RestoreCall
	failures []error
}

var _ iptables.Interface = (*Fake)(nil)

// RestoreCall records one call of Restore.
type RestoreCall struct {
	// Payload is the payload passed to Restore.
	Payload []byte
	// Err is what Restore returned.
	Err error
}

// NewFake returns a Fake for family whose filter, nat and mangle tables
// hold only their built-in chains, with ACCEPT policies.
func NewFake(family v1.IPFamily) *Fake {
	opts := ruleset.Options{Strict: true, Family: ruleset.FamilyIPv4}
	if family == v1.IPv6Protocol {
		opts.Family = ruleset.FamilyIPv6
	} else {
		family = v1.IPv4Protocol
	}
	rs := ruleset.New(opts)
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle} {
		if err := rs.AddTable(string(t)); err != nil {
			panic(err) // the three tables are known to ruleset
		}
	}
	return &Fake{family: family, rs: rs}
}

// Family implements iptables.Interface.
func (f *Fake) Family() v1.IPFamily { return f.family }

func (f *Fake) restoreCommand() string {
	if f.family == v1.IPv6Protocol {
		return "ip6tables-restore"
	}
	return "iptables-restore"
}

// Restore implements iptables.Interface: it applies payload as
// "iptables-restore --noflush" would and records it. A failure leaves the
// failing table as it was (tables committed earlier in the payload stay
// committed) and is an *iptables.RestoreError whose Line is the failing
// line and whose Err is the *ruleset.LineError, so errors.Is works with the
// ruleset.Err* values. A failure queued with FailNextRestore is returned
// instead, without touching the tables.
func (f *Fake) Restore(ctx context.Context, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if len(f.failures) > 0 {
		err = f.failures[0]
		f.failures = f.failures[1:]
	} else if rerr := f.rs.Restore(payload, true); rerr != nil {
		err = f.restoreError(rerr)
	}
	f.restores = append(f.restores, RestoreCall{Payload: slices.Clone(payload), Err: err})
	return err
}

func (f *Fake) restoreError(err error) *iptables.RestoreError {
	cmd := f.restoreCommand()
	re := &iptables.RestoreError{Command: cmd, ExitCode: 1, Err: err, Output: fmt.Sprintf("%s: %v", cmd, err)}
	var le *ruleset.LineError
	if errors.As(err, &le) {
		re.Line = le.Line
		re.Output = fmt.Sprintf("%s: line %d failed: %v", cmd, le.Line, le.Err)
	}
	if errors.Is(err, ruleset.ErrSyntax) {
		re.ExitCode = 2
	}
	return re
}

// Save implements iptables.Interface. The output is deterministic: chains
// in iptables-save order, no counters, no comments.
func (f *Fake) Save(ctx context.Context, table iptables.Table) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.rs.Save(string(table))
	if out == nil {
		return nil, fmt.Errorf("iptables-save -t %s: %w", table, ruleset.ErrNoTable)
	}
	return out, nil
}

// EnsureChain implements iptables.Interface.
func (f *Fake) EnsureChain(ctx context.Context, table iptables.Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rs.Chain(string(table), chain) != nil {
		return true, nil
	}
	return false, f.rs.Exec(string(table), "-N", chain)
}

// EnsureRulePrepended implements iptables.Interface. Rules compare as
// iptables compares them for -C (so "-s 10.0.0.1" and "--source
// 10.0.0.1/32" are the same rule). A missing chain is an error.
func (f *Fake) EnsureRulePrepended(ctx context.Context, table iptables.Table, chain string, args ...string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	exists, err := f.rs.HasRule(string(table), chain, args...)
	if err != nil {
		return false, err
	}
	if exists {
		return true, nil
	}
	return false, f.rs.Exec(string(table), append([]string{"-I", chain, "1"}, args...)...)
}

// DeleteRule implements iptables.Interface.
func (f *Fake) DeleteRule(ctx context.Context, table iptables.Table, chain string, args ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	exists, err := f.rs.HasRule(string(table), chain, args...)
	if err != nil || !exists {
		return err
	}
	return f.rs.Exec(string(table), append([]string{"-D", chain}, args...)...)
}

// ChainExists implements iptables.Interface.
func (f *Fake) ChainExists(ctx context.Context, table iptables.Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rs.Chain(string(table), chain) != nil, nil
}

// DeleteChain implements iptables.Interface. Like the real one it flushes
// the chain, then deletes it: when rules still jump to it, the chain ends
// up flushed but not deleted, and the error wraps
// ruleset.ErrChainInUse.
func (f *Fake) DeleteChain(ctx context.Context, table iptables.Table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rs.Chain(string(table), chain) == nil {
		return nil
	}
	if err := f.rs.Exec(string(table), "-F", chain); err != nil {
		return err
	}
	return f.rs.Exec(string(table), "-X", chain)
}

// Ruleset returns a snapshot of the tables. Later changes to the Fake do
// not show in it, and changes to it do not affect the Fake.
func (f *Fake) Ruleset() *ruleset.Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rs.Clone()
}

// Restores returns every Restore call so far, oldest first.
func (f *Fake) Restores() []RestoreCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.restores)
}

// LastRestore returns the payload of the latest Restore call, or nil.
func (f *Fake) LastRestore() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.restores) == 0 {
		return nil
	}
	return f.restores[len(f.restores)-1].Payload
}

// ResetRestores forgets the recorded Restore calls (for example after a
// test has set up its initial state).
func (f *Fake) ResetRestores() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = nil
}

// FailNextRestore makes the next Restore call that has not been told to
// fail yet return err, without applying its payload. Calls queue up. A nil
// err stands for an *iptables.RestoreError as iptables-restore would
// produce for a commit the kernel refused (exit status 1, no line).
func (f *Fake) FailNextRestore(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		cmd := f.restoreCommand()
		err = &iptables.RestoreError{
			Command:  cmd,
			ExitCode: 1,
			Output:   cmd + ": injected failure",
			Err:      errors.New("injected failure"),
		}
	}
	f.failures = append(f.failures, err)
}

// Trace traces pkt through the current tables on node.
func (f *Fake) Trace(node trace.Node, pkt trace.Packet) (*trace.Result, error) {
	return trace.Trace(f.Ruleset(), node, pkt)
}
