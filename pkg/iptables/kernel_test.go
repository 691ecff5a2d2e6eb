//go:build linux

package iptables_test

// Kernel tests: they run the real iptables tools of both backends and both
// families, each subtest in a fresh network namespace of its own (see
// package kerneltest), and skip where that is impossible.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
)

// target is one family and backend to run a kernel test against.
type target struct {
	family  v1.IPFamily
	backend iptables.Backend
}

func (tg target) String() string { return fmt.Sprintf("%s-%s", tg.family, tg.backend) }

// cli is the plain iptables binary of the target (iptables-nft, ...), used
// to set up and inspect state independently of the code under test.
func (tg target) cli() string {
	if tg.family == v1.IPv6Protocol {
		return "ip6tables-" + string(tg.backend)
	}
	return "iptables-" + string(tg.backend)
}

func allTargets() []target {
	var ts []target
	for _, b := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, f := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			ts = append(ts, target{family: f, backend: b})
		}
	}
	return ts
}

// forEachTarget runs fn as one subtest per target, each in its own new
// network namespace with a Runner for that target.
func forEachTarget(t *testing.T, fn func(t *testing.T, ctx context.Context, tg target, r *iptables.Runner)) {
	for _, tg := range allTargets() {
		t.Run(tg.String(), func(t *testing.T) {
			ctx, r := setup(t, tg)
			fn(t, ctx, tg, r)
		})
	}
}

// setup enters a new network namespace and returns a Runner for tg there,
// skipping the test when the tools or the kernel support are missing.
func setup(t *testing.T, tg target, opts ...iptables.Option) (context.Context, *iptables.Runner) {
	t.Helper()
	kerneltest.Enter(t)
	prefix := strings.TrimSuffix(tg.cli(), "-"+string(tg.backend))
	kerneltest.RequireTools(t, tg.cli(), tg.cli()+"-save", tg.cli()+"-restore", prefix)
	logger, ctx := ktesting.NewTestContext(t)
	if err := iptables.Present(ctx, tg.family, tg.backend, opts...); err != nil {
		t.Skipf("kernel test: %s not usable here: %v", tg, err)
	}
	r, err := iptables.New(tg.family, tg.backend, append(opts, iptables.WithLogger(logger))...)
	if err != nil {
		t.Fatalf("New(%s): %v", tg, err)
	}
	if got := r.Tools().Restore; !strings.HasSuffix(got, "/"+tg.cli()+"-restore") {
		t.Fatalf("Runner uses %s, want %s-restore", got, tg.cli())
	}
	return ctx, r
}

// addrs are the addresses the kube-proxy-style payload uses per family.
type addrs struct {
	clusterIP, clusterIP2, pod1, pod2, podCIDR, dest1, dest2 string
}

func addrsFor(family v1.IPFamily) addrs {
	if family == v1.IPv6Protocol {
		return addrs{"fd00:172:30::41", "fd00:172:30::46", "fd00:10:180::1", "fd00:10:180::2", "fd00:10::/32",
			"[fd00:10:180::1]:80", "[fd00:10:180::2]:80"}
	}
	return addrs{"172.30.0.41", "172.30.0.46", "10.180.0.1", "10.180.0.2", "10.0.0.0/8",
		"10.180.0.1:80", "10.180.0.2:80"}
}

// fullSync is a full sync in the shape kube-proxy's syncProxyRules writes
// (see TestOverallIPTablesRules upstream): every KUBE- chain declared, a
// Service with two endpoints, a NodePort, session affinity bits, a Service
// without endpoints.
func fullSync(family v1.IPFamily) string {
	a := addrsFor(family)
	localnet := ""
	if family == v1.IPv4Protocol {
		localnet = `-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP` + "\n"
	}
	return `*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d ` + a.clusterIP2 + ` --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3006 -j REJECT
` + localnet + `-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d ` + a.clusterIP + ` --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s ` + a.pod1 + ` -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --set -m tcp -p tcp -j DNAT --to-destination ` + a.dest1 + `
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns1/svc1:p80 -s ` + a.pod2 + ` -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination ` + a.dest2 + `
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d ` + a.clusterIP + ` --dport 80 ! -s ` + a.podCIDR + ` -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> ` + a.dest1 + `" -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --rcheck --seconds 10800 --reap -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> ` + a.dest1 + `" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> ` + a.dest2 + `" -j KUBE-SEP-UKSFD7AGPMPPLUHC
COMMIT
`
}

// partialSync is kube-proxy's next, minimal sync after endpoint 2 went
// away: only the changed Service chain is rewritten, the stale endpoint
// chain is declared and deleted with -X.
func partialSync(family v1.IPFamily) string {
	a := addrsFor(family)
	return `*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
COMMIT
*nat
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d ` + a.clusterIP + ` --dport 80 ! -s ` + a.podCIDR + ` -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> ` + a.dest1 + `" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-X KUBE-SEP-UKSFD7AGPMPPLUHC
COMMIT
`
}

// tables is a parsed iptables-save or -restore text: table -> chain ->
// rules (the text after "-A CHAIN "). Built-in chains appear only when
// declared.
type tables map[string]map[string][]string

func parseRules(t *testing.T, text string) tables {
	t.Helper()
	out := tables{}
	var cur map[string][]string
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = map[string][]string{}
			out[line[1:]] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			t.Fatalf("line %d outside a table: %q", n, line)
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur[name]; !ok {
				cur[name] = []string{}
			}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			if _, ok := cur[chain]; !ok {
				t.Fatalf("line %d: rule for undeclared chain: %q", n, line)
			}
			cur[chain] = append(cur[chain], rule)
		case strings.HasPrefix(line, "-X "):
			delete(cur, strings.TrimSpace(line[3:]))
		default:
			t.Fatalf("line %d: cannot parse %q", n, line)
		}
	}
	return out
}

// normalize drops comments and chain counters from iptables-save output so
// that two dumps of the same state compare equal.
func normalize(save []byte) string {
	var b strings.Builder
	for l := range strings.SplitSeq(string(save), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i] + " [0:0]"
			}
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

func save(t *testing.T, ctx context.Context, r *iptables.Runner, table iptables.Table) string {
	t.Helper()
	out, err := r.Save(ctx, table)
	if err != nil {
		t.Fatalf("Save(%s): %v", table, err)
	}
	return normalize(out)
}

// snapshot saves nat and filter.
func snapshot(t *testing.T, ctx context.Context, r *iptables.Runner) string {
	t.Helper()
	return save(t, ctx, r, iptables.TableNAT) + save(t, ctx, r, iptables.TableFilter)
}

// ruleCounts maps "table/chain" to its number of rules.
func ruleCounts(ts tables) map[string]int {
	m := map[string]int{}
	for table, chains := range ts {
		for chain, rules := range chains {
			m[table+"/"+chain] = len(rules)
		}
	}
	return m
}

// assertApplied checks that every chain of want exists in the kernel with
// as many rules, and that the KUBE- chains are exactly those of want.
func assertApplied(t *testing.T, ctx context.Context, r *iptables.Runner, want tables) {
	t.Helper()
	got := parseRules(t, snapshot(t, ctx, r))
	gotCounts, wantCounts := ruleCounts(got), ruleCounts(want)
	for key, n := range wantCounts {
		if gotCounts[key] != n {
			t.Errorf("%s: %d rules in the kernel, want %d", key, gotCounts[key], n)
		}
	}
	for key := range gotCounts {
		if _, ok := wantCounts[key]; !ok && strings.Contains(key, "/KUBE-") {
			t.Errorf("%s: in the kernel, not expected", key)
		}
	}
}

// jumps are the base-chain rules kube-proxy keeps with EnsureRule.
var jumps = []struct {
	table         iptables.Table
	chain, jumpTo string
	comment       string
}{
	{iptables.TableNAT, iptables.ChainPrerouting, "KUBE-SERVICES", "kubernetes service portals"},
	{iptables.TableNAT, iptables.ChainOutput, "KUBE-SERVICES", "kubernetes service portals"},
	{iptables.TableNAT, iptables.ChainPostrouting, "KUBE-POSTROUTING", "kubernetes postrouting rules"},
	{iptables.TableFilter, iptables.ChainForward, "KUBE-FORWARD", "kubernetes forwarding rules"},
}

func jumpArgs(comment, to string) []string {
	return []string{"-m", "comment", "--comment", comment, "-j", to}
}

func ensureJumps(t *testing.T, ctx context.Context, r *iptables.Runner) {
	t.Helper()
	for _, j := range jumps {
		if _, err := r.EnsureChain(ctx, j.table, j.jumpTo); err != nil {
			t.Fatal(err)
		}
		if _, err := r.EnsureRulePrepended(ctx, j.table, j.chain, jumpArgs(j.comment, j.jumpTo)...); err != nil {
			t.Fatal(err)
		}
	}
}

func restore(t *testing.T, ctx context.Context, r *iptables.Runner, payload string) {
	t.Helper()
	if err := r.Restore(ctx, []byte(payload)); err != nil {
		var re *iptables.RestoreError
		if errors.As(err, &re) {
			t.Fatalf("Restore: %v\n%s", err, re.FailingLines([]byte(payload), 3))
		}
		t.Fatalf("Restore: %v", err)
	}
}

func TestKernelRestoreKubeProxyPayload(t *testing.T) {
	forEachTarget(t, func(t *testing.T, ctx context.Context, tg target, r *iptables.Runner) {
		ensureJumps(t, ctx, r)
		full := fullSync(tg.family)
		restore(t, ctx, r, full)
		want := parseRules(t, full)
		assertApplied(t, ctx, r, want)

		nat := save(t, ctx, r, iptables.TableNAT)
		for _, s := range []string{
			"--to-destination " + addrsFor(tg.family).dest1,
			"-j MASQUERADE --random-fully",
			"--mode random --probability 0.5",
			"--rcheck --seconds 10800 --reap",
		} {
			if !strings.Contains(nat, s) {
				t.Errorf("nat table lacks %q:\n%s", s, nat)
			}
		}
		for _, j := range jumps {
			if exists, err := r.EnsureRulePrepended(ctx, j.table, j.chain, jumpArgs(j.comment, j.jumpTo)...); err != nil || !exists {
				t.Errorf("jump %s/%s -> %s lost after restore (exists %v, %v)", j.table, j.chain, j.jumpTo, exists, err)
			}
		}

		// The same full sync again changes nothing (kube-proxy's restart).
		before := snapshot(t, ctx, r)
		restore(t, ctx, r, full)
		if after := snapshot(t, ctx, r); after != before {
			t.Errorf("repeating the full sync changed the tables:\nbefore:\n%s\nafter:\n%s", before, after)
		}

		// A partial sync rewrites one chain and deletes another, leaving
		// every chain it does not mention alone.
		restore(t, ctx, r, partialSync(tg.family))
		want["nat"]["KUBE-SVC-XPGD46QRK7WJZT7O"] = want["nat"]["KUBE-SVC-XPGD46QRK7WJZT7O"][:2]
		delete(want["nat"], "KUBE-SEP-UKSFD7AGPMPPLUHC")
		want["filter"]["KUBE-SERVICES"] = nil
		assertApplied(t, ctx, r, want)
	})
}

func TestKernelNoFlushKeepsForeignChains(t *testing.T) {
	forEachTarget(t, func(t *testing.T, ctx context.Context, tg target, r *iptables.Runner) {
		// Another component's state, made with the plain CLI.
		cli := tg.cli()
		kerneltest.Run(t, cli, "-w", "-t", "nat", "-N", "CNI-FOREIGN")
		kerneltest.Run(t, cli, "-w", "-t", "nat", "-A", "CNI-FOREIGN", "-p", "udp", "--dport", "53", "-j", "RETURN")
		kerneltest.Run(t, cli, "-w", "-t", "nat", "-A", "POSTROUTING", "-j", "CNI-FOREIGN")
		kerneltest.Run(t, cli, "-w", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		foreign := func() tables {
			ts := parseRules(t, snapshot(t, ctx, r))
			return tables{
				"nat":    {"CNI-FOREIGN": ts["nat"]["CNI-FOREIGN"], "POSTROUTING": ts["nat"]["POSTROUTING"]},
				"filter": {"INPUT": ts["filter"]["INPUT"]},
			}
		}
		before := foreign()

		restore(t, ctx, r, fullSync(tg.family))
		restore(t, ctx, r, partialSync(tg.family))

		after := foreign()
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("--noflush restores changed foreign state:\nbefore %v\nafter  %v", before, after)
		}
		if len(after["nat"]["CNI-FOREIGN"]) != 1 || len(after["nat"]["POSTROUTING"]) != 1 || len(after["filter"]["INPUT"]) != 1 {
			t.Errorf("foreign rules missing: %v", after)
		}
	})
}

func TestKernelFailedRestore(t *testing.T) {
	// Lines:        1       2                              3
	const prefix = "*nat\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n-A KUBE-SVC-XPGD46QRK7WJZT7O -j KUBE-SEP-SXIVWICOYRO3J4NJ\n"
	tests := []struct {
		name    string
		payload string
		// wantLine is the line each backend blames.
		wantLine map[iptables.Backend]int
		// filterChanged: an earlier table of the payload was committed.
		filterChanged bool
	}{{
		name:     "unknown match",
		payload:  prefix + "-A KUBE-SVC-XPGD46QRK7WJZT7O -m nosuchmatch --foo -j KUBE-SEP-UKSFD7AGPMPPLUHC\nCOMMIT\n",
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 4, iptables.BackendLegacy: 4},
	}, {
		// nft resolves jumps when it commits the table.
		name:     "jump to a missing chain",
		payload:  prefix + "-A KUBE-SVC-XPGD46QRK7WJZT7O -j KUBE-SEP-MISSING\nCOMMIT\n",
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 5, iptables.BackendLegacy: 4},
	}, {
		// The KUBE-SEP- chains still jump to KUBE-MARK-MASQ.
		name:     "delete a chain that is still referenced",
		payload:  prefix + ":KUBE-MARK-MASQ - [0:0]\n-X KUBE-MARK-MASQ\nCOMMIT\n",
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 5, iptables.BackendLegacy: 5},
	}, {
		name:     "rule for an undeclared chain",
		payload:  prefix + "-A KUBE-SEP-NOT-DECLARED -j ACCEPT\nCOMMIT\n",
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 4, iptables.BackendLegacy: 4},
	}, {
		name:     "missing COMMIT",
		payload:  prefix,
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 4, iptables.BackendLegacy: 4},
	}, {
		name:     "unknown table",
		payload:  "*bogus\n:X - [0:0]\nCOMMIT\n",
		wantLine: map[iptables.Backend]int{iptables.BackendNFT: 1, iptables.BackendLegacy: 1},
	}, {
		// Atomicity is per table: the filter table was committed at line
		// 4 before nat failed.
		name: "earlier table stays committed",
		payload: "*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n" +
			"*nat\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n-A KUBE-SVC-XPGD46QRK7WJZT7O -m nosuchmatch -j ACCEPT\nCOMMIT\n",
		wantLine:      map[iptables.Backend]int{iptables.BackendNFT: 7, iptables.BackendLegacy: 7},
		filterChanged: true,
	}}
	for _, tg := range allTargets() {
		t.Run(tg.String(), func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					ctx, r := setup(t, tg)
					restore(t, ctx, r, fullSync(tg.family))
					nat, filter := save(t, ctx, r, iptables.TableNAT), save(t, ctx, r, iptables.TableFilter)

					err := r.Restore(ctx, []byte(tc.payload))
					var re *iptables.RestoreError
					if !errors.As(err, &re) {
						t.Fatalf("Restore() = %v, want a *RestoreError", err)
					}
					if want := tc.wantLine[tg.backend]; re.Line != want {
						t.Errorf("failing line = %d, want %d (%v)", re.Line, want, err)
					}
					lines := re.FailingLines([]byte(tc.payload), 1)
					if !strings.Contains(lines, fmt.Sprintf("> %d: ", re.Line)) {
						t.Errorf("FailingLines does not mark line %d:\n%s", re.Line, lines)
					}
					if iptables.IsLockTimeout(err) {
						t.Errorf("IsLockTimeout(%v) = true", err)
					}
					t.Logf("%v\n%s", err, lines)

					if got := save(t, ctx, r, iptables.TableNAT); got != nat {
						t.Errorf("failed restore changed the nat table:\nbefore:\n%s\nafter:\n%s", nat, got)
					}
					if got := save(t, ctx, r, iptables.TableFilter); (got != filter) != tc.filterChanged {
						t.Errorf("filter table changed: %v, want %v:\n%s", got != filter, tc.filterChanged, got)
					}
				})
			}
		})
	}
}

func TestKernelChainsAndRulesIdempotent(t *testing.T) {
	forEachTarget(t, func(t *testing.T, ctx context.Context, tg target, r *iptables.Runner) {
		const table, chain = iptables.TableNAT, "KUBE-SERVICES"
		steps := []struct {
			name string
			do   func() (bool, error)
			want bool
		}{
			{"chain absent", func() (bool, error) { return r.ChainExists(ctx, table, chain) }, false},
			{"create chain", func() (bool, error) { return r.EnsureChain(ctx, table, chain) }, false},
			{"chain again", func() (bool, error) { return r.EnsureChain(ctx, table, chain) }, true},
			{"chain present", func() (bool, error) { return r.ChainExists(ctx, table, chain) }, true},
			{"other rule", func() (bool, error) {
				return r.EnsureRulePrepended(ctx, table, iptables.ChainPrerouting, "-p", "udp", "-j", "RETURN")
			}, false},
			{"insert jump", func() (bool, error) {
				return r.EnsureRulePrepended(ctx, table, iptables.ChainPrerouting, jumpArgs("kubernetes service portals", chain)...)
			}, false},
			{"jump again", func() (bool, error) {
				return r.EnsureRulePrepended(ctx, table, iptables.ChainPrerouting, jumpArgs("kubernetes service portals", chain)...)
			}, true},
		}
		for _, s := range steps {
			got, err := s.do()
			if err != nil || got != s.want {
				t.Fatalf("%s: got %v, %v; want %v", s.name, got, err, s.want)
			}
		}
		pre := parseRules(t, save(t, ctx, r, table))["nat"][iptables.ChainPrerouting]
		if len(pre) != 2 || !strings.Contains(pre[0], "-j KUBE-SERVICES") {
			t.Errorf("PREROUTING = %q, want the jump first and once", pre)
		}

		// Deleting is idempotent too, and tolerates missing chains.
		for i, del := range []func() error{
			func() error {
				return r.DeleteRule(ctx, table, iptables.ChainPrerouting, jumpArgs("kubernetes service portals", chain)...)
			},
			func() error {
				return r.DeleteRule(ctx, table, iptables.ChainPrerouting, jumpArgs("kubernetes service portals", chain)...)
			},
			func() error { return r.DeleteRule(ctx, table, "KUBE-MISSING", "-j", "RETURN") },
			func() error { return r.DeleteRule(ctx, table, iptables.ChainPrerouting, "-j", "KUBE-MISSING") },
			func() error { return r.DeleteChain(ctx, table, chain) },
			func() error { return r.DeleteChain(ctx, table, chain) },
		} {
			if err := del(); err != nil {
				t.Errorf("delete step %d: %v", i, err)
			}
		}
		if exists, err := r.ChainExists(ctx, table, chain); err != nil || exists {
			t.Errorf("ChainExists after DeleteChain = %v, %v", exists, err)
		}
		pre = parseRules(t, save(t, ctx, r, table))["nat"][iptables.ChainPrerouting]
		if len(pre) != 1 {
			t.Errorf("PREROUTING after delete = %q, want only the other rule", pre)
		}
		// A rule for a missing chain is an error, not a silent no-op.
		if _, err := r.EnsureRulePrepended(ctx, table, "KUBE-MISSING", "-j", "RETURN"); err == nil {
			t.Errorf("EnsureRulePrepended into a missing chain: no error")
		}
	})
}

func TestKernelSaveRoundTrip(t *testing.T) {
	for _, tg := range allTargets() {
		t.Run(tg.String(), func(t *testing.T) {
			ctx, r := setup(t, tg)
			ensureJumps(t, ctx, r)
			restore(t, ctx, r, fullSync(tg.family))
			var dump strings.Builder
			for _, table := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
				raw, err := r.Save(ctx, table)
				if err != nil {
					t.Fatal(err)
				}
				dump.Write(raw)
			}
			orig := parseRules(t, dump.String())
			want := parseRules(t, fullSync(tg.family))
			for table, chains := range want {
				for chain, rules := range chains {
					if len(orig[table][chain]) != len(rules) {
						t.Errorf("save of %s/%s parsed back to %d rules, want %d", table, chain, len(orig[table][chain]), len(rules))
					}
				}
			}

			// The dump restores into an empty namespace and dumps the same.
			kerneltest.Enter(t)
			if got := snapshot(t, ctx, r); strings.Contains(got, "KUBE-") {
				t.Fatalf("new namespace is not empty:\n%s", got)
			}
			restore(t, ctx, r, dump.String())
			if got, want := parseRules(t, snapshot(t, ctx, r)), orig; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("round trip differs:\ngot  %v\nwant %v", got, want)
			}
		})
	}
}

func TestKernelDetectBackend(t *testing.T) {
	// Each case runs in a new namespace; setup writes evidence with the
	// plain CLIs.
	hint := func(cli string) [][]string {
		return [][]string{{cli, "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}}
	}
	kubeChains := func(cli string, n int) [][]string {
		var cmds [][]string
		for i := range n {
			cmds = append(cmds, []string{cli, "-w", "-t", "nat", "-N", fmt.Sprintf("KUBE-SVC-%d", i)})
		}
		return cmds
	}
	tests := []struct {
		name  string
		setup [][]string
		want  iptables.Backend
	}{
		{name: "no evidence", want: iptables.BackendNFT},
		{name: "hint in legacy", setup: hint("iptables-legacy"), want: iptables.BackendLegacy},
		{name: "hint in legacy IPv6", setup: hint("ip6tables-legacy"), want: iptables.BackendLegacy},
		{name: "hint in nft", setup: hint("iptables-nft"), want: iptables.BackendNFT},
		{name: "kubelet canary in legacy filter", setup: [][]string{{"iptables-legacy", "-w", "-t", "filter", "-N", "KUBE-KUBELET-CANARY"}}, want: iptables.BackendLegacy},
		{name: "hint in nft beats legacy rules", setup: append(hint("iptables-nft"), kubeChains("iptables-legacy", 3)...), want: iptables.BackendNFT},
		{name: "KUBE chains only in legacy", setup: kubeChains("iptables-legacy", 2), want: iptables.BackendLegacy},
		{name: "more KUBE chains in nft", setup: append(kubeChains("iptables-nft", 3), kubeChains("ip6tables-legacy", 2)...), want: iptables.BackendNFT},
		{name: "more KUBE chains in legacy", setup: append(kubeChains("ip6tables-nft", 1), kubeChains("iptables-legacy", 2)...), want: iptables.BackendLegacy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kerneltest.Enter(t)
			kerneltest.RequireTools(t, "iptables-nft", "iptables-nft-save", "iptables-nft-restore",
				"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
				"ip6tables-nft", "ip6tables-legacy")
			for _, cmd := range tc.setup {
				kerneltest.Run(t, cmd[0], cmd[1:]...)
			}
			_, ctx := ktesting.NewTestContext(t)
			got, err := iptables.DetectBackend(ctx)
			if err != nil || got != tc.want {
				t.Errorf("DetectBackend() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestKernelCanary(t *testing.T) {
	forEachTarget(t, func(t *testing.T, ctx context.Context, tg target, r *iptables.Runner) {
		tablesList := iptables.CanaryTables()
		if err := iptables.EnsureCanaries(ctx, r, iptables.CanaryChain, tablesList); err != nil {
			t.Fatal(err)
		}
		missing, err := iptables.CanaryMissing(ctx, r, iptables.CanaryChain, tablesList)
		if err != nil || missing {
			t.Fatalf("CanaryMissing() after EnsureCanaries = %v, %v", missing, err)
		}
		// A firewall reload flushes and deletes everything.
		for _, table := range tablesList {
			kerneltest.Run(t, tg.cli(), "-w", "-t", string(table), "-F")
			kerneltest.Run(t, tg.cli(), "-w", "-t", string(table), "-X")
		}
		start := time.Now()
		missing, err = iptables.CanaryMissing(ctx, r, iptables.CanaryChain, tablesList)
		if err != nil || !missing {
			t.Fatalf("CanaryMissing() after a flush = %v, %v", missing, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("CanaryMissing() took %v although every canary was gone", d)
		}
		if err := iptables.EnsureCanaries(ctx, r, iptables.CanaryChain, tablesList); err != nil {
			t.Fatal(err)
		}
		if missing, err := iptables.CanaryMissing(ctx, r, iptables.CanaryChain, tablesList); err != nil || missing {
			t.Errorf("CanaryMissing() after re-creating = %v, %v", missing, err)
		}
		if err := iptables.DeleteCanaries(ctx, r, iptables.CanaryChain, tablesList); err != nil {
			t.Fatal(err)
		}
		for _, table := range tablesList {
			if exists, err := r.ChainExists(ctx, table, iptables.CanaryChain); err != nil || exists {
				t.Errorf("canary in %s after DeleteCanaries: %v, %v", table, exists, err)
			}
		}
	})
}

// holdLock runs "flock /run/xtables.lock sleep" for d in the background,
// returning once the lock is held; the lock is released when the process
// ends, waited for in cleanup.
func holdLock(t *testing.T, d time.Duration) {
	t.Helper()
	tools := kerneltest.RequireTools(t, "flock", "sh", "sleep")
	cmd := exec.Command(tools[0], "/run/xtables.lock", tools[1], "-c", fmt.Sprintf("echo locked; exec %s %.1f", tools[2], d.Seconds()))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting flock: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("flock did not take the lock: %q, %v", line, err)
	}
}

func TestKernelXtablesLock(t *testing.T) {
	if _, err := os.Stat("/run"); err != nil {
		t.Skipf("kernel test: no /run for the xtables lock: %v", err)
	}
	// Only legacy takes the lock; iptables-nft ignores -w. The lock is
	// machine-wide (a file, not per namespace), so keep the cases few.
	tests := []struct {
		name     string
		family   v1.IPFamily
		hold     time.Duration
		wait     time.Duration
		op       string
		wantErr  bool
		minDelay time.Duration
	}{
		{name: "restore waits for the lock", family: v1.IPv4Protocol, hold: 2 * time.Second, wait: 10 * time.Second, op: "restore", minDelay: time.Second},
		{name: "IPv6 restore waits for the lock", family: v1.IPv6Protocol, hold: 2 * time.Second, wait: 10 * time.Second, op: "restore", minDelay: time.Second},
		{name: "chain probe waits for the lock", family: v1.IPv4Protocol, hold: 2 * time.Second, wait: 10 * time.Second, op: "ensureChain", minDelay: time.Second},
		{name: "restore gives up after its wait", family: v1.IPv4Protocol, hold: 2 * time.Second, wait: time.Second, op: "restore", wantErr: true},
		{name: "canary check gives up after its wait", family: v1.IPv6Protocol, hold: 2 * time.Second, wait: time.Second, op: "canary", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := target{family: tc.family, backend: iptables.BackendLegacy}
			ctx, r := setup(t, tg, iptables.WithWait(tc.wait))
			if tc.op == "canary" {
				if err := iptables.EnsureCanaries(ctx, r, iptables.CanaryChain, iptables.CanaryTables()); err != nil {
					t.Fatal(err)
				}
			}
			holdLock(t, tc.hold)
			start := time.Now()
			var err error
			switch tc.op {
			case "restore":
				err = r.Restore(ctx, []byte(fullSync(tc.family)))
			case "ensureChain":
				_, err = r.EnsureChain(ctx, iptables.TableNAT, "KUBE-SERVICES")
			case "canary":
				var missing bool
				missing, err = iptables.CanaryMissing(ctx, r, iptables.CanaryChain, iptables.CanaryTables())
				if missing {
					t.Errorf("CanaryMissing() reported a flush while the lock was held")
				}
			}
			elapsed := time.Since(start)
			t.Logf("%s with the lock held for %v: %v after %v", tc.op, tc.hold, err, elapsed.Round(time.Millisecond))
			if tc.wantErr {
				if !iptables.IsLockTimeout(err) {
					t.Errorf("got %v, want a lock timeout", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", tc.op, err)
			}
			if elapsed < tc.minDelay {
				t.Errorf("%s returned after %v: it did not wait for the lock", tc.op, elapsed)
			}
			if tc.op == "restore" {
				assertApplied(t, ctx, r, parseRules(t, fullSync(tc.family)))
			}
		})
	}
}

func TestKernelPresent(t *testing.T) {
	for _, tg := range allTargets() {
		t.Run(tg.String(), func(t *testing.T) {
			kerneltest.Enter(t)
			_, ctx := ktesting.NewTestContext(t)
			_, toolErr := kerneltest.LookTool(tg.cli() + "-restore")
			err := iptables.Present(ctx, tg.family, tg.backend)
			if (toolErr == nil) != (err == nil) {
				t.Errorf("Present() = %v, but %s-restore installed: %v", err, tg.cli(), toolErr == nil)
			}
		})
	}
	t.Run("tools missing", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		err := iptables.Present(ctx, v1.IPv4Protocol, iptables.BackendNFT, iptables.WithBinDir(t.TempDir()))
		if !errors.Is(err, iptables.ErrToolNotFound) {
			t.Errorf("Present() with no tools = %v, want ErrToolNotFound", err)
		}
	})
}

func TestKernelEnsureSysctl(t *testing.T) {
	const key = "net.ipv4.conf.all.route_localnet"
	const path = "/proc/sys/net/ipv4/conf/all/route_localnet"
	rootValue := func() string {
		// A new goroutine never runs on a locked thread: it sees the
		// root namespace.
		ch := make(chan string)
		go func() {
			b, _ := os.ReadFile(path)
			ch <- strings.TrimSpace(string(b))
		}()
		return <-ch
	}
	before := rootValue()
	kerneltest.Enter(t)
	_, ctx := ktesting.NewTestContext(t)
	for range 2 { // the second call is a no-op
		if err := iptables.EnsureSysctl(ctx, key, 1); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.TrimSpace(kerneltest.Run(t, "cat", path)); got != "1" {
		t.Errorf("%s in the test namespace = %q, want 1", key, got)
	}
	if after := rootValue(); after != before {
		t.Errorf("%s in the root namespace changed from %q to %q", key, before, after)
	}
}
