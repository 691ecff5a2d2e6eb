package explain

import (
	"fmt"
	"slices"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/planner"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// DiffReport is what the daemon would change in a node's tables right now.
type DiffReport struct {
	// Tables holds one entry per table with changes.
	Tables []TableDiff `json:"tables"`
	// Rules is the number of rule lines the daemon would write.
	Rules int `json:"rulesWritten"`
	// Payload is the restore payload the daemon would apply.
	Payload string `json:"payload,omitempty"`
	// MissingJumps lists the rules in built-in chains that send packets to
	// iptproxy's chains and are missing from the kernel ("nat PREROUTING:
	// -m comment ... -j KUBE-SERVICES"); the daemon restores them on its
	// next full sync.
	MissingJumps []string `json:"missingJumps,omitempty"`
	// Error says why nothing could be planned.
	Error string `json:"error,omitempty"`
}

// TableDiff lists the chains of one table that would change.
type TableDiff struct {
	Table   string   `json:"table"`
	Added   []string `json:"added,omitempty"`
	Changed []string `json:"changed,omitempty"`
	Removed []string `json:"removed,omitempty"`
	// Rules lists, for each changed chain, the rules that would be added
	// and removed.
	Rules map[string]RuleDiff `json:"rules,omitempty"`
}

// RuleDiff is the change of one chain's rules.
type RuleDiff struct {
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
}

// Empty reports whether nothing would change.
func (d *DiffReport) Empty() bool {
	return len(d.Tables) == 0 && len(d.MissingJumps) == 0 && d.Error == ""
}

// CheckJumps sets MissingJumps: the rules of the built-in chains of base
// (the tables a daemon sets up, see BaseTables) that kernel lacks.
func (d *DiffReport) CheckJumps(base, kernel *ruleset.Ruleset) error {
	for _, table := range []string{"filter", "nat"} {
		for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
			for _, r := range base.ChainRules(table, chain) {
				ok, err := kernel.HasRule(table, chain, r.Args...)
				if err != nil {
					return fmt.Errorf("checking %s %s: %w", table, chain, err)
				}
				if !ok {
					d.MissingJumps = append(d.MissingJumps, table+" "+chain+": "+r.Text)
				}
			}
		}
	}
	return nil
}

// Diff plans, with the daemon's planner, the change from the tables in
// saves (iptables-save output per table) to desired, as a full sync would.
//
// A dump that cannot be read counts as an empty table; a desired ruleset
// the planner refuses (one rendered as a change) is reported in Error.
func Diff(desired *rules.Ruleset, saves map[iptables.Table][]byte) *DiffReport {
	applied := planner.NewApplied()
	have := map[iptables.Table]map[string][]string{}
	for t, save := range saves {
		saved, err := iptables.ParseSaveTable(t, save)
		if err != nil {
			saved, _ = iptables.ParseSaveTable(t, nil)
		}
		applied.Adopt(saved)
		have[t] = map[string][]string{}
		for _, c := range saved.Chains {
			if !c.Builtin() {
				have[t][c.Name] = iptables.Strings(c.Rules)
			}
		}
	}
	plan, err := planner.Compute(desired, applied, rules.IsServiceChain)
	if err != nil {
		return &DiffReport{Error: err.Error()}
	}
	d := &DiffReport{Rules: plan.Rules, Payload: string(plan.Payload())}
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		td := TableDiff{Table: string(t), Removed: slices.Clone(plan.Deleted[t])}
		have := have[t]
		want := map[string][]string{}
		for _, c := range desiredChains(desired, t) {
			want[c.Name] = iptables.Strings(c.Rules)
		}
		for _, c := range plan.Written[t] {
			if applied.Has(t, c) {
				td.Changed = append(td.Changed, c)
				if td.Rules == nil {
					td.Rules = map[string]RuleDiff{}
				}
				td.Rules[c] = RuleDiff{Added: minus(want[c], have[c]), Removed: minus(have[c], want[c])}
			} else {
				td.Added = append(td.Added, c)
			}
		}
		if len(td.Added)+len(td.Changed)+len(td.Removed) > 0 {
			d.Tables = append(d.Tables, td)
		}
	}
	return d
}

func desiredChains(rs *rules.Ruleset, t iptables.Table) []*rules.Chain {
	if t == iptables.TableNAT {
		return rs.NAT
	}
	return rs.Filter
}

// minus returns the rules of a not in b (as multisets, in a's order).
func minus(a, b []string) []string {
	count := map[string]int{}
	for _, r := range b {
		count[r]++
	}
	var out []string
	for _, r := range a {
		if count[r] > 0 {
			count[r]--
			continue
		}
		out = append(out, r)
	}
	return out
}
