package memory_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

const syncPayload = `*filter
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "ns/none:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.9 --dport 80 -j REJECT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -m comment --comment "ns/a:p80 cluster IP" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A ! -s 10.0.0.0/8 -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-A1
-A KUBE-SVC-A -j KUBE-SEP-A2
-A KUBE-SEP-A1 -m tcp -p tcp -j DNAT --to-destination 10.1.0.1:8080
-A KUBE-SEP-A2 -m tcp -p tcp -j DNAT --to-destination 10.1.0.2:8080
COMMIT
`

// installJumps does what the proxier does with the base chains.
func installJumps(t *testing.T, f *memory.Tables) {
	t.Helper()
	ctx := context.Background()
	jumps := []struct {
		table         iptables.Table
		chain, target string
	}{
		{iptables.TableNAT, iptables.ChainPrerouting, "KUBE-SERVICES"},
		{iptables.TableNAT, iptables.ChainOutput, "KUBE-SERVICES"},
		{iptables.TableNAT, iptables.ChainPostrouting, "KUBE-POSTROUTING"},
		{iptables.TableFilter, iptables.ChainForward, "KUBE-SERVICES"},
		{iptables.TableFilter, iptables.ChainOutput, "KUBE-SERVICES"},
	}
	for _, j := range jumps {
		if _, err := f.EnsureChain(ctx, j.table, j.target); err != nil {
			t.Fatal(err)
		}
		if _, err := f.EnsureRulePrepended(ctx, j.table, j.chain, "-m", "comment", "--comment", "kubernetes service portals", "-j", j.target); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFakeStartsWithBuiltinChains(t *testing.T) {
	f := memory.New(v1.IPv4Protocol)
	ctx := context.Background()
	want := map[iptables.Table]string{
		iptables.TableFilter: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
		iptables.TableNAT:    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
		iptables.TableMangle: "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
	}
	for table, w := range want {
		got, err := f.Save(ctx, table)
		if err != nil || string(got) != w {
			t.Errorf("Save(%s) = %q, %v; want %q", table, got, err, w)
		}
	}
	if _, err := f.Save(ctx, "raw"); !errors.Is(err, ruleset.ErrNoTable) {
		t.Errorf("Save(raw) error = %v, want ErrNoTable", err)
	}
	if f.Family() != v1.IPv4Protocol || memory.New(v1.IPv6Protocol).Family() != v1.IPv6Protocol {
		t.Errorf("wrong families")
	}
}

func TestFakeRestoreAndTrace(t *testing.T) {
	f := memory.New(v1.IPv4Protocol)
	ctx := context.Background()
	installJumps(t, f)
	if err := f.Restore(ctx, []byte(syncPayload)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := f.LastRestore(); string(got) != syncPayload {
		t.Errorf("LastRestore() = %q", got)
	}
	node := trace.Node{LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	r, err := f.Trace(node, trace.Packet{Protocol: "tcp", Src: netip.MustParseAddr("192.168.7.7"), Dst: netip.MustParseAddr("172.30.0.1"), DstPort: 80, InInterface: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Destinations(); d["10.1.0.1:8080"] != 0.5 || d["10.1.0.2:8080"] != 0.5 || !r.AllMasqueraded() {
		t.Errorf("trace: %s", r)
	}
	r, err = f.Trace(node, trace.Packet{Protocol: "tcp", Src: netip.MustParseAddr("192.168.0.2"), Dst: netip.MustParseAddr("172.30.0.9"), DstPort: 80, Local: true})
	if err != nil {
		t.Fatal(err)
	}
	if !r.AllRejected() {
		t.Errorf("no-endpoints service not rejected: %s", r)
	}
}

func TestFakeRestoreErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		family   v1.IPFamily
		payload  string
		wantErr  error
		wantLine int
		wantExit int
	}{
		{
			name:     "jump to a missing chain",
			payload:  "*nat\n:KUBE-SVC-B - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-B\nCOMMIT\n",
			wantErr:  ruleset.ErrNoChain,
			wantLine: 3,
			wantExit: 1,
		},
		{
			name:     "deleting a referenced chain",
			payload:  "*nat\n:KUBE-SEP-A1 - [0:0]\n-X KUBE-SEP-A1\nCOMMIT\n",
			wantErr:  ruleset.ErrChainInUse,
			wantLine: 3,
			wantExit: 1,
		},
		{
			name:     "syntax error",
			payload:  "*nat\n-A KUBE-SVC-A -m tcp --dport 80 -j KUBE-SEP-A1\nCOMMIT\n",
			wantErr:  ruleset.ErrSyntax,
			wantLine: 2,
			wantExit: 2,
		},
		{
			name:     "IPv4 address in the IPv6 fake",
			family:   v1.IPv6Protocol,
			payload:  "*filter\n-A INPUT -s 10.0.0.1 -j DROP\nCOMMIT\n",
			wantErr:  ruleset.ErrFamily,
			wantLine: 2,
			wantExit: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			family := tc.family
			if family == "" {
				family = v1.IPv4Protocol
			}
			f := memory.New(family)
			if family == v1.IPv4Protocol {
				if err := f.Restore(ctx, []byte(syncPayload)); err != nil {
					t.Fatal(err)
				}
			}
			before := f.Ruleset().SaveAll()
			err := f.Restore(ctx, []byte(tc.payload))
			var re *iptables.RestoreError
			if !errors.As(err, &re) {
				t.Fatalf("Restore error = %v (%T), want a *iptables.RestoreError", err, err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v does not wrap %v", err, tc.wantErr)
			}
			if re.Line != tc.wantLine || re.ExitCode != tc.wantExit {
				t.Errorf("Line, ExitCode = %d, %d; want %d, %d", re.Line, re.ExitCode, tc.wantLine, tc.wantExit)
			}
			if lines := re.FailingLines([]byte(tc.payload), 0); !strings.HasPrefix(lines, ">") {
				t.Errorf("FailingLines = %q", lines)
			}
			if got := f.Ruleset().SaveAll(); string(got) != string(before) {
				t.Errorf("failed restore changed the tables:\n%s", got)
			}
			calls := f.Restores()
			if last := calls[len(calls)-1]; last.Err != err || string(last.Payload) != tc.payload {
				t.Errorf("failed call not recorded: %+v", last)
			}
		})
	}
}

func TestFakeFailNextRestore(t *testing.T) {
	ctx := context.Background()
	f := memory.New(v1.IPv4Protocol)
	lock := &iptables.RestoreError{Command: "iptables-restore", ExitCode: 4, Output: "Another app is currently holding the xtables lock. Stopped waiting after 5s."}
	f.FailNextRestore(nil)
	f.FailNextRestore(lock)
	err := f.Restore(ctx, []byte(syncPayload))
	var re *iptables.RestoreError
	if !errors.As(err, &re) || re.ExitCode != 1 {
		t.Errorf("first Restore error = %v, want the default injected RestoreError", err)
	}
	if err := f.Restore(ctx, []byte(syncPayload)); !iptables.IsLockTimeout(err) {
		t.Errorf("second Restore error = %v, want the lock timeout", err)
	}
	if f.Ruleset().Chain("nat", "KUBE-SVC-A") != nil {
		t.Errorf("an injected failure applied the payload")
	}
	if err := f.Restore(ctx, []byte(syncPayload)); err != nil {
		t.Errorf("third Restore: %v", err)
	}
	calls := f.Restores()
	if len(calls) != 3 || calls[0].Err == nil || calls[1].Err != lock || calls[2].Err != nil {
		t.Errorf("Restores() = %+v", calls)
	}
	f.ResetRestores()
	if f.Restores() != nil || f.LastRestore() != nil {
		t.Errorf("ResetRestores left calls")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.Restore(cancelled, []byte(syncPayload)); !errors.Is(err, context.Canceled) {
		t.Errorf("Restore with a cancelled context = %v", err)
	}
}

func TestFakeChainsAndRules(t *testing.T) {
	ctx := context.Background()
	f := memory.New(v1.IPv4Protocol)
	installJumps(t, f)

	existed, err := f.EnsureChain(ctx, iptables.TableNAT, "KUBE-SERVICES")
	if err != nil || !existed {
		t.Errorf("EnsureChain of an existing chain = %v, %v", existed, err)
	}
	// Same rule, spelled differently: found, not added twice.
	existed, err = f.EnsureRulePrepended(ctx, iptables.TableNAT, iptables.ChainPrerouting, "-m", "comment", "--comment", "kubernetes service portals", "--jump", "KUBE-SERVICES")
	if err != nil || !existed {
		t.Errorf("EnsureRulePrepended of an existing rule = %v, %v", existed, err)
	}
	if _, err := f.EnsureRulePrepended(ctx, iptables.TableNAT, iptables.ChainPrerouting, "-j", "KUBE-MISSING"); !errors.Is(err, ruleset.ErrNoChain) {
		t.Errorf("jump to a missing chain: %v", err)
	}
	if _, err := f.EnsureRulePrepended(ctx, iptables.TableNAT, "NOPE", "-j", "ACCEPT"); err == nil {
		t.Errorf("rule in a missing chain: no error")
	}
	// Prepended means first.
	if _, err := f.EnsureRulePrepended(ctx, iptables.TableNAT, iptables.ChainPrerouting, "-s", "10.9.0.0/16", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	if rules := f.Ruleset().ChainRules("nat", "PREROUTING"); len(rules) != 2 || rules[0].Target() != "ACCEPT" {
		t.Errorf("PREROUTING = %v", rules)
	}

	// The jumped-to chain cannot go while the jump is there.
	if err := f.DeleteChain(ctx, iptables.TableNAT, "KUBE-POSTROUTING"); !errors.Is(err, ruleset.ErrChainInUse) {
		t.Errorf("DeleteChain of a referenced chain = %v", err)
	}
	if err := f.DeleteRule(ctx, iptables.TableNAT, iptables.ChainPostrouting, "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-POSTROUTING"); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteRule(ctx, iptables.TableNAT, iptables.ChainPostrouting, "-j", "KUBE-POSTROUTING"); err != nil {
		t.Errorf("DeleteRule of a missing rule = %v", err)
	}
	if err := f.DeleteRule(ctx, iptables.TableNAT, "NOPE", "-j", "ACCEPT"); err != nil {
		t.Errorf("DeleteRule in a missing chain = %v", err)
	}
	if err := f.DeleteChain(ctx, iptables.TableNAT, "KUBE-POSTROUTING"); err != nil {
		t.Errorf("DeleteChain: %v", err)
	}
	if ok, _ := f.ChainExists(ctx, iptables.TableNAT, "KUBE-POSTROUTING"); ok {
		t.Errorf("chain still exists")
	}
	if err := f.DeleteChain(ctx, iptables.TableNAT, "KUBE-POSTROUTING"); err != nil {
		t.Errorf("DeleteChain of a missing chain = %v", err)
	}
	if err := f.DeleteChain(ctx, iptables.TableNAT, iptables.ChainPrerouting); !errors.Is(err, ruleset.ErrBuiltinChain) {
		t.Errorf("DeleteChain of a built-in chain = %v", err)
	}
	if ok, _ := f.ChainExists(ctx, iptables.TableFilter, "KUBE-SERVICES"); !ok {
		t.Errorf("filter KUBE-SERVICES missing")
	}
	if ok, _ := f.ChainExists(ctx, "raw", "PREROUTING"); ok {
		t.Errorf("raw table should not exist")
	}
	// No Restore was involved.
	if len(f.Restores()) != 0 {
		t.Errorf("chain operations recorded as restores")
	}
}

func TestFakeRulesetIsASnapshot(t *testing.T) {
	ctx := context.Background()
	f := memory.New(v1.IPv4Protocol)
	snap := f.Ruleset()
	if err := f.Restore(ctx, []byte(syncPayload)); err != nil {
		t.Fatal(err)
	}
	if snap.Chain("nat", "KUBE-SVC-A") != nil {
		t.Errorf("snapshot sees later changes")
	}
	if err := snap.Exec("nat", "-N", "KUBE-SNAP"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.ChainExists(ctx, iptables.TableNAT, "KUBE-SNAP"); ok {
		t.Errorf("changes to the snapshot reached the fake")
	}
	if !slices.Contains(f.Ruleset().Chains("nat"), "KUBE-SVC-A") {
		t.Errorf("fake lost the restored chains")
	}
}
