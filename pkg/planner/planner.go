// Package planner compares the desired rules with what was last applied (or
// what the kernel holds after a restart) and produces the smallest
// iptables-restore --noflush payload that gets from one to the other:
// changed chains are rewritten whole, unchanged chains are not mentioned,
// chains that are no longer wanted are flushed and deleted.
//
// The package is pure: it neither reads nor writes the kernel.
package planner

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Applied is what iptproxy believes a table holds: a content hash per chain
// (never the rules themselves, to keep memory small at scale).
type Applied struct {
	tables map[iptables.Table]map[string]appliedChain
	// basis is, per table, the generation of the ruleset whose plan was
	// last committed, while the record holds nothing else that it would
	// not (0: unknown, after an adoption or a Forget). A ruleset with a
	// Delta since that generation is planned from its delta alone.
	basis map[iptables.Table]uint64
	// trusted is true while the record is known to match the kernel (see
	// Trust).
	trusted bool
}

// appliedChain is the record of one chain: its content hash.
type appliedChain = uint64

// NewApplied returns an empty record (nothing known to exist).
func NewApplied() *Applied {
	return &Applied{tables: map[iptables.Table]map[string]appliedChain{}, basis: map[iptables.Table]uint64{}}
}

// Follows reports whether the record is what committing the plan of render
// generation left, in both tables, so that a ruleset rendered as a change
// from it (rules.Delta) can be planned.
func (a *Applied) Follows(generation uint64) bool {
	return generation != 0 && a.basis[iptables.TableFilter] == generation && a.basis[iptables.TableNAT] == generation
}

// Trust says whether the record is known to match the kernel now, because
// nobody but iptproxy has written to the tables since they were last
// compared with it (the nftables generation proves that). A delta plan then
// writes only the chains whose content changed. Otherwise, the default, it
// writes every chain the delta holds but the dispatch chains (the
// top-level chains and every chain of a changed Service port), whatever
// their hash, as kube-proxy does: the record is what iptproxy wrote, not
// necessarily what the kernel holds.
func (a *Applied) Trust(trusted bool) { a.trusted = trusted }

// Chains returns how many chains the record holds for table.
func (a *Applied) Chains(table iptables.Table) int { return len(a.tables[table]) }

// Has reports whether chain is recorded in table.
func (a *Applied) Has(table iptables.Table, chain string) bool {
	_, ok := a.tables[table][chain]
	return ok
}

// Forget drops everything known about table, so that the next plan writes
// all of its chains.
func (a *Applied) Forget(table iptables.Table) {
	delete(a.tables, table)
	delete(a.basis, table)
}

// hashRules hashes a chain's rules' canonical texts (FNV-1a 64, a newline
// after each rule).
func hashRules(rules []iptables.Rule) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for _, r := range rules {
		s := r.String()
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= prime
		}
		h ^= '\n'
		h *= prime
	}
	return h
}

// Adopt replaces the record for a table with what an iptables-save dump
// of it holds. Built-in chains are ignored.
func (a *Applied) Adopt(saved *iptables.SavedTable) {
	m := make(map[string]appliedChain, len(saved.Chains))
	for _, c := range saved.Chains {
		if !c.Builtin() {
			m[c.Name] = hashRules(c.Rules)
		}
	}
	a.tables[saved.Name] = m
	delete(a.basis, saved.Name)
}

// Drifted compares a dump of a table with the record and returns, sorted,
// the chains that differ: every recorded chain that watched selects and
// the dump lacks or holds with other rules, and every chain that owned
// selects and the dump holds but the record does not. A table the record
// knows nothing about has no drift to report.
func (a *Applied) Drifted(saved *iptables.SavedTable, watched, owned func(string) bool) []string {
	have, ok := a.tables[saved.Name]
	if !ok {
		return nil
	}
	var drifted []string
	for name, h := range have {
		if !watched(name) {
			continue
		}
		c := saved.Chain(name)
		if c == nil || c.Builtin() || hashRules(c.Rules) != h {
			drifted = append(drifted, name)
		}
	}
	for _, c := range saved.Chains {
		if _, ok := have[c.Name]; !ok && !c.Builtin() && owned(c.Name) {
			drifted = append(drifted, c.Name)
		}
	}
	slices.Sort(drifted)
	return drifted
}

// DefaultMaxLines is the size, in restore lines, above which a plan is
// split into several transactions. On iptables-nft one transaction of some
// 435,000 lines fails with ENOBUFS, and the userspace cost of a transaction
// grows much faster than its size: measured at 10,000 Services x 10
// endpoints, 30,000 lines of KUBE-SVC chains took ~27 s of CPU in
// iptables-nft-restore, the same lines in four 7,500-line transactions
// ~0.45 s each (see docs/dispatch-tree.md). In dependencyOrder, a cold sync
// at that size costs the least restore CPU between 2,000 and 4,000 lines
// per transaction (13.4 s and 13.7 s; 18.8 s at 8,000, 25.5 s at 16,000);
// fewer transactions pay the kernel's per-commit cost, which grows with
// the table, fewer times.
const DefaultMaxLines = 4000

// Plan is the result of comparing desired rules with the record.
type Plan struct {
	// Transactions are the iptables-restore --noflush inputs to apply, in
	// order, each in its own run. A small plan is one transaction. A large
	// one is split make-before-break: every chain is declared, flushed and
	// filled in one transaction; a chain is written after the chains it
	// jumps to; chains are deleted only in the last transaction, after
	// nothing references them any more.
	Transactions [][]byte
	// Written, Deleted list the chains rewritten and deleted, per table.
	Written map[iptables.Table][]string
	Deleted map[iptables.Table][]string
	// Rules is the number of rule lines in the payload; TableRules the
	// same per table.
	Rules      int
	TableRules map[iptables.Table]int

	// commit is what Commit records: the chains written or found equal
	// to what is recorded (with their new source), and the deletions.
	commit map[iptables.Table]*tableCommit
	// generation is the planned ruleset's; Incremental is true when only
	// its delta was looked at.
	generation  uint64
	Incremental bool
}

// tableCommit is the change to one table's record.
type tableCommit struct {
	set     map[string]appliedChain
	deleted []string
}

// Changed reports whether the plan writes anything.
func (p *Plan) Changed() bool { return len(p.Transactions) > 0 }

// Payload returns the whole iptables-restore input (both tables), the
// concatenation of Transactions; empty when nothing needs writing.
func (p *Plan) Payload() []byte { return bytes.Join(p.Transactions, nil) }

// Size returns the length of Payload.
func (p *Plan) Size() int {
	n := 0
	for _, tx := range p.Transactions {
		n += len(tx)
	}
	return n
}

// Compute plans the change from the record to desired, splitting it into
// transactions of about DefaultMaxLines lines. owned says which chains
// iptproxy may delete when it no longer wants them.
func Compute(desired *rules.Ruleset, applied *Applied, owned func(string) bool) (*Plan, error) {
	return ComputeChunked(desired, applied, owned, DefaultMaxLines)
}

// tablePlan is what a plan writes in one table.
type tablePlan struct {
	name    iptables.Table
	written []*iptables.Chain
	deleted []string
	lines   int
}

// ErrNotFollowing is returned for a ruleset rendered as a change (a
// rules.Delta) from a render whose plan is not what the record last
// committed: planned as a whole ruleset, it would delete every chain it
// leaves out.
var ErrNotFollowing = errors.New("the ruleset is a change from a render the record does not follow")

// ComputeChunked is Compute with transactions of at most maxLines lines
// (a chain longer than that gets a transaction of its own); maxLines <= 0
// means one transaction, however large. A ruleset with a Delta the record
// does not follow is an error wrapping ErrNotFollowing.
func ComputeChunked(desired *rules.Ruleset, applied *Applied, owned func(string) bool, maxLines int) (*Plan, error) {
	p := &Plan{
		Written:    map[iptables.Table][]string{},
		Deleted:    map[iptables.Table][]string{},
		TableRules: map[iptables.Table]int{},
		commit:     map[iptables.Table]*tableCommit{},
	}
	p.generation = desired.Generation
	d := desired.Delta
	p.Incremental = d != nil
	if d != nil && !applied.Follows(d.Since) {
		return nil, fmt.Errorf("planning render %d, a change from render %d, with a record that follows render %d/%d: %w",
			desired.Generation, d.Since, applied.basis[iptables.TableFilter], applied.basis[iptables.TableNAT], ErrNotFollowing)
	}
	var tables []*tablePlan
	total := 0
	for _, t := range []struct {
		name   iptables.Table
		chains []*rules.Chain
	}{{iptables.TableFilter, desired.Filter}, {iptables.TableNAT, desired.NAT}} {
		tc := &tableCommit{set: map[string]appliedChain{}}
		p.commit[t.name] = tc
		var tp *tablePlan
		if p.Incremental {
			gone := d.GoneFilter
			if t.name == iptables.TableNAT {
				gone = d.GoneNAT
			}
			tp = planDelta(t.name, t.chains, gone, applied.tables[t.name], tc, owned, !applied.trusted)
		} else {
			tp = planTable(t.name, t.chains, applied.tables[t.name], tc, owned)
		}
		tc.deleted = tp.deleted
		if len(tp.written) == 0 && len(tp.deleted) == 0 {
			continue
		}
		for _, c := range tp.written {
			p.Written[t.name] = append(p.Written[t.name], c.Name)
			p.Rules += len(c.Rules)
			p.TableRules[t.name] += len(c.Rules)
		}
		p.Deleted[t.name] = tp.deleted
		tables = append(tables, tp)
		total += tp.lines
	}
	if len(tables) == 0 {
		return p, nil
	}
	if maxLines <= 0 || total <= maxLines {
		var tx iptables.Transaction
		for _, tp := range tables {
			tx.Rewrite(tp.name, tp.written, tp.deleted)
		}
		p.Transactions = [][]byte{tx.Bytes()}
	} else {
		p.Transactions = chunk(tables, maxLines)
	}
	return p, nil
}

// compare records c's hash in tc and queues c for writing when force is
// set or the record does not hold that hash already; it reports whether
// the record has c.
func (tp *tablePlan) compare(c *iptables.Chain, have map[string]appliedChain, tc *tableCommit, force bool) (recorded bool) {
	h := hashRules(c.Rules)
	old, ok := have[c.Name]
	tc.set[c.Name] = h
	if force || !ok || old != h {
		tp.written = append(tp.written, c)
		tp.lines += 1 + len(c.Rules)
	}
	return ok
}

// deleteAll queues the deletion of chains, in name order.
func (tp *tablePlan) deleteAll(chains []string) {
	slices.Sort(chains)
	tp.deleted = chains
	tp.lines += 2 * len(chains)
}

// planTable compares every desired chain of a table with the record.
func planTable(name iptables.Table, chains []*iptables.Chain, have map[string]appliedChain, tc *tableCommit, owned func(string) bool) *tablePlan {
	tp := &tablePlan{name: name}
	matchedOwned := 0
	for _, c := range chains {
		if tp.compare(c, have, tc, false) && owned(c.Name) {
			matchedOwned++
		}
	}
	// Owned chains recorded but not desired are deleted. Usually every
	// owned chain recorded is desired: count before building a set.
	haveOwned := 0
	for n := range have {
		if owned(n) {
			haveOwned++
		}
	}
	var deleted []string
	if haveOwned > matchedOwned {
		want := make(map[string]bool, len(chains))
		for _, c := range chains {
			want[c.Name] = true
		}
		for n := range have {
			if !want[n] && owned(n) {
				deleted = append(deleted, n)
			}
		}
	}
	tp.deleteAll(deleted)
	return tp
}

// planDelta plans a table from a ruleset's delta against the ruleset last
// committed: only the fresh chains can differ from the record, and only
// the gone ones can need deleting. With force (a record not known to match
// the kernel, see Applied.Trust), every fresh chain but the dispatch chains
// is written whatever the record says, as kube-proxy rewrites the
// top-level chains and every chain of a changed Service on every sync, so
// that a chain someone else changed is repaired as soon as its Service
// changes. A rebuilt dispatch subtree is written only where it differs (it
// holds many chains a change leaves as they were; the drift checks watch
// them).
func planDelta(name iptables.Table, fresh []*iptables.Chain, gone []string, have map[string]appliedChain, tc *tableCommit, owned func(string) bool, force bool) *tablePlan {
	tp := &tablePlan{name: name}
	for _, c := range fresh {
		tp.compare(c, have, tc, force && !rules.IsDispatchChain(c.Name))
	}
	var deleted []string
	for _, n := range gone {
		if _, ok := have[n]; ok && owned(n) {
			if _, again := tc.set[n]; !again && !slices.Contains(deleted, n) {
				deleted = append(deleted, n)
			}
		}
	}
	tp.deleteAll(deleted)
	return tp
}

// chunk splits a large plan into transactions: each table's written chains
// in dependency order (a chain after every written chain it jumps to),
// packed into transactions of at most maxLines lines, then one last
// transaction with every deletion.
func chunk(tables []*tablePlan, maxLines int) [][]byte {
	var out [][]byte
	for _, tp := range tables {
		ordered := dependencyOrder(tp.written)
		for i := 0; i < len(ordered); {
			j, lines := i, 0
			for j < len(ordered) && (j == i || lines+1+len(ordered[j].Rules) <= maxLines) {
				lines += 1 + len(ordered[j].Rules)
				j++
			}
			var tx iptables.Transaction
			tx.Rewrite(tp.name, ordered[i:j], nil)
			out = append(out, tx.Bytes())
			i = j
		}
	}
	var tx iptables.Transaction
	for _, tp := range tables {
		if len(tp.deleted) > 0 {
			tx.Rewrite(tp.name, nil, tp.deleted)
		}
	}
	if !tx.Empty() {
		out = append(out, tx.Bytes())
	}
	return out
}

// dependencyOrder orders chains so that each comes after the chains of the
// list it jumps or goes to (by their rules' typed targets), depth first
// from each chain in the given order: a Service's endpoint chains come
// right before its Service chain, which comes right before the dispatch
// chains that lead to it. Transactions cut from that order write most
// jumps to chains of the same transaction, which iptables-nft-restore
// resolves cheaply; a jump to a chain written by an earlier transaction
// costs it a search that grows with the size of the transaction. At 10,000
// Services x 10 endpoints a cold sync cut in 8,000-line transactions took
// 32.9 s of restore CPU ordered by chain kind (every endpoint chain, then
// every Service chain, ...) and 18.8 s in this order; in 4,000-line
// transactions 13.7 s (docs/benchmarks.md).
func dependencyOrder(chains []*iptables.Chain) []*iptables.Chain {
	byName := make(map[string]*iptables.Chain, len(chains))
	for _, c := range chains {
		byName[c.Name] = c
	}
	done := make(map[string]bool, len(chains))
	out := make([]*iptables.Chain, 0, len(chains))
	var visit func(c *iptables.Chain)
	visit = func(c *iptables.Chain) {
		if done[c.Name] {
			return
		}
		// Marked before its targets: iptables forbids loops, and a loop
		// in the input must not recurse forever.
		done[c.Name] = true
		for _, r := range c.Rules {
			if t, ok := byName[r.Target()]; ok {
				visit(t)
			}
		}
		out = append(out, c)
	}
	for _, c := range chains {
		visit(c)
	}
	return out
}

// Commit records that the plan was applied successfully: the chains it
// wrote, and those it deleted. Chains that are not owned and not desired
// (foreign chains) stay recorded as they were.
func (a *Applied) Commit(p *Plan, owned func(string) bool) {
	for table, tc := range p.commit {
		have := a.tables[table]
		if have == nil {
			have = make(map[string]appliedChain, len(tc.set))
			a.tables[table] = have
		}
		for name, c := range tc.set {
			have[name] = c
		}
		for _, name := range tc.deleted {
			if owned(name) {
				delete(have, name)
			}
		}
		a.basis[table] = p.generation
	}
}

// WrittenCount returns the number of chains written across tables.
func (p *Plan) WrittenCount() int {
	n := 0
	for _, w := range p.Written {
		n += len(w)
	}
	return n
}

// DeletedCount returns the number of chains deleted across tables.
func (p *Plan) DeletedCount() int {
	n := 0
	for _, d := range p.Deleted {
		n += len(d)
	}
	return n
}
