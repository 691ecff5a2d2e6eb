package proxier

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// countingSaves counts the Save calls made through an iptables.Interface
// and passes Foreign on to it.
type countingSaves struct {
	iptables.Interface
	saves atomic.Int32
}

func (c *countingSaves) Save(ctx context.Context, t iptables.Table) ([]byte, error) {
	c.saves.Add(1)
	return c.Interface.Save(ctx, t)
}

func (c *countingSaves) Foreign() (uint64, bool) {
	if f, ok := c.Interface.(foreignCounter); ok {
		return f.Foreign()
	}
	return 0, false
}

// journalRunner enters a private network namespace and returns a Runner
// for backend with a Journal, counting its Saves; it skips the test where
// the backend cannot run.
func journalRunner(t *testing.T, backend iptables.Backend) *countingSaves {
	t.Helper()
	kerneltest.Enter(t)
	if err := iptables.Present(context.Background(), v1.IPv4Protocol, backend); err != nil {
		t.Skipf("iptables %s not usable here: %v", backend, err)
	}
	runner, err := iptables.New(v1.IPv4Protocol, backend, iptables.WithJournal(iptables.NewJournal()))
	if err != nil {
		t.Fatal(err)
	}
	return &countingSaves{Interface: runner}
}

// TestFirstSyncVerifiesTheEarlyRead restarts a proxier over rules a
// previous one wrote, with the tables read ahead of the first sync (as
// while the informers list): when nothing changed since, the first sync
// adopts that read without reading again; when someone flushed an
// endpoint chain in between, it reads the tables again and repairs the
// chain. On nft the ruleset generation tells; on legacy a read older than
// a second is never trusted.
func TestFirstSyncVerifiesTheEarlyRead(t *testing.T) {
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, flush := range []bool{false, true} {
			name := string(backend) + "/unchanged"
			if flush {
				name = string(backend) + "/endpoint chain flushed after the read"
			}
			t.Run(name, func(t *testing.T) {
				ipt := journalRunner(t, backend)
				ctx := context.Background()
				now := time.Now()
				opts := Options{Rules: kernelRulesConfig(), SyncPeriod: time.Minute, IPTables: ipt,
					Clock: func() time.Time { return now }}
				logger, _ := ktesting.NewTestContext(t)
				first := New(logger, opts)
				loadRichCluster(first)
				first.OnServicesSynced()
				first.OnEndpointSlicesSynced()
				if err := first.Sync(ctx); err != nil {
					t.Fatal(err)
				}

				// The restart: the tables are read while the lists run.
				p := New(logger, opts)
				loadRichCluster(p)
				foreign, known := p.foreign()
				saves := map[iptables.Table][]byte{}
				for _, tbl := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
					var err error
					if saves[tbl], err = ipt.Save(ctx, tbl); err != nil {
						t.Fatal(err)
					}
				}
				p.early = p.readySaves(parseSaves(t, saves), now, foreign, known)
				spn := proxy.ServicePortName{NamespacedName: s2nn("ns", "plain"), Port: "p", Protocol: v1.ProtocolTCP}
				sep := endpointChainOf(t, saves[iptables.TableNAT], rules.ChainNamesFor(spn).Cluster)
				if flush {
					kerneltest.Run(t, "iptables-"+string(backend), "-t", "nat", "-F", sep)
				}
				now = now.Add(3 * time.Second) // the lists took a while
				p.OnServicesSynced()
				p.OnEndpointSlicesSynced()
				ipt.saves.Store(0)
				if err := p.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				wantSaves := int32(0)
				if flush || backend == iptables.BackendLegacy {
					wantSaves = 2
				}
				if got := ipt.saves.Load(); got != wantSaves {
					t.Errorf("first sync read the tables %d times, want %d", got, wantSaves)
				}
				save, err := ipt.Save(ctx, iptables.TableNAT)
				if err != nil {
					t.Fatal(err)
				}
				if got := userChains(save)[sep]; len(got) == 0 {
					t.Errorf("endpoint chain %s still empty after the first sync", sep)
				}
			})
		}
	}
}

// endpointChainOf returns the first KUBE-SEP chain svcChain jumps to in a
// nat dump.
func endpointChainOf(t *testing.T, nat []byte, svcChain string) string {
	t.Helper()
	for _, r := range userChains(nat)[svcChain] {
		if i := strings.Index(r, "-j "+rules.PrefixEndpoint); i >= 0 {
			return strings.Fields(r[i+3:])[0]
		}
	}
	t.Fatalf("%s jumps to no endpoint chain", svcChain)
	return ""
}

// TestDriftCheck changes rules behind a synced proxier's back and checks
// that the drift check finds exactly that, that the full sync it asks for
// repairs it, and that on nft a check with nobody else writing reads
// nothing.
func TestDriftCheck(t *testing.T) {
	spn := proxy.ServicePortName{NamespacedName: s2nn("ns", "plain"), Port: "p", Protocol: v1.ProtocolTCP}
	svc := rules.ChainNamesFor(spn).Cluster
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"rule inserted into KUBE-SERVICES", []string{"-t", "nat", "-I", "KUBE-SERVICES", "1", "-j", "RETURN"}, "KUBE-SERVICES"},
			{"service chain flushed", []string{"-t", "nat", "-F", svc}, svc},
			{"base jump narrowed", []string{"-t", "nat", "-R", "PREROUTING", "1", "-s", "192.0.2.1/32",
				"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}, "PREROUTING -> KUBE-SERVICES"},
		} {
			t.Run(string(backend)+"/"+tc.name, func(t *testing.T) {
				ipt := journalRunner(t, backend)
				ctx := context.Background()
				now := time.Now()
				logger, _ := ktesting.NewTestContext(t)
				p := New(logger, Options{Rules: kernelRulesConfig(), SyncPeriod: time.Second, IPTables: ipt,
					Clock: func() time.Time { return now }})
				loadRichCluster(p)
				p.OnServicesSynced()
				p.OnEndpointSlicesSynced()
				if err := p.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				check := func() (saves int32) {
					now = now.Add(time.Minute)
					ipt.saves.Store(0)
					p.checkDrift(ctx)
					return ipt.saves.Load()
				}
				check() // the first check reads: nothing is known yet
				if p.needFull.Load() {
					t.Fatal("drift found right after a sync")
				}
				if n := check(); backend == iptables.BackendNFT && n != 0 {
					t.Errorf("a check with nobody else writing read the tables %d times", n)
				}
				kerneltest.Run(t, "iptables-"+string(backend), tc.args...)
				if n := check(); n != 2 {
					t.Errorf("a check after a foreign write read the tables %d times, want 2", n)
				}
				if !p.needFull.Load() {
					t.Fatalf("drift (%s) not found", tc.name)
				}
				if err := p.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				if r := p.LastSync(); ipt.saves.Load() != 2 || (!strings.Contains(tc.want, "->") && !slices.Contains(r.ChainsWritten["nat"], tc.want)) {
					t.Errorf("repairing sync read %d times (want 2, the check's dump) and wrote %v, want %s among them", ipt.saves.Load(), r.ChainsWritten["nat"], tc.want)
				}
				check()
				if p.needFull.Load() {
					t.Error("drift still found after the repair")
				}
				save, _ := ipt.Save(ctx, iptables.TableNAT)
				if !strings.Contains(string(save), `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`) {
					t.Errorf("exact PREROUTING jump missing after the repair")
				}
			})
		}
	}
}

// TestDeltaSyncsTrustOnlyAProvenRecord checks, on nft with the Journal,
// what an endpoint change writes: while nobody else has written since the
// record was verified, only the chains whose content changed; after a
// foreign write, the top-level chains and every chain of the changed
// Service, as kube-proxy does, which repairs a flushed endpoint chain.
func TestDeltaSyncsTrustOnlyAProvenRecord(t *testing.T) {
	kerneltest.Enter(t)
	ctx := context.Background()
	if err := iptables.Present(ctx, v1.IPv4Protocol, iptables.BackendNFT); err != nil {
		t.Skipf("iptables-nft not usable here: %v", err)
	}
	ipt, err := iptables.New(v1.IPv4Protocol, iptables.BackendNFT, iptables.WithJournal(iptables.NewJournal()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ipt.Foreign(); !ok {
		t.Skip("nftables generation not readable here")
	}
	logger, _ := ktesting.NewTestContext(t)
	p := New(logger, Options{Rules: kernelRulesConfig(), SyncPeriod: time.Minute, IPTables: ipt})
	loadRichCluster(p)
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	spn := proxy.ServicePortName{NamespacedName: s2nn("ns", "plain"), Port: "p", Protocol: v1.ProtocolTCP}
	svc := rules.ChainNamesFor(spn).Cluster
	nat, _ := ipt.Save(ctx, iptables.TableNAT)
	sep := endpointChainOf(t, nat, svc)
	_, eps := richCluster()
	addEndpoint := func(ip string) {
		s := eps[0].DeepCopy()
		s.Endpoints = append(s.Endpoints, s.Endpoints[0])
		s.Endpoints[len(s.Endpoints)-1].Addresses = []string{ip}
		p.OnEndpointSliceUpdate(s, false)
		if err := p.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}

	addEndpoint("10.1.0.9")
	written := p.LastSync().ChainsWritten
	if slices.Contains(written["nat"], rules.ChainServices) || len(written["filter"]) != 0 || slices.Contains(written["nat"], sep) {
		t.Errorf("with a proven record an endpoint change wrote %v; want only the changed chains", written)
	}

	kerneltest.Run(t, "iptables-nft", "-t", "nat", "-F", sep)
	addEndpoint("10.1.0.8")
	written = p.LastSync().ChainsWritten
	for _, want := range []string{rules.ChainServices, svc, sep} {
		if !slices.Contains(written["nat"], want) {
			t.Errorf("after a foreign write the endpoint change did not write %s (wrote %v)", want, written["nat"])
		}
	}
	nat, _ = ipt.Save(ctx, iptables.TableNAT)
	if len(userChains(nat)[sep]) == 0 {
		t.Errorf("flushed endpoint chain %s not repaired by its Service's change", sep)
	}
}
