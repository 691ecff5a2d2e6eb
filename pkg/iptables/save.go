package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
)

// SavedChain is a chain as iptables-save shows it.
type SavedChain struct {
	Name string
	// Policy is the verdict of a built-in chain (ACCEPT, DROP); "" for a
	// user-defined chain.
	Policy string
	Rules  []Rule
}

// Builtin reports whether the chain is one of the table's built-in chains.
func (c *SavedChain) Builtin() bool { return c.Policy != "" }

// SavedTable is one table of an iptables-save dump, chains in the order
// the dump declares them.
type SavedTable struct {
	Name   Table
	Chains []*SavedChain
	index  map[string]*SavedChain
}

// Chain returns the chain called name, or nil.
func (t *SavedTable) Chain(name string) *SavedChain {
	if t == nil {
		return nil
	}
	return t.index[name]
}

// chain returns the chain called name, declaring it as a user-defined
// chain if the dump has not.
func (t *SavedTable) chain(name string) *SavedChain {
	c := t.index[name]
	if c == nil {
		c = &SavedChain{Name: name}
		t.index[name] = c
		t.Chains = append(t.Chains, c)
	}
	return c
}

// Saved is a parsed iptables-save dump.
type Saved struct {
	Tables []*SavedTable
}

// Table returns the table called name, or nil.
func (s *Saved) Table(name Table) *SavedTable {
	for _, t := range s.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// SaveItem is one line of an iptables-save dump that ReadSave reports: a
// chain declaration (Rule unset) or a rule.
type SaveItem struct {
	Table Table
	Chain string
	// Policy is a declared built-in chain's policy ("" otherwise).
	Policy string
	// IsRule tells a rule from a declaration.
	IsRule bool
	Rule   Rule
}

// ReadSave reads iptables-save output, calling visit with each chain
// declaration and rule, in order; comments, counters and COMMIT lines are
// skipped. Reading stops at the first error visit returns.
func ReadSave(r io.Reader, visit func(SaveItem) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	var table Table
	for sc.Scan() {
		item, ok := saveLine(table, sc.Text())
		if !ok {
			continue
		}
		if item.Chain == "" {
			table = item.Table
			continue
		}
		if err := visit(item); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading iptables-save output: %w", err)
	}
	return nil
}

// saveLine reads one line of a dump of table: a table header (an item
// without a chain), a chain declaration or a rule; ok is false for lines
// that carry nothing (comments, COMMIT, blanks).
func saveLine(table Table, line string) (item SaveItem, ok bool) {
	switch {
	case strings.HasPrefix(line, "*"):
		return SaveItem{Table: Table(line[1:])}, true
	case strings.HasPrefix(line, ":"):
		f := strings.Fields(line[1:])
		if len(f) == 0 {
			return item, false
		}
		item = SaveItem{Table: table, Chain: f[0]}
		if len(f) > 1 && f[1] != "-" {
			item.Policy = f[1]
		}
		return item, true
	case strings.HasPrefix(line, "-A "):
		name, body, _ := strings.Cut(line[3:], " ")
		rule, err := ParseRule(body)
		if err != nil {
			// A rule the tools printed is what it is, even when its
			// parts cannot be told apart: keep its text.
			rule = Rule{text: body}
		}
		return SaveItem{Table: table, Chain: name, IsRule: true, Rule: rule}, true
	}
	return item, false
}

// ParseSave reads an iptables-save dump (of one table or several) into
// typed tables, chains and rules. A rule of a chain the dump does not
// declare declares it as a user-defined chain.
func ParseSave(save []byte) (*Saved, error) {
	s := &Saved{}
	var cur *SavedTable
	var c *SavedChain // the last chain seen: a dump lists a chain's rules together
	err := ReadSave(bytes.NewReader(save), func(it SaveItem) error {
		if cur == nil || cur.Name != it.Table {
			cur = s.Table(it.Table)
			if cur == nil {
				cur = &SavedTable{Name: it.Table, index: map[string]*SavedChain{}}
				s.Tables = append(s.Tables, cur)
			}
			c = nil
		}
		if c == nil || c.Name != it.Chain {
			c = cur.chain(it.Chain)
		}
		if it.IsRule {
			c.Rules = append(c.Rules, it.Rule)
		} else if it.Policy != "" {
			c.Policy = it.Policy
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// ParseSaveTable reads an iptables-save dump of one table; an empty dump
// is an empty table.
func ParseSaveTable(table Table, save []byte) (*SavedTable, error) {
	s, err := ParseSave(save)
	if err != nil {
		return nil, err
	}
	if t := s.Table(table); t != nil {
		return t, nil
	}
	if len(s.Tables) > 0 {
		return nil, fmt.Errorf("iptables-save output holds no %s table", table)
	}
	return &SavedTable{Name: table, index: map[string]*SavedChain{}}, nil
}
