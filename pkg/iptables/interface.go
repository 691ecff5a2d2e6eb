// Package iptables is iptproxy's kernel boundary and the one owner of rule
// text: it applies restore payloads with iptables-restore, reads tables back
// with iptables-save, and manages the few rules that live in the built-in
// chains (jumps such as PREROUTING -> KUBE-SERVICES) with
// github.com/coreos/go-iptables.
//
// Rules are typed (Rule, Chain, RuleBuilder) with one canonical String, the
// body iptables-save prints. ReadSave and ParseSave are the one reader of
// iptables-save output; Transaction is the one writer of iptables-restore
// input. No other package writes or parses that text.
//
// Everything above this package is pure; only this package (and the
// conntrack package) touch the machine's netfilter state.
package iptables

import (
	"context"

	v1 "k8s.io/api/core/v1"
)

// Table names a netfilter table.
type Table string

// The tables iptproxy writes to.
const (
	TableFilter Table = "filter"
	TableNAT    Table = "nat"
	TableMangle Table = "mangle"
)

// Built-in chains iptproxy jumps from.
const (
	ChainPrerouting  = "PREROUTING"
	ChainInput       = "INPUT"
	ChainForward     = "FORWARD"
	ChainOutput      = "OUTPUT"
	ChainPostrouting = "POSTROUTING"
)

// Interface is the kernel boundary for one IP family, in the spirit of
// sigs.k8s.io/knftables: payloads are built with Transaction, dumps read
// with ParseSave. Runner runs iptables(-nft|-legacy)-{restore,save};
// pkg/iptables/memory keeps the tables in memory.
type Interface interface {
	// Family is the IP family this instance programs (IPv4 uses iptables,
	// IPv6 ip6tables).
	Family() v1.IPFamily

	// Restore applies payload (iptables-restore format, one or more tables
	// each ending in COMMIT) with --noflush in one iptables-restore run.
	// Each table is its own transaction: a failure leaves the failing table
	// as it was, but tables committed earlier in the same payload stay
	// applied (both backends). When the tool runs and fails the error is a
	// *RestoreError, whose Line is set when the tool named the failing line.
	Restore(ctx context.Context, payload []byte) error

	// Save returns the table in iptables-save format (without counters).
	Save(ctx context.Context, table Table) ([]byte, error)

	// EnsureChain creates chain in table unless it exists; it reports
	// whether the chain existed.
	EnsureChain(ctx context.Context, table Table, chain string) (existed bool, err error)

	// EnsureRulePrepended makes sure the rule given by args exists in chain,
	// inserting it at the top when it is missing; it reports whether it
	// existed.
	EnsureRulePrepended(ctx context.Context, table Table, chain string, args ...string) (existed bool, err error)

	// DeleteRule deletes the rule given by args from chain; a missing rule or
	// chain is not an error.
	DeleteRule(ctx context.Context, table Table, chain string, args ...string) error

	// ChainExists reports whether chain exists in table.
	ChainExists(ctx context.Context, table Table, chain string) (bool, error)

	// DeleteChain flushes and deletes chain; a missing chain is not an error.
	DeleteChain(ctx context.Context, table Table, chain string) error
}
