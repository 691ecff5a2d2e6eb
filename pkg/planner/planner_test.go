package planner

import (
	"strings"
	"testing"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

func TestJumpTarget(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"-j KUBE-SEP-A", "KUBE-SEP-A"},
		{"-d 10.0.0.0/8 -g KUBE-SVC-DSP-X", "KUBE-SVC-DSP-X"},
		{`-m comment --comment "ns/a:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-A`, "KUBE-SVC-A"},
		{"-p tcp -m tcp -j DNAT --to-destination 10.1.0.1:80", "DNAT"},
		{`-m comment --comment "other traffic will be dropped"`, ""},
	} {
		if got := jumpTarget(tc.body); got != tc.want {
			t.Errorf("jumpTarget(%q) = %q, want %q", tc.body, got, tc.want)
		}
	}
}

// TestComputeChunkedOrder checks that a split plan writes every chain after
// the chains it jumps to and deletes only in its last transaction, and that
// a small plan is one transaction.
func TestComputeChunkedOrder(t *testing.T) {
	chain := func(name string, targets ...string) *rules.Chain {
		c := &rules.Chain{Name: name}
		for _, tg := range targets {
			c.Rules = append(c.Rules, "-j "+tg)
		}
		return c
	}
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
	applied.Adopt(iptables.TableNAT, []byte("*nat\n:KUBE-SEP-OLD - [0:0]\n:FOREIGN - [0:0]\n-A KUBE-SEP-OLD -j DNAT\nCOMMIT\n"))

	one := ComputeChunked(desired, applied, rules.IsServiceChain, 100)
	if len(one.Transactions) != 1 {
		t.Fatalf("small plan: %d transactions, want 1", len(one.Transactions))
	}

	p := ComputeChunked(desired, applied, rules.IsServiceChain, 3)
	if len(p.Transactions) < 3 {
		t.Fatalf("plan with limit 3: %d transactions, want several", len(p.Transactions))
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
			target := jumpTarget(r)
			if tp, ok := pos[target]; ok && tp > pos[c.Name] {
				t.Errorf("%s (transaction %d) jumps to %s written later (transaction %d)", c.Name, pos[c.Name], target, tp)
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
	if again := Compute(desired, applied, rules.IsServiceChain); again.Changed() {
		t.Errorf("second plan writes %s", again.Payload())
	}
	// A changed chain is written even when the renderer reuses the name.
	desired.NAT[6] = chain("KUBE-SVC-A", "KUBE-SEP-1")
	if p := Compute(desired, applied, rules.IsServiceChain); len(p.Written[iptables.TableNAT]) != 1 || len(p.Deleted[iptables.TableNAT]) != 0 {
		t.Errorf("after one change: written %v deleted %v", p.Written, p.Deleted)
	}
}
