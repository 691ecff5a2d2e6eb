// Package planner compares the desired rules with what was last applied (or
// what the kernel holds after a restart) and produces the smallest
// iptables-restore --noflush payload that gets from one to the other:
// changed chains are rewritten whole, unchanged chains are not mentioned,
// chains that are no longer wanted are flushed and deleted.
//
// The package is pure: it neither reads nor writes the kernel.
package planner

import (
	"bufio"
	"bytes"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Applied is what iptproxy believes a table holds: a content hash per chain.
type Applied struct {
	tables map[iptables.Table]map[string]uint64
}

// NewApplied returns an empty record (nothing known to exist).
func NewApplied() *Applied {
	return &Applied{tables: map[iptables.Table]map[string]uint64{}}
}

// Chains returns how many chains the record holds for table.
func (a *Applied) Chains(table iptables.Table) int { return len(a.tables[table]) }

// Has reports whether chain is recorded in table.
func (a *Applied) Has(table iptables.Table, chain string) bool {
	_, ok := a.tables[table][chain]
	return ok
}

// Forget drops everything known about table, so that the next plan writes
// all of its chains.
func (a *Applied) Forget(table iptables.Table) { delete(a.tables, table) }

// hashRules hashes a chain's rule bodies.
func hashRules(rules []string) uint64 {
	h := fnv.New64a()
	for _, r := range rules {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	return h.Sum64()
}

// Adopt replaces the record for table with what an iptables-save dump of
// it holds. Built-in chains are ignored.
func (a *Applied) Adopt(table iptables.Table, save []byte) {
	chains := ParseSave(save)
	m := make(map[string]uint64, len(chains))
	for name, body := range chains {
		m[name] = hashRules(body)
	}
	a.tables[table] = m
}

// ParseSave groups an iptables-save dump of one table into the rule bodies
// of each user-defined chain (built-in chains, which have a policy, are left
// out).
func ParseSave(save []byte) map[string][]string {
	chains := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	builtin := map[string]bool{}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) == 0 {
				continue
			}
			if len(f) > 1 && f[1] != "-" {
				builtin[f[0]] = true
				continue
			}
			if _, ok := chains[f[0]]; !ok {
				chains[f[0]] = nil
			}
		case strings.HasPrefix(line, "-A "):
			rest := line[3:]
			i := strings.IndexByte(rest, ' ')
			name, body := rest, ""
			if i >= 0 {
				name, body = rest[:i], rest[i+1:]
			}
			if builtin[name] {
				continue
			}
			chains[name] = append(chains[name], body)
		}
	}
	return chains
}

// Plan is the result of comparing desired rules with the record.
type Plan struct {
	// Payload is the iptables-restore input (both tables); empty when
	// nothing needs writing.
	Payload []byte
	// Written, Deleted list the chains rewritten and deleted, per table.
	Written map[iptables.Table][]string
	Deleted map[iptables.Table][]string
	// Rules is the number of rule lines in the payload.
	Rules int

	desired map[iptables.Table]map[string]uint64
}

// Changed reports whether the plan writes anything.
func (p *Plan) Changed() bool { return len(p.Payload) > 0 }

// Compute plans the change from the record to desired. owned says which
// chains iptproxy may delete when it no longer wants them.
func Compute(desired *rules.Ruleset, applied *Applied, owned func(string) bool) *Plan {
	p := &Plan{
		Written: map[iptables.Table][]string{},
		Deleted: map[iptables.Table][]string{},
		desired: map[iptables.Table]map[string]uint64{},
	}
	var buf bytes.Buffer
	for _, t := range []struct {
		name   iptables.Table
		chains []*rules.Chain
	}{{iptables.TableFilter, desired.Filter}, {iptables.TableNAT, desired.NAT}} {
		have := applied.tables[t.name]
		want := make(map[string]uint64, len(t.chains))
		var decl, body bytes.Buffer
		var written []string
		for _, c := range t.chains {
			h := hashRules(c.Rules)
			want[c.Name] = h
			if old, ok := have[c.Name]; ok && old == h {
				continue
			}
			written = append(written, c.Name)
			decl.WriteString(":" + c.Name + " - [0:0]\n")
			for _, r := range c.Rules {
				body.WriteString("-A " + c.Name + " " + r + "\n")
				p.Rules++
			}
		}
		var deleted []string
		for name := range have {
			if _, ok := want[name]; !ok && owned(name) {
				deleted = append(deleted, name)
			}
		}
		slices.Sort(deleted)
		for _, name := range deleted {
			decl.WriteString(":" + name + " - [0:0]\n")
			body.WriteString("-X " + name + "\n")
		}
		p.desired[t.name] = want
		if len(written) == 0 && len(deleted) == 0 {
			continue
		}
		p.Written[t.name] = written
		p.Deleted[t.name] = deleted
		buf.WriteString("*" + string(t.name) + "\n")
		buf.Write(decl.Bytes())
		buf.Write(body.Bytes())
		buf.WriteString("COMMIT\n")
	}
	p.Payload = buf.Bytes()
	return p
}

// Commit records that the plan was applied successfully. Chains that are
// not owned and not desired (foreign chains) stay recorded as they were.
func (a *Applied) Commit(p *Plan, owned func(string) bool) {
	for table, want := range p.desired {
		have := a.tables[table]
		next := make(map[string]uint64, len(want))
		for name, h := range have {
			if _, ok := want[name]; !ok && !owned(name) {
				next[name] = h
			}
		}
		for name, h := range want {
			next[name] = h
		}
		a.tables[table] = next
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
