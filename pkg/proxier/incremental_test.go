package proxier

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
)

// TestIncrementalSyncsMatchScratch applies rounds of random changes
// (Services added, removed, retyped; endpoints added, removed, moved;
// slices deleted) to a proxier that syncs after each round, and checks
// after every round that the tables it left are exactly those a fresh
// proxier writes for the same objects in one sync, and that the syncs after
// the first were planned from the renderer's delta alone, except those
// that crossed kube-proxy's large-cluster threshold (1,000 endpoints; the
// cluster starts just over it), which render everything.
func TestIncrementalSyncsMatchScratch(t *testing.T) {
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(fam), func(t *testing.T) {
			ctx := context.Background()
			c := scaleCluster{family: fam, n: 505, eps: 2}
			p, ipt := c.fakeProxier(t)
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("first sync: %v", err)
			}
			services := map[int]*v1.Service{}
			slices := map[int]*discovery.EndpointSlice{}
			for i := 0; i < c.n; i++ {
				services[i], slices[i] = c.service(i), c.slice(i)
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(fam))))
			incremental, crossings := 0, 0
			large := p.LastSync().LargeClusterMode
			const rounds = 40
			for round := range rounds {
				for range 1 + rng.IntN(8) {
					mutate(c, rng, p, services, slices)
				}
				if err := p.Sync(ctx); err != nil {
					t.Fatalf("round %d: sync: %v", round, err)
				}
				if r := p.LastSync(); r.Incremental {
					incremental++
				} else if r.LargeClusterMode != large {
					crossings++
				}
				large = p.LastSync().LargeClusterMode
				want := scratchTables(t, c, services, slices)
				for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
					got := tableChains(t, ipt, table)
					if !maps.EqualFunc(got, want[table], func(a, b []string) bool { return slicesEqual(a, b) }) {
						t.Fatalf("round %d, %s table: incremental syncs left %s", round, table, chainDiff(got, want[table]))
					}
				}
			}
			if crossings == 0 {
				t.Errorf("no sync crossed the large-cluster threshold")
			}
			if incremental+crossings != rounds {
				t.Errorf("%d of %d syncs were planned from the delta and %d crossed the large-cluster threshold; want all the others from the delta", incremental, rounds, crossings)
			}
		})
	}
}

func slicesEqual(a, b []string) bool { return slices.Equal(a, b) }

// mutate makes one random change to the cluster and tells the proxier.
func mutate(c scaleCluster, rng *rand.Rand, p *Proxier, services map[int]*v1.Service, eps map[int]*discovery.EndpointSlice) {
	i := rng.IntN(c.n + 20) // a few Services beyond the first n appear later
	svc := services[i]
	switch op := rng.IntN(6); {
	case op == 0 && svc != nil: // delete the Service
		delete(services, i)
		p.OnServiceUpdate(svc, nil)
	case op == 0 || svc == nil: // (re)create it
		s := c.service(i)
		services[i] = s
		p.OnServiceUpdate(nil, s)
	case op == 1: // retype it: NodePort, LoadBalancer or external IP changes
		s := c.service(i + rng.IntN(35))
		s.Name, s.Spec.ClusterIP, s.Spec.ClusterIPs = svc.Name, svc.Spec.ClusterIP, svc.Spec.ClusterIPs
		if s.Spec.Ports[0].NodePort != 0 {
			s.Spec.Ports[0].NodePort = c.nodePort(i)
		}
		services[i] = s
		p.OnServiceUpdate(svc, s)
	case op == 2 && eps[i] != nil: // delete the slice
		p.OnEndpointSliceUpdate(eps[i], true)
		delete(eps, i)
	default: // new endpoints: some kept, some moved, some added
		s := c.slice(i)
		n := rng.IntN(4)
		s.Endpoints = s.Endpoints[:0]
		for j := range n {
			e := c.slice(i).Endpoints[0]
			e.Addresses = []string{c.endpointIP(10000 + rng.IntN(50) + j*50)}
			s.Endpoints = append(s.Endpoints, e)
		}
		eps[i] = s
		p.OnEndpointSliceUpdate(s, false)
	}
}

// scratchTables returns the chains a fresh proxier writes for the objects.
func scratchTables(t *testing.T, c scaleCluster, services map[int]*v1.Service, eps map[int]*discovery.EndpointSlice) map[iptables.Table]map[string][]string {
	t.Helper()
	fresh := scaleCluster{family: c.family}
	ipt := memory.New(c.family)
	p := fresh.proxier(t, ipt)
	for _, i := range slices.Sorted(maps.Keys(services)) {
		p.OnServiceUpdate(nil, services[i])
	}
	for _, i := range slices.Sorted(maps.Keys(eps)) {
		p.OnEndpointSliceUpdate(eps[i], false)
	}
	if err := p.Sync(context.Background()); err != nil {
		t.Fatalf("scratch sync: %v", err)
	}
	return map[iptables.Table]map[string][]string{
		iptables.TableFilter: tableChains(t, ipt, iptables.TableFilter),
		iptables.TableNAT:    tableChains(t, ipt, iptables.TableNAT),
	}
}

// tableChains returns a fake table's user chains and their rules.
func tableChains(t *testing.T, ipt *memory.Tables, table iptables.Table) map[string][]string {
	t.Helper()
	save, err := ipt.Save(context.Background(), table)
	if err != nil {
		t.Fatalf("save %s: %v", table, err)
	}
	return userChains(save)
}

// chainDiff describes how two tables differ, briefly.
func chainDiff(got, want map[string][]string) string {
	var out []string
	for name, rules := range got {
		w, ok := want[name]
		switch {
		case !ok:
			out = append(out, "extra chain "+name)
		case !slices.Equal(rules, w):
			out = append(out, fmt.Sprintf("chain %s = %q, want %q", name, rules, w))
		}
	}
	for name := range want {
		if _, ok := got[name]; !ok {
			out = append(out, "missing chain "+name)
		}
	}
	slices.Sort(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("... (%d differences)", len(out)))
	}
	return fmt.Sprint(out)
}
