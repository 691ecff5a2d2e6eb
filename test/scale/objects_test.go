package scale

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// benchNamespace holds the benchmark's Services.
const benchNamespace = "bench"

// defaultLoadWorkers is how many creates run at once (BENCH_LOAD_WORKERS):
// the apiserver is CPU-bound well before that many (docs/benchmarks.md,
// "Loading the objects").
const defaultLoadWorkers = 32

// loadProgressEvery is how often the loader logs its progress.
const loadProgressEvery = 15 * time.Second

// benchService is one Service of the benchmark with its endpoints as first
// created.
type benchService struct {
	svc       *v1.Service
	clusterIP netip.Addr
	// chain is kube-proxy's KUBE-SVC chain name for its port.
	chain string
	// nftKey is the Service port's key in kube-proxy's nftables chain
	// names (see NFTEndpointJumps).
	nftKey    string
	endpoints []netip.Addr
}

// addr is the Service's cluster IP and port.
func (s *benchService) addr() netip.AddrPort { return netip.AddrPortFrom(s.clusterIP, servicePort) }

// objectSet creates and changes the benchmark's Services and
// EndpointSlices with a client whose QPS limits are raised.
type objectSet struct {
	client   kubernetes.Interface
	workers  int
	services []*benchService
}

// ensure creates Services (and their slices) until there are size.Services,
// each with size.Endpoints endpoints; earlier Services get their slices
// rewritten when the endpoint count changed. It logs its progress every
// loadProgressEvery and returns a summary of how fast it went.
func (o *objectSet) ensure(ctx context.Context, size Size, logf func(string, ...any)) (string, error) {
	prefix := netipPrefix(EndpointRange)
	have := len(o.services)
	for i := have; i < size.Services; i++ {
		o.services = append(o.services, &benchService{})
	}
	todo := 0
	for i := range size.Services {
		if i >= have || len(o.services[i].endpoints) != size.Endpoints {
			todo++
		}
	}
	if todo == 0 {
		return "nothing to create", nil
	}
	start := time.Now()
	var done atomic.Int64
	var mu sync.Mutex
	var blocks []time.Duration // time taken by each block of 1,000 Services
	lastBlock := start
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(loadProgressEvery)
		defer tick.Stop()
		prev, prevAt := int64(0), start
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				n := done.Load()
				rate := float64(n-prev) / now.Sub(prevAt).Seconds()
				eta := "?"
				if rate > 0 {
					eta = (time.Duration(float64(int64(todo)-n)/rate) * time.Second).Round(time.Second).String()
				}
				logf("loading %s: %d of %d Services with their slices after %v (%.0f/s over the last %v, ETA %s)",
					size, n, todo, now.Sub(start).Round(time.Second), rate, now.Sub(prevAt).Round(time.Second), eta)
				prev, prevAt = n, now
			}
		}
	})
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.workers)
	for i := range size.Services {
		s := o.services[i]
		if i < have && len(s.endpoints) == size.Endpoints {
			continue
		}
		g.Go(func() error {
			eps := make([]netip.Addr, size.Endpoints)
			for j := range eps {
				a, err := NthAddr(prefix, i*size.Endpoints+j)
				if err != nil {
					return err
				}
				eps[j] = a
			}
			create := s.svc == nil
			if create {
				if err := o.createService(gctx, s, i); err != nil {
					return err
				}
			}
			s.endpoints = eps
			if err := o.writeSlice(gctx, s, eps, create); err != nil {
				return err
			}
			if n := done.Add(1); n%1000 == 0 {
				mu.Lock()
				now := time.Now()
				blocks = append(blocks, now.Sub(lastBlock))
				lastBlock = now
				mu.Unlock()
			}
			return nil
		})
	}
	err := g.Wait()
	close(stop)
	wg.Wait()
	took := time.Since(start)
	summary := fmt.Sprintf("%d Services with their slices in %v (%.0f/s, %d workers)", todo, took.Round(100*time.Millisecond),
		float64(todo)/took.Seconds(), o.workers)
	if len(blocks) > 0 {
		parts := make([]string, len(blocks))
		for k, d := range blocks {
			parts[k] = d.Round(100 * time.Millisecond).String()
		}
		summary += "; each 1,000: " + strings.Join(parts, " ")
	}
	return summary, err
}

func netipPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func (o *objectSet) createService(ctx context.Context, s *benchService, i int) error {
	want := framework.NewService(benchNamespace, fmt.Sprintf("svc-%05d", i),
		framework.ServicePort("http", v1.ProtocolTCP, servicePort, targetPort))
	got, err := o.client.CoreV1().Services(benchNamespace).Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Service %s: %w", want.Name, err)
	}
	ip, err := netip.ParseAddr(got.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("Service %s has cluster IP %q: %w", got.Name, got.Spec.ClusterIP, err)
	}
	s.svc, s.clusterIP = got, ip
	s.nftKey = NFTServiceKey(benchNamespace, got.Name, string(v1.ProtocolTCP), "http")
	s.chain = rules.ChainNamesFor(proxy.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: benchNamespace, Name: got.Name},
		Port:           "http",
		Protocol:       v1.ProtocolTCP,
	}).Cluster
	return nil
}

// writeSlice creates or replaces the Service's IPv4 EndpointSlice so that it
// lists exactly eps.
func (o *objectSet) writeSlice(ctx context.Context, s *benchService, eps []netip.Addr, create bool) error {
	return o.writeSliceAt(ctx, s, eps, create, time.Time{})
}

// writeSliceAt is writeSlice that also sets the slice's
// last-change-trigger-time annotation (as the EndpointSlice controller
// does, and from which both proxies compute network programming latency)
// unless trigger is zero.
func (o *objectSet) writeSliceAt(ctx context.Context, s *benchService, eps []netip.Addr, create bool, trigger time.Time) error {
	backends := make([]framework.Backend, len(eps))
	for i, a := range eps {
		backends[i] = framework.Backend{Addresses: []netip.Addr{a}}
	}
	want, err := framework.NewEndpointSlice(s.svc, v1.IPv4Protocol, backends...)
	if err != nil {
		return err
	}
	if !trigger.IsZero() {
		want.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.UTC().Format(time.RFC3339Nano)}
	}
	api := o.client.DiscoveryV1().EndpointSlices(benchNamespace)
	if create {
		_, err = api.Create(ctx, want, metav1.CreateOptions{})
	} else {
		var cur *discoveryv1.EndpointSlice
		if cur, err = api.Get(ctx, want.Name, metav1.GetOptions{}); err == nil {
			want.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, want, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("writing EndpointSlice %s: %w", want.Name, err)
	}
	return nil
}

// swapFirstEndpoint replaces the Service's first endpoint with fresh (one
// endpoint change) and returns the previous list.
func (o *objectSet) swapFirstEndpoint(ctx context.Context, s *benchService, fresh netip.Addr) error {
	eps := append([]netip.Addr{fresh}, s.endpoints[1:]...)
	return o.writeSlice(ctx, s, eps, false)
}

// reset writes back the Service's original endpoints.
func (o *objectSet) reset(ctx context.Context, s *benchService) error {
	return o.writeSlice(ctx, s, s.endpoints, false)
}
