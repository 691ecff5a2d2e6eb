package planner

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// chain returns a chain whose rules jump to targets, one rule each.
func chain(name string, targets ...string) *rules.Chain {
	c := &rules.Chain{Name: name}
	for _, tg := range targets {
		c.Rules = append(c.Rules, iptables.MustParseRule("-j "+tg))
	}
	return c
}

func adopt(t *testing.T, a *Applied, table iptables.Table, save string) {
	t.Helper()
	tb, err := iptables.ParseSaveTable(table, []byte(save))
	if err != nil {
		t.Fatal(err)
	}
	a.Adopt(tb)
}

// TestCompute checks full plans against an adopted dump: what is written,
// what is deleted (owned chains only) and the payload.
func TestCompute(t *testing.T) {
	const dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-OLD - [0:0]\n:FOREIGN - [0:0]\n" +
		"-A PREROUTING -j KUBE-SVC-A\n-A KUBE-SVC-A -j KUBE-SEP-1\n-A KUBE-SEP-OLD -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n"
	for _, tc := range []struct {
		name             string
		nat              []*rules.Chain
		written, deleted []string
		payload          string
	}{
		{
			name:    "equal chains are not written; owned chains not wanted are deleted, foreign ones kept",
			nat:     []*rules.Chain{chain("KUBE-SVC-A", "KUBE-SEP-1")},
			deleted: []string{"KUBE-SEP-OLD"},
			payload: "*nat\n:KUBE-SEP-OLD - [0:0]\n-X KUBE-SEP-OLD\nCOMMIT\n",
		},
		{
			name:    "a changed chain is rewritten whole, a new one declared",
			nat:     []*rules.Chain{chain("KUBE-SVC-A", "KUBE-SEP-2"), chain("KUBE-SEP-2", "DNAT"), chain("KUBE-SEP-OLD", "DNAT")},
			written: []string{"KUBE-SVC-A", "KUBE-SEP-2", "KUBE-SEP-OLD"},
			payload: "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-2 - [0:0]\n:KUBE-SEP-OLD - [0:0]\n" +
				"-A KUBE-SVC-A -j KUBE-SEP-2\n-A KUBE-SEP-2 -j DNAT\n-A KUBE-SEP-OLD -j DNAT\nCOMMIT\n",
		},
		{
			name:    "an empty desired chain is declared (flushed); an adopted one with the same rules is left alone",
			nat:     []*rules.Chain{{Name: "KUBE-SVC-A"}, chain("KUBE-SEP-OLD", "DNAT --to-destination 10.0.0.1:80")},
			written: []string{"KUBE-SVC-A"},
			payload: "*nat\n:KUBE-SVC-A - [0:0]\nCOMMIT\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := NewApplied()
			adopt(t, a, iptables.TableNAT, dump)
			adopt(t, a, iptables.TableFilter, "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
			p, err := Compute(&rules.Ruleset{NAT: tc.nat}, a, rules.IsServiceChain)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Written[iptables.TableNAT]; !slices.Equal(got, tc.written) {
				t.Errorf("written %q, want %q", got, tc.written)
			}
			if got := p.Deleted[iptables.TableNAT]; !slices.Equal(got, tc.deleted) {
				t.Errorf("deleted %q, want %q", got, tc.deleted)
			}
			if got := string(p.Payload()); got != tc.payload {
				t.Errorf("payload\n%s\nwant\n%s", got, tc.payload)
			}
			if p.Size() != len(tc.payload) || p.Incremental {
				t.Errorf("size %d incremental %v", p.Size(), p.Incremental)
			}
			a.Commit(p, rules.IsServiceChain)
			if !a.Has(iptables.TableNAT, "FOREIGN") || a.Has(iptables.TableNAT, "PREROUTING") {
				t.Errorf("foreign chain dropped or built-in chain recorded")
			}
			if again, err := Compute(&rules.Ruleset{NAT: tc.nat}, a, rules.IsServiceChain); err != nil || again.Changed() {
				t.Errorf("plan after commit: %v, writes %q", err, again.Payload())
			}
		})
	}
}

// TestComputeDelta checks plans of rulesets rendered as a change: only
// fresh chains are compared, only gone chains deleted, and the Follows
// contract is an error, not a panic.
func TestComputeDelta(t *testing.T) {
	full := &rules.Ruleset{Generation: 1, NAT: []*rules.Chain{chain("KUBE-SERVICES", rules.PrefixDispatch+"D"), chain(rules.PrefixDispatch+"D", "KUBE-SVC-A"),
		chain("KUBE-SVC-A", "KUBE-SEP-1"), chain("KUBE-SEP-1", "DNAT")}}
	for _, tc := range []struct {
		name             string
		commitFirst      bool
		delta            *rules.Ruleset
		written, deleted []string
		err              error
	}{
		{
			name:        "a fresh chain changed, one gone",
			commitFirst: true,
			delta: &rules.Ruleset{Generation: 2, Delta: &rules.Delta{Since: 1, GoneNAT: []string{"KUBE-SEP-1"}},
				NAT: []*rules.Chain{chain("KUBE-SVC-A", "KUBE-SEP-2"), chain("KUBE-SEP-2", "DNAT")}},
			written: []string{"KUBE-SVC-A", "KUBE-SEP-2"}, deleted: []string{"KUBE-SEP-1"},
		},
		{
			name:        "a fresh chain equal to the record is written all the same; a gone chain not recorded is not deleted",
			commitFirst: true,
			delta: &rules.Ruleset{Generation: 2, Delta: &rules.Delta{Since: 1, GoneNAT: []string{"KUBE-SEP-9"}},
				NAT: []*rules.Chain{chain("KUBE-SVC-A", "KUBE-SEP-1")}},
			written: []string{"KUBE-SVC-A"},
		},
		{
			name:        "a fresh dispatch chain equal to the record is not written",
			commitFirst: true,
			delta: &rules.Ruleset{Generation: 2, Delta: &rules.Delta{Since: 1},
				NAT: []*rules.Chain{chain(rules.PrefixDispatch+"D", "KUBE-SVC-A"), chain(rules.PrefixDispatch+"E", "KUBE-SVC-A")}},
			written: []string{rules.PrefixDispatch + "E"},
		},
		{
			name:        "a chain both gone and fresh stays",
			commitFirst: true,
			delta: &rules.Ruleset{Generation: 2, Delta: &rules.Delta{Since: 1, GoneNAT: []string{"KUBE-SEP-1"}},
				NAT: []*rules.Chain{chain("KUBE-SEP-1", "DNAT")}},
			written: []string{"KUBE-SEP-1"},
		},
		{
			name:  "the record does not follow the delta's base",
			delta: &rules.Ruleset{Generation: 2, Delta: &rules.Delta{Since: 1}},
			err:   ErrNotFollowing,
		},
		{
			name:        "a delta from an older render",
			commitFirst: true,
			delta:       &rules.Ruleset{Generation: 3, Delta: &rules.Delta{Since: 2}},
			err:         ErrNotFollowing,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := NewApplied()
			if tc.commitFirst {
				p, err := Compute(full, a, rules.IsServiceChain)
				if err != nil {
					t.Fatal(err)
				}
				a.Commit(p, rules.IsServiceChain)
				if !a.Follows(1) {
					t.Fatal("the record does not follow the committed render")
				}
			}
			p, err := Compute(tc.delta, a, rules.IsServiceChain)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if !p.Incremental || !slices.Equal(p.Written[iptables.TableNAT], tc.written) || !slices.Equal(p.Deleted[iptables.TableNAT], tc.deleted) {
				t.Errorf("incremental %v written %q deleted %q; want %q %q", p.Incremental, p.Written[iptables.TableNAT], p.Deleted[iptables.TableNAT], tc.written, tc.deleted)
			}
			a.Commit(p, rules.IsServiceChain)
			if !a.Follows(tc.delta.Generation) {
				t.Errorf("the record does not follow render %d after its commit", tc.delta.Generation)
			}
		})
	}
}

// TestComputeChunkedOrder checks that a split plan writes every chain after
// the chains it jumps to and deletes only in its last transaction, and that
// a small plan is one transaction.
func TestComputeChunkedOrder(t *testing.T) {
	desired := &rules.Ruleset{NAT: []*rules.Chain{
		chain("KUBE-SERVICES", "KUBE-SVC-DSP-B", "KUBE-NODEPORTS"),
		chain("KUBE-NODEPORTS", "KUBE-EXT-A"),
		chain("KUBE-SVC-DSP-B", "KUBE-SVC-DSP-C", "KUBE-SVC-A"),
		chain("KUBE-SVC-DSP-C", "KUBE-SVC-A"),
		chain("KUBE-EXT-A", "KUBE-MARK-MASQ", "KUBE-SVC-A"),
		chain("KUBE-MARK-MASQ", "MARK"),
		chain("KUBE-SVC-A", "KUBE-SEP-1", "KUBE-SEP-2"),
		chain("KUBE-SEP-1", "DNAT"),
		chain("KUBE-SEP-2", "DNAT"),
	}}
	applied := NewApplied()
	adopt(t, applied, iptables.TableNAT, "*nat\n:KUBE-SEP-OLD - [0:0]\n:FOREIGN - [0:0]\n-A KUBE-SEP-OLD -j DNAT\nCOMMIT\n")

	one, err := ComputeChunked(desired, applied, rules.IsServiceChain, 100)
	if err != nil || len(one.Transactions) != 1 {
		t.Fatalf("small plan: %v, %d transactions, want 1", err, len(one.Transactions))
	}

	p, err := ComputeChunked(desired, applied, rules.IsServiceChain, 3)
	if err != nil || len(p.Transactions) < 3 {
		t.Fatalf("plan with limit 3: %v, %d transactions, want several", err, len(p.Transactions))
	}
	pos := map[string]int{}
	for i, tx := range p.Transactions {
		for _, line := range strings.Split(string(tx), "\n") {
			if strings.HasPrefix(line, ":") {
				name := strings.Fields(line[1:])[0]
				if _, ok := pos[name]; !ok {
					pos[name] = i
				}
			}
			if strings.HasPrefix(line, "-X ") && i != len(p.Transactions)-1 {
				t.Errorf("transaction %d deletes %s; only the last may", i, line)
			}
		}
	}
	for _, c := range desired.NAT {
		for _, r := range c.Rules {
			if tp, ok := pos[r.Target()]; ok && tp > pos[c.Name] {
				t.Errorf("%s (transaction %d) jumps to %s written later (transaction %d)", c.Name, pos[c.Name], r.Target(), tp)
			}
		}
	}
	if got := p.Deleted[iptables.TableNAT]; len(got) != 1 || got[0] != "KUBE-SEP-OLD" {
		t.Errorf("deleted %v, want [KUBE-SEP-OLD] (FOREIGN is not ours)", got)
	}

	applied.Commit(p, rules.IsServiceChain)
	if applied.Has(iptables.TableNAT, "KUBE-SEP-OLD") || !applied.Has(iptables.TableNAT, "FOREIGN") || !applied.Has(iptables.TableNAT, "KUBE-SVC-A") {
		t.Errorf("record after commit is wrong")
	}
	if again, err := Compute(desired, applied, rules.IsServiceChain); err != nil || again.Changed() {
		t.Errorf("second plan: %v, writes %s", err, again.Payload())
	}
	// A changed chain is written even when the renderer reuses the name.
	desired.NAT[6] = chain("KUBE-SVC-A", "KUBE-SEP-1")
	if p, _ := Compute(desired, applied, rules.IsServiceChain); len(p.Written[iptables.TableNAT]) != 1 || len(p.Deleted[iptables.TableNAT]) != 0 {
		t.Errorf("after one change: written %v deleted %v", p.Written, p.Deleted)
	}
}

// TestDependencyOrder checks the order chains are written in when a plan
// is split: by typed jump and goto targets, loops cut, ties in the given
// order.
func TestDependencyOrder(t *testing.T) {
	gotoRule := iptables.MustParseRule("-g C")
	for _, tc := range []struct {
		name   string
		chains []*iptables.Chain
		want   []string
	}{
		{"independent chains keep their order", []*iptables.Chain{chain("A"), chain("B", "DNAT")}, []string{"A", "B"}},
		{"a chain after its targets", []*iptables.Chain{chain("A", "B"), chain("B", "C"), chain("C")}, []string{"C", "B", "A"}},
		{"goto counts", []*iptables.Chain{{Name: "A", Rules: []iptables.Rule{gotoRule}}, chain("C")}, []string{"C", "A"}},
		{"a comment naming a chain does not", []*iptables.Chain{{Name: "A", Rules: []iptables.Rule{(&iptables.RuleBuilder{}).Comment("-j B").Rule()}}, chain("B")}, []string{"A", "B"}},
		{"a loop ends", []*iptables.Chain{chain("A", "B"), chain("B", "A")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range dependencyOrder(tc.chains) {
				got = append(got, c.Name)
			}
			if len(got) != len(tc.chains) {
				t.Fatalf("got %q from %d chains", got, len(tc.chains))
			}
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDrifted checks the comparison of a dump with the record: changed,
// missing and unknown owned chains are reported, foreign and unwatched
// ones are not.
func TestDrifted(t *testing.T) {
	a := NewApplied()
	p, err := Compute(&rules.Ruleset{NAT: []*rules.Chain{chain("KUBE-SVC-A", "KUBE-SEP-1"), chain("KUBE-SEP-1", "DNAT"), chain("KUBE-SEP-2", "DNAT")}}, a, rules.IsServiceChain)
	if err != nil {
		t.Fatal(err)
	}
	a.Commit(p, rules.IsServiceChain)
	const dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-1 - [0:0]\n:KUBE-SEP-9 - [0:0]\n:FOREIGN - [0:0]\n" +
		"-A PREROUTING -j KUBE-SVC-A\n-A KUBE-SVC-A -j KUBE-SEP-1\n-A KUBE-SEP-1 -j ACCEPT\nCOMMIT\n"
	saved, err := iptables.ParseSaveTable(iptables.TableNAT, []byte(dump))
	if err != nil {
		t.Fatal(err)
	}
	all := func(string) bool { return true }
	if got, want := a.Drifted(saved, all, rules.IsServiceChain), []string{"KUBE-SEP-1", "KUBE-SEP-2", "KUBE-SEP-9"}; !slices.Equal(got, want) {
		t.Errorf("drifted %q, want %q", got, want)
	}
	onlySVC := func(n string) bool { return strings.HasPrefix(n, "KUBE-SVC-") }
	if got := a.Drifted(saved, onlySVC, func(string) bool { return false }); len(got) != 0 {
		t.Errorf("drifted %q among unwatched chains", got)
	}
	filter, _ := iptables.ParseSaveTable(iptables.TableFilter, nil)
	if got := a.Drifted(filter, all, rules.IsServiceChain); got != nil {
		t.Errorf("a table the record does not know drifted: %q", got)
	}
}
