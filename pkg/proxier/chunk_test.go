package proxier

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// kernelMatchesDesired reports every chain of the last desired ruleset
// whose rules differ from what ipt holds.
func kernelMatchesDesired(t *testing.T, p *Proxier, ipt iptables.Interface) {
	t.Helper()
	ctx := context.Background()
	desired := p.Desired()
	bad := 0
	for _, tbl := range []struct {
		name   iptables.Table
		chains []*rules.Chain
	}{{iptables.TableFilter, desired.Filter}, {iptables.TableNAT, desired.NAT}} {
		save, err := ipt.Save(ctx, tbl.name)
		if err != nil {
			t.Fatal(err)
		}
		got := userChains(save)
		for _, c := range tbl.chains {
			if _, ok := got[c.Name]; !ok {
				t.Errorf("%s %s: missing", tbl.name, c.Name)
				bad++
			} else if strings.Join(got[c.Name], "\n") != strings.Join(iptables.Strings(c.Rules), "\n") {
				t.Errorf("%s %s: kernel holds\n%s\nrendered\n%s", tbl.name, c.Name,
					strings.Join(got[c.Name], "\n"), strings.Join(iptables.Strings(c.Rules), "\n"))
				bad++
			}
			if bad > 5 {
				t.Fatal("too many differences")
			}
		}
	}
}

// TestChunkedSync checks that a sync larger than MaxRestoreLines is split
// into several transactions that each apply on their own (the fake rejects
// a jump to a chain that does not exist yet and the deletion of a chain
// still referenced), that the result is what was rendered, and that a small
// change stays one transaction.
func TestChunkedSync(t *testing.T) {
	const limit = 2000
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(fam), func(t *testing.T) {
			c := scaleCluster{family: fam, n: 1000}
			p, ipt := c.fakeProxier(t)
			p.opts.MaxRestoreLines = limit
			ctx := context.Background()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("cold sync: %v", err)
			}
			r := p.LastSync()
			if r.Transactions < 2 {
				t.Fatalf("cold sync of %d rules made %d transactions; want it split", r.RulesWritten, r.Transactions)
			}
			var total int
			for i, call := range ipt.Restores() {
				lines := bytes.Count(call.Payload, []byte("\n"))
				total += len(call.Payload)
				// A transaction is the chains' lines plus *table and COMMIT;
				// one chain alone may exceed the limit.
				if lines > limit+2 && bytes.Count(call.Payload, []byte("\n:")) > 1 {
					t.Errorf("transaction %d has %d lines; want at most %d", i, lines, limit+2)
				}
			}
			if total != r.BytesWritten {
				t.Errorf("report says %d bytes, restores got %d", r.BytesWritten, total)
			}
			t.Logf("cold sync: %d rules, %d bytes in %d transactions", r.RulesWritten, r.BytesWritten, r.Transactions)
			kernelMatchesDesired(t, p, ipt)

			// Remove a third of the Services: many deletions, still
			// chunked, deletions last.
			for i := 0; i < c.n; i += 3 {
				p.OnServiceUpdate(c.service(i), nil)
				p.OnEndpointSliceUpdate(c.slice(i), true)
			}
			ipt.ResetRestores()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("removing Services: %v", err)
			}
			r = p.LastSync()
			calls := ipt.Restores()
			if len(calls) < 2 || countAll(r.ChainsDeleted) == 0 {
				t.Fatalf("removal made %d transactions deleting %d chains; want a split with deletions", len(calls), countAll(r.ChainsDeleted))
			}
			for i, call := range calls[:len(calls)-1] {
				if bytes.Contains(call.Payload, []byte("\n-X ")) {
					t.Errorf("transaction %d of %d deletes chains; only the last may", i+1, len(calls))
				}
			}
			kernelMatchesDesired(t, p, ipt)
			node := trace.Node{LocalAddrs: []netip.Addr{c.nodeIP()}}
			for _, i := range []int{0, 1, 2, 3, 4, 998, 999} {
				res, err := ipt.Trace(node, trace.Packet{Protocol: "tcp", Src: c.nodeIP(), Dst: netip.MustParseAddr(c.clusterIP(i)), DstPort: 80 + i%3, Local: true})
				if err != nil {
					t.Fatal(err)
				}
				want := ""
				if i%3 != 0 {
					want = netip.AddrPortFrom(netip.MustParseAddr(c.endpointIP(i)), 8080).String()
				}
				if got := res.Outcomes[0].DNAT; fmt.Sprint(got) != want && !(want == "" && !got.IsValid()) {
					t.Errorf("svc-%d: DNAT %v, want %q", i, got, want)
				}
			}

			// One endpoint change: one small transaction.
			s := c.slice(1)
			s.Endpoints[0].Addresses = []string{c.endpointIP(5000)}
			p.OnEndpointSliceUpdate(s, false)
			if err := p.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if r := p.LastSync(); r.Transactions != 1 {
				t.Errorf("one endpoint change made %d transactions, want 1", r.Transactions)
			}
		})
	}
}

// userChains returns the rules of the user-defined chains of an
// iptables-save dump, as text.
func userChains(save []byte) map[string][]string {
	s, err := iptables.ParseSave(save)
	if err != nil {
		panic(err)
	}
	out := map[string][]string{}
	for _, t := range s.Tables {
		for _, c := range t.Chains {
			if !c.Builtin() {
				out[c.Name] = iptables.Strings(c.Rules)
			}
		}
	}
	return out
}

// parseSaves reads iptables-save dumps per table.
func parseSaves(t testing.TB, saves map[iptables.Table][]byte) map[iptables.Table]*iptables.SavedTable {
	t.Helper()
	out := map[iptables.Table]*iptables.SavedTable{}
	for tbl, save := range saves {
		st, err := iptables.ParseSaveTable(tbl, save)
		if err != nil {
			t.Fatal(err)
		}
		out[tbl] = st
	}
	return out
}
