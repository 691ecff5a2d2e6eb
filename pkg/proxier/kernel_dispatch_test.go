package proxier

import (
	"context"
	"fmt"
	"os"
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

// TestKernelScale measures, on both backends, a cold sync of 10,000
// Services x 10 endpoints into empty tables, a restart (adopting) sync, a
// one-endpoint change, and iptables-save of the result. It prints figures
// and asserts only correctness; it runs only with IPTPROXY_KERNEL_SCALE=1
// (several minutes).
func TestKernelScale(t *testing.T) {
	if os.Getenv("IPTPROXY_KERNEL_SCALE") != "1" {
		t.Skip("scale measurement; set IPTPROXY_KERNEL_SCALE=1 to run it")
	}
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			ipt := kernelIPTables(t, v1.IPv4Protocol, backend)
			ctx := context.Background()
			c := scaleCluster{family: v1.IPv4Protocol, n: 10000, eps: 10}
			p := c.proxier(t, ipt)
			start := time.Now()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("cold sync: %v", err)
			}
			r := p.LastSync()
			t.Logf("%s cold sync 10k x 10: %v (%d rules, %.1f MB, %d transactions)",
				backend, time.Since(start), r.RulesWritten, float64(r.BytesWritten)/1e6, r.Transactions)

			start = time.Now()
			save, err := ipt.Save(ctx, iptables.TableNAT)
			if err != nil {
				t.Fatalf("iptables-save after the cold sync: %v", err)
			}
			t.Logf("%s iptables-save nat: %v (%d lines)", backend, time.Since(start), strings.Count(string(save), "\n"))
			kernelMatchesDesired(t, p, ipt)

			s := c.slice(7)
			s.Endpoints[0].Addresses = []string{"10.200.0.1"}
			p.OnEndpointSliceUpdate(s, false)
			start = time.Now()
			if err := p.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			r = p.LastSync()
			t.Logf("%s one-endpoint change: %v (%d chains, %d rules, %d transactions)",
				backend, time.Since(start), countAll(r.ChainsWritten), r.RulesWritten, r.Transactions)

			p.OnServiceUpdate(nil, c.service(c.n))
			p.OnEndpointSliceUpdate(c.slice(c.n), false)
			start = time.Now()
			if err := p.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			r = p.LastSync()
			t.Logf("%s one new Service: %v (%d chains, %d rules)", backend, time.Since(start), countAll(r.ChainsWritten), r.RulesWritten)

			p2 := c.proxier(t, ipt)
			p2.OnServiceUpdate(nil, c.service(c.n))
			p2.OnEndpointSliceUpdate(c.slice(c.n), false)
			p2.OnEndpointSliceUpdate(s, false)
			start = time.Now()
			if err := p2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			r = p2.LastSync()
			t.Logf("%s restart (adopting) sync: %v (%d rules written)", backend, time.Since(start), r.RulesWritten)
			if r.RulesWritten != 0 {
				t.Errorf("restart sync wrote %d rules to %v; want none", r.RulesWritten, r.ChainsWritten)
			}
			if status, err := os.ReadFile("/proc/self/status"); err == nil {
				for _, l := range strings.Split(string(status), "\n") {
					if strings.HasPrefix(l, "VmHWM") || strings.HasPrefix(l, "VmRSS") {
						t.Logf("test process %s", strings.Join(strings.Fields(l), " "))
					}
				}
			}
		})
	}
}
