// Package ruleset models netfilter tables as iptables sees them and reads
// and writes them in iptables-save / iptables-restore format.
//
// A Ruleset holds tables, a Table holds chains, a Chain holds rules. Parse
// reads iptables-save output; Restore applies an iptables-restore payload
// with iptables-restore's semantics (per-table transactions, "line N
// failed" errors); Save writes a table back.
//
// Tables, chains and rules reachable from a Ruleset are immutable: Restore
// and Exec build new versions of what they change (copy on write) and
// install them when a table commits. That makes Clone cheap and lets
// readers hold on to a *Chain or *Rule while the ruleset changes. Callers
// must not modify what the accessors return.
//
// A Ruleset is not safe for concurrent use when one of the users modifies
// it.
package ruleset

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Family restricts the addresses a ruleset accepts, like the difference
// between iptables and ip6tables.
type Family uint8

// The families.
const (
	// FamilyAny accepts addresses of both families.
	FamilyAny Family = iota
	// FamilyIPv4 accepts IPv4 addresses only (iptables).
	FamilyIPv4
	// FamilyIPv6 accepts IPv6 addresses only (ip6tables).
	FamilyIPv6
)

// Options configures a Ruleset.
type Options struct {
	// Family is the IP family of the addresses in rules.
	Family Family
	// Strict rejects match extensions, target extensions and options this
	// package does not know, instead of accepting them generically. Use it
	// where the input is generated (tests of a renderer) rather than read
	// from a machine.
	Strict bool
}

// Ruleset is a set of netfilter tables.
type Ruleset struct {
	opts   Options
	tables []*Table
}

// Table is one netfilter table (filter, nat, ...).
type Table struct {
	name   string
	chains map[string]*Chain
	// nextID is the id the next new chain gets.
	nextID int32
}

// Chain is a chain of a table.
type Chain struct {
	// Name is the chain's name.
	Name string `json:"name"`
	// Builtin is set for the chains the table defines (INPUT, ...).
	Builtin bool `json:"builtin,omitempty"`
	// Policy is the verdict at the end of a built-in chain (ACCEPT or
	// DROP); it is "" for user-defined chains.
	Policy string `json:"policy,omitempty"`
	// Rules are the chain's rules in order.
	Rules []*Rule `json:"rules"`

	// owner is the transaction that created this version of the chain and
	// may still modify it.
	owner *txToken
	// id identifies the chain within its table; it survives copies and
	// renames.
	id int32
}

// Rule is one rule of a chain.
type Rule struct {
	// Args are the rule's arguments, tokenized like iptables does: what
	// follows "-A CHAIN" in iptables-save output.
	Args []string `json:"args"`
	// Text is the rule as it was written (without "-A CHAIN"); for rules
	// added from Args it is Args joined with quoting where needed.
	Text string `json:"text"`

	target    string
	isGoto    bool
	jumpChain bool  // target is a user-defined chain
	targetID  int32 // the id of that chain
}

// Target returns the argument of the rule's -j or -g ("" if none).
func (r *Rule) Target() string { return r.target }

// Goto reports whether the rule's target was given with -g.
func (r *Rule) Goto() bool { return r.isGoto }

// String returns the rule's text.
func (r *Rule) String() string { return r.Text }

// Spec parses the rule's arguments.
func (r *Rule) Spec() (*Spec, error) { return ParseSpec(r.Args) }

// builtinChains lists the built-in chains of each table in hook order; ok
// is false for a table the kernel does not have.
func builtinChains(table string) (chains []string, ok bool) {
	switch table {
	case "filter":
		return []string{"INPUT", "FORWARD", "OUTPUT"}, true
	case "nat":
		return []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, true
	case "mangle":
		return []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, true
	case "raw":
		return []string{"PREROUTING", "OUTPUT"}, true
	case "security":
		return []string{"INPUT", "FORWARD", "OUTPUT"}, true
	}
	return nil, false
}

// New returns an empty ruleset. Tables come into existence, with their
// built-in chains and ACCEPT policies, when a payload or a command first
// names them, or with AddTable.
func New(opts Options) *Ruleset {
	return &Ruleset{opts: opts}
}

// Parse reads iptables-save output (counters are accepted and dropped). It
// accepts extensions it does not know (Options.Strict is false), since
// what it reads comes from a machine.
func Parse(data []byte) (*Ruleset, error) {
	return ParseWith(data, Options{})
}

// ParseWith is Parse with options.
func ParseWith(data []byte, opts Options) (*Ruleset, error) {
	rs := New(opts)
	if err := rs.Restore(data, false); err != nil {
		return nil, err
	}
	return rs, nil
}

// Options returns the options the ruleset was created with.
func (rs *Ruleset) Options() Options { return rs.opts }

// Clone returns an independent copy of the ruleset. It is cheap: tables
// are shared until one of the copies changes them.
func (rs *Ruleset) Clone() *Ruleset {
	return &Ruleset{opts: rs.opts, tables: slices.Clone(rs.tables)}
}

// AddTable makes sure the table exists, with its built-in chains, and
// reports an error for a table the kernel does not have.
func (rs *Ruleset) AddTable(name string) error {
	if rs.Table(name) != nil {
		return nil
	}
	t, err := newTable(name)
	if err != nil {
		return err
	}
	rs.tables = append(rs.tables, t)
	return nil
}

// Tables returns the names of the tables, in the order they were created.
func (rs *Ruleset) Tables() []string {
	names := make([]string, len(rs.tables))
	for i, t := range rs.tables {
		names[i] = t.name
	}
	return names
}

// Table returns the table called name, or nil.
func (rs *Ruleset) Table(name string) *Table {
	for _, t := range rs.tables {
		if t.name == name {
			return t
		}
	}
	return nil
}

func (rs *Ruleset) setTable(t *Table) {
	for i, old := range rs.tables {
		if old.name == t.name {
			rs.tables[i] = t
			return
		}
	}
	rs.tables = append(rs.tables, t)
}

// Chains returns the names of the chains of table in iptables-save order
// (built-in chains in hook order, then user-defined chains by name), or
// nil if there is no such table.
func (rs *Ruleset) Chains(table string) []string {
	t := rs.Table(table)
	if t == nil {
		return nil
	}
	chains := t.Chains()
	names := make([]string, len(chains))
	for i, c := range chains {
		names[i] = c.Name
	}
	return names
}

// Chain returns the chain of table, or nil.
func (rs *Ruleset) Chain(table, chain string) *Chain {
	t := rs.Table(table)
	if t == nil {
		return nil
	}
	return t.Chain(chain)
}

// ChainRules returns the rules of a chain, or nil if there is no such
// chain.
func (rs *Ruleset) ChainRules(table, chain string) []*Rule {
	c := rs.Chain(table, chain)
	if c == nil {
		return nil
	}
	return c.Rules
}

// HasRule reports whether chain has a rule equal to args, compared as
// iptables compares rules for -C and -D (option spellings and address
// forms normalized). A missing table or chain has no rules.
func (rs *Ruleset) HasRule(table, chain string, args ...string) (bool, error) {
	sp := &Spec{}
	if err := parseSpec(sp, args, rs.opts); err != nil {
		return false, err
	}
	c := rs.Chain(table, chain)
	if c == nil {
		return false, nil
	}
	return c.find(sp.key()) >= 0, nil
}

// Name returns the table's name.
func (t *Table) Name() string { return t.name }

// Chain returns the chain called name, or nil.
func (t *Table) Chain(name string) *Chain { return t.chains[name] }

// Chains returns the table's chains in iptables-save order: built-in chains
// in hook order, then user-defined chains sorted by name.
func (t *Table) Chains() []*Chain {
	out := make([]*Chain, 0, len(t.chains))
	builtins, _ := builtinChains(t.name)
	for _, name := range builtins {
		if c := t.chains[name]; c != nil {
			out = append(out, c)
		}
	}
	n := len(out)
	for _, c := range t.chains {
		if !c.Builtin {
			out = append(out, c)
		}
	}
	slices.SortFunc(out[n:], func(a, b *Chain) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// References returns the number of rules in the table that jump or go to
// chain. It scans the table.
func (t *Table) References(chain string) int {
	n := 0
	for _, c := range t.chains {
		for _, r := range c.Rules {
			if r.jumpChain && r.target == chain {
				n++
			}
		}
	}
	return n
}

func newTable(name string) (*Table, error) {
	builtins, ok := builtinChains(name)
	if !ok {
		return nil, fmt.Errorf("table %q: %w", name, ErrNoTable)
	}
	t := &Table{name: name, chains: make(map[string]*Chain, len(builtins))}
	for _, c := range builtins {
		t.chains[c] = &Chain{Name: c, Builtin: true, Policy: TargetAccept, id: t.nextID}
		t.nextID++
	}
	return t, nil
}

// find returns the index of the first rule whose canonical form is key.
func (c *Chain) find(key string) int {
	sp := &Spec{}
	for i, r := range c.Rules {
		if parseSpec(sp, r.Args, Options{}) != nil {
			continue
		}
		if sp.key() == key {
			return i
		}
	}
	return -1
}

// Save renders table in iptables-save format, without counters or
// comments, deterministically: chain declarations in Chains order, then the
// rules chain by chain, then COMMIT. It returns nil for a table that does
// not exist.
func (rs *Ruleset) Save(table string) []byte {
	t := rs.Table(table)
	if t == nil {
		return nil
	}
	var b bytes.Buffer
	t.save(&b)
	return b.Bytes()
}

// SaveAll renders every table, in the order of Tables.
func (rs *Ruleset) SaveAll() []byte {
	var b bytes.Buffer
	for _, t := range rs.tables {
		t.save(&b)
	}
	return b.Bytes()
}

func (t *Table) save(b *bytes.Buffer) {
	chains := t.Chains()
	size := len(t.name) + 16
	for _, c := range chains {
		size += 2 * (len(c.Name) + 16)
		for _, r := range c.Rules {
			size += len(c.Name) + len(r.Text) + 5
		}
	}
	b.Grow(size)
	b.WriteByte('*')
	b.WriteString(t.name)
	b.WriteByte('\n')
	for _, c := range chains {
		b.WriteByte(':')
		b.WriteString(c.Name)
		b.WriteByte(' ')
		if c.Builtin {
			b.WriteString(c.Policy)
		} else {
			b.WriteByte('-')
		}
		b.WriteString(" [0:0]\n")
	}
	for _, c := range chains {
		for _, r := range c.Rules {
			b.WriteString("-A ")
			b.WriteString(c.Name)
			if r.Text != "" {
				b.WriteByte(' ')
				b.WriteString(r.Text)
			}
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
}
