package proxier

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// kernelIPTables enters a private network namespace and returns the real
// iptables for family and backend, or skips.
func kernelIPTables(t *testing.T, family v1.IPFamily, backend iptables.Backend) iptables.Interface {
	t.Helper()
	kerneltest.Enter(t)
	if err := iptables.Present(context.Background(), family, backend); err != nil {
		t.Skipf("iptables %s for %s not usable here: %v", backend, family, err)
	}
	ipt, err := iptables.New(family, backend)
	if err != nil {
		t.Fatal(err)
	}
	return ipt
}

// TestKernelDispatchRoundTrip checks, on the real tools and both families,
// that the dispatch tree (address prefixes, port ranges) is exactly what
// iptables-save prints back, so a restart adopts it and writes nothing,
// and that one new Service rewrites only a few shared chains.
func TestKernelDispatchRoundTrip(t *testing.T) {
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			t.Run(fmt.Sprintf("%s/%s", backend, fam), func(t *testing.T) {
				ipt := kernelIPTables(t, fam, backend)
				ctx := context.Background()
				c := scaleCluster{family: fam, n: 300}
				p := c.proxier(t, ipt)
				if err := p.Sync(ctx); err != nil {
					t.Fatalf("first sync: %v", err)
				}
				kernelMatchesDesired(t, p, ipt)

				p2 := c.proxier(t, ipt)
				if err := p2.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				if r := p2.LastSync(); r.RulesWritten != 0 || countAll(r.ChainsDeleted) != 0 {
					t.Errorf("restart sync wrote %d rules to %v, deleted %v; want nothing", r.RulesWritten, r.ChainsWritten, r.ChainsDeleted)
				}

				p2.OnServiceUpdate(nil, c.service(c.n))
				p2.OnEndpointSliceUpdate(c.slice(c.n), false)
				if err := p2.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				shared := 0
				for _, chains := range p2.LastSync().ChainsWritten {
					for _, ch := range chains {
						if !rules.IsServiceChain(ch) || strings.HasPrefix(ch, rules.PrefixDispatch) {
							shared++
						}
					}
				}
				if shared == 0 || shared > 20 {
					t.Errorf("one new Service rewrote %d shared/dispatch chains; want 1..20", shared)
				}
				kernelMatchesDesired(t, p2, ipt)
			})
		}
	}
}

// TestKernelChunkedColdSync does a cold sync of a few thousand Services
// into empty tables with transactions of at most 20,000 lines, on both
// backends, and checks that it was split, that the result is what was
// rendered, and that a restart adopts it without writing.
func TestKernelChunkedColdSync(t *testing.T) {
	if testing.Short() {
		t.Skip("large kernel sync; skipped in -short mode")
	}
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			ipt := kernelIPTables(t, v1.IPv4Protocol, backend)
			ctx := context.Background()
			c := scaleCluster{family: v1.IPv4Protocol, n: 3000}
			p := c.proxier(t, ipt)
			p.opts.MaxRestoreLines = 20000
			start := time.Now()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("cold sync: %v", err)
			}
			r := p.LastSync()
			t.Logf("cold sync of %d Services: %d rules, %d bytes, %d transactions in %v",
				c.n, r.RulesWritten, r.BytesWritten, r.Transactions, time.Since(start))
			if r.Transactions < 2 {
				t.Errorf("cold sync of %d rules made %d transactions; want it split", r.RulesWritten, r.Transactions)
			}
			kernelMatchesDesired(t, p, ipt)

			p2 := c.proxier(t, ipt)
			start = time.Now()
			if err := p2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if r := p2.LastSync(); r.RulesWritten != 0 || countAll(r.ChainsDeleted) != 0 {
				t.Errorf("restart sync wrote %d rules, deleted %d chains; want nothing", r.RulesWritten, countAll(r.ChainsDeleted))
			}
			t.Logf("restart (adopting) sync: %v", time.Since(start))
		})
	}
}
