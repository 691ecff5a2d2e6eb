// Package memory is an iptables backend that keeps the tables in memory:
// Tables implements iptables.Interface with iptables-restore's semantics
// (strict validation, a transaction per table), records every payload and
// traces packets through the rules. The offline commands (show, trace,
// render, diff), /debug/services and the tests run on it.
package memory

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

// Tables is the in-memory iptables.Interface for one IP family. Restore
// validates payloads strictly, the way the kernel and iptables-restore
// would (unknown extensions, jumps to missing chains, deleting referenced
// chains, loops, addresses of the other family are all errors), and
// commits each table at its COMMIT. It is safe for concurrent use.
type Tables struct {
	family v1.IPFamily

	mu       sync.Mutex
	rs       *ruleset.Ruleset
	restores []RestoreCall
	failures []error
}

var _ iptables.Interface = (*Tables)(nil)

// RestoreCall records one call of Restore.
type RestoreCall struct {
	// Payload is the payload passed to Restore.
	Payload []byte
	// Err is what Restore returned.
	Err error
}

// Family returns the ruleset family of an IP family: IPv6, or IPv4 for
// anything else.
func Family(f v1.IPFamily) ruleset.Family {
	if f == v1.IPv6Protocol {
		return ruleset.FamilyIPv6
	}
	return ruleset.FamilyIPv4
}

// Parse reads iptables-save (or iptables-restore) text of a node's tables
// for family, leniently: extensions the ruleset does not model are kept as
// they are, as a node may hold anything. The result can be traced.
func Parse(text []byte, family v1.IPFamily) (*ruleset.Ruleset, error) {
	return ruleset.ParseWith(text, ruleset.Options{Family: Family(family)})
}

// New returns Tables for family whose filter, nat and mangle tables
// hold only their built-in chains, with ACCEPT policies.
func New(family v1.IPFamily) *Tables {
	if family != v1.IPv6Protocol {
		family = v1.IPv4Protocol
	}
	rs := ruleset.New(ruleset.Options{Strict: true, Family: Family(family)})
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle} {
		if err := rs.AddTable(string(t)); err != nil {
			panic(err) // the three tables are known to ruleset
		}
	}
	return &Tables{family: family, rs: rs}
}

// Family implements iptables.Interface.
func (m *Tables) Family() v1.IPFamily { return m.family }

func (m *Tables) restoreCommand() string {
	if m.family == v1.IPv6Protocol {
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
func (m *Tables) Restore(ctx context.Context, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	if len(m.failures) > 0 {
		err = m.failures[0]
		m.failures = m.failures[1:]
	} else if rerr := m.rs.Restore(payload, true); rerr != nil {
		err = m.restoreError(rerr)
	}
	m.restores = append(m.restores, RestoreCall{Payload: slices.Clone(payload), Err: err})
	return err
}

func (m *Tables) restoreError(err error) *iptables.RestoreError {
	cmd := m.restoreCommand()
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
func (m *Tables) Save(ctx context.Context, table iptables.Table) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.rs.Save(string(table))
	if out == nil {
		return nil, fmt.Errorf("iptables-save -t %s: %w", table, ruleset.ErrNoTable)
	}
	return out, nil
}

// EnsureChain implements iptables.Interface.
func (m *Tables) EnsureChain(ctx context.Context, table iptables.Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rs.Chain(string(table), chain) != nil {
		return true, nil
	}
	return false, m.rs.Exec(string(table), "-N", chain)
}

// EnsureRulePrepended implements iptables.Interface. Rules compare as
// iptables compares them for -C (so "-s 10.0.0.1" and "--source
// 10.0.0.1/32" are the same rule). A missing chain is an error.
func (m *Tables) EnsureRulePrepended(ctx context.Context, table iptables.Table, chain string, args ...string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	exists, err := m.rs.HasRule(string(table), chain, args...)
	if err != nil {
		return false, err
	}
	if exists {
		return true, nil
	}
	return false, m.rs.Exec(string(table), append([]string{"-I", chain, "1"}, args...)...)
}

// DeleteRule implements iptables.Interface.
func (m *Tables) DeleteRule(ctx context.Context, table iptables.Table, chain string, args ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	exists, err := m.rs.HasRule(string(table), chain, args...)
	if err != nil || !exists {
		return err
	}
	return m.rs.Exec(string(table), append([]string{"-D", chain}, args...)...)
}

// ChainExists implements iptables.Interface.
func (m *Tables) ChainExists(ctx context.Context, table iptables.Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rs.Chain(string(table), chain) != nil, nil
}

// DeleteChain implements iptables.Interface. Like the real one it flushes
// the chain, then deletes it: when rules still jump to it, the chain ends
// up flushed but not deleted, and the error wraps
// ruleset.ErrChainInUse.
func (m *Tables) DeleteChain(ctx context.Context, table iptables.Table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rs.Chain(string(table), chain) == nil {
		return nil
	}
	if err := m.rs.Exec(string(table), "-F", chain); err != nil {
		return err
	}
	return m.rs.Exec(string(table), "-X", chain)
}

// Ruleset returns a snapshot of the tables. Later changes to the Tables do
// not show in it, and changes to it do not affect the Tables.
func (m *Tables) Ruleset() *ruleset.Ruleset {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rs.Clone()
}

// Restores returns every Restore call so far, oldest first.
func (m *Tables) Restores() []RestoreCall {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.restores)
}

// LastRestore returns the payload of the latest Restore call, or nil.
func (m *Tables) LastRestore() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.restores) == 0 {
		return nil
	}
	return m.restores[len(m.restores)-1].Payload
}

// ResetRestores forgets the recorded Restore calls (for example after a
// test has set up its initial state).
func (m *Tables) ResetRestores() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.restores = nil
}

// FailNextRestore makes the next Restore call that has not been told to
// fail yet return err, without applying its payload. Calls queue up. A nil
// err stands for an *iptables.RestoreError as iptables-restore would
// produce for a commit the kernel refused (exit status 1, no line).
func (m *Tables) FailNextRestore(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		cmd := m.restoreCommand()
		err = &iptables.RestoreError{
			Command:  cmd,
			ExitCode: 1,
			Output:   cmd + ": injected failure",
			Err:      errors.New("injected failure"),
		}
	}
	m.failures = append(m.failures, err)
}

// Trace traces pkt through the current tables on node.
func (m *Tables) Trace(node trace.Node, pkt trace.Packet) (*trace.Result, error) {
	return trace.Trace(m.Ruleset(), node, pkt)
}
