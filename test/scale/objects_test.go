package scale

import (
	"context"
	"fmt"
	"net/netip"
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

// createWorkers is how many creates run at once.
const createWorkers = 48

// benchService is one Service of the benchmark with its endpoints as first
// created.
type benchService struct {
	svc       *v1.Service
	clusterIP netip.Addr
	// chain is kube-proxy's KUBE-SVC chain name for its port.
	chain     string
	endpoints []netip.Addr
}

// addr is the Service's cluster IP and port.
func (s *benchService) addr() netip.AddrPort { return netip.AddrPortFrom(s.clusterIP, servicePort) }

// objectSet creates and changes the benchmark's Services and
// EndpointSlices with a client whose QPS limits are raised.
type objectSet struct {
	client   kubernetes.Interface
	services []*benchService
}

// ensure creates Services (and their slices) until there are size.Services,
// each with size.Endpoints endpoints; earlier Services get their slices
// rewritten when the endpoint count changed.
func (o *objectSet) ensure(ctx context.Context, size Size) error {
	prefix := netipPrefix(EndpointRange)
	have := len(o.services)
	for i := have; i < size.Services; i++ {
		o.services = append(o.services, &benchService{})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(createWorkers)
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
			if s.svc == nil {
				if err := o.createService(gctx, s, i); err != nil {
					return err
				}
				s.endpoints = eps
				return o.writeSlice(gctx, s, eps, true)
			}
			s.endpoints = eps
			return o.writeSlice(gctx, s, eps, false)
		})
	}
	return g.Wait()
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
