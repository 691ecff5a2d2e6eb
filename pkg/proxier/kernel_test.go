package proxier

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

func kernelProxier(t *testing.T, backend iptables.Backend) (*Proxier, iptables.Interface) {
	t.Helper()
	kerneltest.Enter(t)
	ctx := context.Background()
	if err := iptables.Present(ctx, v1.IPv4Protocol, backend); err != nil {
		t.Skipf("iptables %s not usable here: %v", backend, err)
	}
	ipt, err := iptables.New(v1.IPv4Protocol, backend)
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := ktesting.NewTestContext(t)
	p := New(logger, Options{
		Rules:         kernelRulesConfig(),
		SyncPeriod:    time.Minute,
		MinSyncPeriod: 0,
		IPTables:      ipt,
	})
	loadRichCluster(p)
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	return p, ipt
}

// TestKernelRoundTrip checks, on the real tools, that the rules iptproxy
// renders are exactly what iptables-save prints back: a full resync (as
// after a restart) then writes nothing, and a one-endpoint change rewrites
// only that Service's chains.
func TestKernelRoundTrip(t *testing.T) {
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			p, ipt := kernelProxier(t, backend)
			ctx := context.Background()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("first sync: %v", err)
			}
			desired := p.Desired()
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
					if strings.Join(got[c.Name], "\n") != strings.Join(iptables.Strings(c.Rules), "\n") {
						t.Errorf("%s %s: kernel holds\n%s\nrendered\n%s", tbl.name, c.Name,
							strings.Join(got[c.Name], "\n"), strings.Join(iptables.Strings(c.Rules), "\n"))
					}
				}
			}

			// A restart: a new proxier adopts the kernel and writes nothing.
			p2, _ := kernelProxierSameNS(t, p, ipt)
			if err := p2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if r := p2.LastSync(); r.RulesWritten != 0 || countAll(r.ChainsDeleted) != 0 {
				t.Errorf("restart sync wrote %d rules to %v, deleted %v; want nothing", r.RulesWritten, r.ChainsWritten, r.ChainsDeleted)
			}

			// One endpoint more for ns/plain: only its chains change; they
			// and the top-level chains are written (as kube-proxy does).
			_, slices := richCluster()
			s := slices[0].DeepCopy()
			s.Endpoints = append(s.Endpoints, s.Endpoints[0])
			s.Endpoints[len(s.Endpoints)-1].Addresses = []string{"10.1.0.9"}
			p2.OnEndpointSliceUpdate(s, false)
			if err := p2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			r := p2.LastSync()
			names := rules.ChainNamesFor(proxy.ServicePortName{NamespacedName: s2nn("ns", "plain"), Port: "p", Protocol: v1.ProtocolTCP})
			for _, c := range r.ChainsWritten["nat"] {
				if c != names.Cluster && !strings.HasPrefix(c, rules.PrefixEndpoint) && !rules.IsRootChain(c) {
					t.Errorf("endpoint change rewrote unrelated chain %s", c)
				}
			}
			for _, c := range r.ChainsWritten["filter"] {
				if !rules.IsRootChain(c) && c != rules.ChainKubeletFirewall {
					t.Errorf("endpoint change rewrote filter chain %s", c)
				}
			}

			// Someone flushes nat: the canary is gone and a full sync repairs.
			if err := ipt.Restore(ctx, []byte("*nat\n-F\n-X\nCOMMIT\n")); err != nil {
				t.Fatalf("flushing: %v", err)
			}
			missing, err := iptables.CanaryMissing(ctx, ipt, rules.ChainCanary, []iptables.Table{iptables.TableNAT})
			if err != nil || !missing {
				t.Fatalf("canary missing = %v, %v; want true", missing, err)
			}
			p2.ForceFullSync()
			if err := p2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			save, _ := ipt.Save(ctx, iptables.TableNAT)
			if !strings.Contains(string(save), "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") ||
				!strings.Contains(string(save), names.Cluster) {
				t.Errorf("nat not repaired after flush:\n%s", save)
			}
		})
	}
}

// kernelProxierSameNS builds a second proxier in the current namespace
// with the same configuration and objects, as a restarted daemon would be.
// kernelRulesConfig is the node configuration of the kernel tests.
func kernelRulesConfig() rules.Config {
	return rules.Config{
		Family:             v1.IPv4Protocol,
		NodeName:           "node-a",
		NodeIPs:            []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		MasqueradeBit:      14,
		LocalTraffic:       rules.LocalTraffic{IfLocal: []string{"-s", "10.1.0.0/16"}, IfNotLocal: []string{"!", "-s", "10.1.0.0/16"}},
		LocalhostNodePorts: true,
	}
}

func kernelProxierSameNS(t *testing.T, p *Proxier, ipt iptables.Interface) (*Proxier, iptables.Interface) {
	logger, _ := ktesting.NewTestContext(t)
	p2 := New(logger, p.opts)
	loadRichCluster(p2)
	p2.OnServicesSynced()
	p2.OnEndpointSlicesSynced()
	return p2, ipt
}
