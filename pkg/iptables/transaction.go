package iptables

import "bytes"

// Transaction builds an iptables-restore --noflush payload: one section
// per table, each ending in COMMIT (the kernel applies each table
// atomically). Its Bytes and String are exactly the payload. Lines are
// written in the order of the calls; Rewrite writes a table section in
// the usual order (declarations, rules, deletions).
//
// The zero Transaction is empty and ready to use.
type Transaction struct {
	buf   bytes.Buffer
	open  bool
	lines int
	rules int
}

// Table starts the section of table, committing the section before.
func (tx *Transaction) Table(table Table) {
	tx.commit()
	tx.buf.WriteString("*" + string(table) + "\n")
	tx.open = true
	tx.lines++
}

func (tx *Transaction) commit() {
	if tx.open {
		tx.buf.WriteString("COMMIT\n")
		tx.open = false
		tx.lines++
	}
}

// DeclareChain creates chain, or flushes it if it exists.
func (tx *Transaction) DeclareChain(chain string) {
	tx.buf.WriteString(":" + chain + " - [0:0]\n")
	tx.lines++
}

// AddRule appends rule to chain.
func (tx *Transaction) AddRule(chain string, rule Rule) {
	tx.buf.WriteString("-A ")
	tx.buf.WriteString(chain)
	if rule.text != "" {
		tx.buf.WriteByte(' ')
		tx.buf.WriteString(rule.text)
	}
	tx.buf.WriteByte('\n')
	tx.lines++
	tx.rules++
}

// DeleteChain deletes chain, which must be empty and unreferenced (declare
// it first to flush it).
func (tx *Transaction) DeleteChain(chain string) {
	tx.buf.WriteString("-X " + chain + "\n")
	tx.lines++
}

// Rewrite writes a section of table that replaces the rules of chains
// (creating those that do not exist) and flushes and deletes the chains
// named in deleted.
func (tx *Transaction) Rewrite(table Table, chains []*Chain, deleted []string) {
	tx.Table(table)
	for _, c := range chains {
		tx.DeclareChain(c.Name)
	}
	for _, name := range deleted {
		tx.DeclareChain(name)
	}
	for _, c := range chains {
		for _, r := range c.Rules {
			tx.AddRule(c.Name, r)
		}
	}
	for _, name := range deleted {
		tx.DeleteChain(name)
	}
}

// Empty reports whether nothing was written.
func (tx *Transaction) Empty() bool { return tx.buf.Len() == 0 }

// Lines returns the number of lines of the payload.
func (tx *Transaction) Lines() int { return tx.lines + btoi(tx.open) }

// Rules returns the number of rules the payload adds.
func (tx *Transaction) Rules() int { return tx.rules }

// Len returns the payload's length in bytes.
func (tx *Transaction) Len() int {
	if tx.open {
		return tx.buf.Len() + len("COMMIT\n")
	}
	return tx.buf.Len()
}

// Bytes returns the payload: every section, the last one committed. The
// transaction takes no more lines after Bytes, except a new Table.
func (tx *Transaction) Bytes() []byte {
	tx.commit()
	return tx.buf.Bytes()
}

// String returns the payload, as Bytes.
func (tx *Transaction) String() string { return string(tx.Bytes()) }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
