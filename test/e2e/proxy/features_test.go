package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/test/e2e/echo"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// altPort is the second port every feature pod serves; its echo server
// answers "<pod>-9090" so that a test sees which target port a packet
// reached.
const altPort = 9090

// featureWorld is the cluster the feature tests share: three nodes in three
// zones running iptproxy, four pods (pod-a and pod-b on node-1, pod-c on
// node-2, pod-d on node-3) and two outside clients whose Service and
// external traffic goes through node-1.
type featureWorld struct {
	c                      *fw.Cluster
	n1, n2, n3             *fw.Node
	podA, podB, podC, podD *fw.Pod
	client, other          *fw.Client
	daemons                []*fw.Daemon
	families               []v1.IPFamily
}

func fastSync(cfg *kpv1alpha1.KubeProxyConfiguration) {
	cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 3 * time.Second}
	cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
}

func newFeatureWorld(t *testing.T) *featureWorld {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 3, DualStack: true})
	nodes := c.Nodes()
	w := &featureWorld{c: c, n1: nodes[0], n2: nodes[1], n3: nodes[2], families: c.IPFamilies()}
	pod := func(n *fw.Node, name string) *fw.Pod {
		p := n.AddPod(t, name)
		p.StartEcho(t, fw.EchoOn(echoPort))
		p.StartEcho(t, fw.EchoOptions{Name: name + "-" + strconv.Itoa(altPort), TCP: []int{altPort}, UDP: []int{altPort}})
		return p
	}
	w.podA, w.podB = pod(w.n1, "pod-a"), pod(w.n1, "pod-b")
	w.podC, w.podD = pod(w.n2, "pod-c"), pod(w.n3, "pod-d")
	w.client = c.AddClient(t, "outside")
	w.other = c.AddClient(t, "stranger")
	for _, n := range nodes {
		w.routeServiceAndExternal(t, n.NS, c.Host().IP)
	}
	for _, cl := range []*fw.Client{w.client, w.other} {
		w.routeServiceAndExternal(t, cl.NS, w.n1.IP)
		noRedirects(t, cl.NS)
	}
	for _, n := range nodes {
		w.daemons = append(w.daemons, w.startIPTProxy(t, n, nil))
	}
	for _, d := range w.daemons {
		d.WaitHealthy(t, 60*time.Second)
	}
	return w
}

// routeServiceAndExternal routes the Service CIDRs and the external range
// of both families from ns via gw (the host for nodes, node-1 for clients).
func (w *featureWorld) routeServiceAndExternal(t *testing.T, ns *fw.NS, gw func(v1.IPFamily) netip.Addr) {
	for _, cidr := range w.c.ServiceCIDRs() {
		ns.AddRoute(t, cidr, gw(familyOfAddr(cidr.Addr())))
	}
	ns.AddRoute(t, netip.MustParsePrefix(fw.ExternalCIDRIPv4), gw(v1.IPv4Protocol))
	ns.AddRoute(t, netip.MustParsePrefix(fw.ExternalCIDRIPv6), gw(v1.IPv6Protocol))
}

// noRedirects makes a client ignore ICMP redirects. Clients, nodes and the
// control plane's host share one link: a packet node-1 forwards before its
// rules exist (to a load-balancer IP written a moment earlier) goes on to
// the host, and node-1 tells the client to use the host for that address;
// the client then bypasses node-1 for minutes ("ip route get" showed
// "via 198.18.0.1" in a failed run). Real clients sit behind a router or
// load balancer, not on the nodes' link.
func noRedirects(t *testing.T, ns *fw.NS) {
	for _, k := range []string{
		"net.ipv4.conf.all.accept_redirects", "net.ipv4.conf.default.accept_redirects", "net.ipv4.conf.eth0.accept_redirects",
		"net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.default.accept_redirects", "net.ipv6.conf.eth0.accept_redirects",
	} {
		if err := ns.SetSysctl(k, "0"); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *featureWorld) startIPTProxy(t *testing.T, n *fw.Node, extra func(*kpv1alpha1.KubeProxyConfiguration)) *fw.Daemon {
	return n.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		fastSync(cfg)
		if extra != nil {
			extra(cfg)
		}
	}})
}

func familyOfAddr(a netip.Addr) v1.IPFamily {
	if a.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// hostPrefix is the single-address prefix of a.
func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// newService returns a dual-stack Service (not created) with a TCP and a UDP
// port to echoPort, named "tcp" and "udp".
func newService(name string, mutate func(*v1.Service)) *v1.Service {
	svc := fw.NewService("default", name,
		fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort),
		fw.ServicePort("udp", v1.ProtocolUDP, 80, echoPort))
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

func (w *featureWorld) service(t *testing.T, name string, mutate func(*v1.Service), backends ...fw.Backend) *v1.Service {
	svc := w.c.CreateService(t, newService(name, mutate))
	if len(backends) > 0 {
		w.c.SetEndpoints(t, svc, backends...)
	}
	return svc
}

// setIngress writes the Service's load-balancer status, as a cloud
// controller would.
func (w *featureWorld) setIngress(t *testing.T, svc *v1.Service, ingress ...v1.LoadBalancerIngress) *v1.Service {
	t.Helper()
	svc = svc.DeepCopy()
	svc.Status.LoadBalancer.Ingress = ingress
	out, err := w.c.Client().CoreV1().Services(svc.Namespace).UpdateStatus(t.Context(), svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("writing load-balancer status of %s: %v", svc.Name, err)
	}
	return out
}

// ingressFor returns one ingress entry per cluster family for external
// address index i.
func (w *featureWorld) ingressFor(i int, mode *v1.LoadBalancerIPMode) []v1.LoadBalancerIngress {
	var out []v1.LoadBalancerIngress
	for _, f := range w.families {
		out = append(out, v1.LoadBalancerIngress{IP: w.c.ExternalIP(f, i).String(), IPMode: mode})
	}
	return out
}

// createSlice writes one EndpointSlice of the family for svc with the
// backends, named <svc>-<suffix>-<family>, after mutate adjusts it.
func (w *featureWorld) createSlice(t *testing.T, svc *v1.Service, fam v1.IPFamily, suffix string, mutate func(*discoveryv1.EndpointSlice), backends ...fw.Backend) {
	t.Helper()
	es, err := fw.NewEndpointSlice(svc, fam, backends...)
	if err != nil {
		t.Fatal(err)
	}
	es.Name = svc.Name + "-" + suffix + "-" + strings.ToLower(string(fam))
	if mutate != nil {
		mutate(es)
	}
	if _, err := w.c.Client().DiscoveryV1().EndpointSlices(svc.Namespace).Create(t.Context(), es, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating EndpointSlice %s: %v", es.Name, err)
	}
}

// requests sends n requests and returns how often each backend answered,
// failing the test on any error.
func requests(t *testing.T, from *fw.NS, proto v1.Protocol, addr netip.AddrPort, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		seen[from.MustRequest(t, proto, addr).Name]++
	}
	return seen
}

// onlyFrom sends n requests and fails unless every answer came from a
// backend in want.
func onlyFrom(t *testing.T, from *fw.NS, proto v1.Protocol, addr netip.AddrPort, n int, want ...string) {
	t.Helper()
	seen := requests(t, from, proto, addr, n)
	for name := range seen {
		if !slices.Contains(want, name) {
			t.Errorf("%s %s from %s: answered by %v, want only %v", proto, addr, from.Name(), seen, want)
			return
		}
	}
}

// unanswered fails the test unless a request gets no answer (timeout,
// unreachable or refused, as wantErr says; nil accepts any failure).
func unanswered(t *testing.T, from *fw.NS, proto v1.Protocol, addr netip.AddrPort, wantErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	r, err := from.Request(ctx, proto, addr)
	switch {
	case err == nil:
		t.Errorf("%s %s from %s: answered by %v, want no answer", proto, addr, from.Name(), r)
	case wantErr != nil && !errors.Is(err, wantErr):
		t.Errorf("%s %s from %s: %v, want %v", proto, addr, from.Name(), err, wantErr)
	}
}

// eventuallyUnanswered waits until requests get no answer (after a change
// that removes the path).
func eventuallyUnanswered(t *testing.T, from *fw.NS, proto v1.Protocol, addr netip.AddrPort) {
	t.Helper()
	fw.Eventually(t, converge, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if r, err := from.Request(ctx, proto, addr); err == nil {
			return fmt.Errorf("%s %s from %s still answered by %v", proto, addr, from.Name(), r)
		}
		return nil
	})
}

// waitUntilOnly waits until the n requests in a row are answered only by
// backends in want (for transitions, where old backends may answer while
// the rules converge).
func waitUntilOnly(t *testing.T, from *fw.NS, proto v1.Protocol, addr netip.AddrPort, want ...string) {
	t.Helper()
	fw.Eventually(t, converge, func(ctx context.Context) error {
		for range 10 {
			r, err := from.Request(ctx, proto, addr)
			if err != nil {
				return err
			}
			if !slices.Contains(want, r.Name) {
				return fmt.Errorf("answered by %s, want only %v", r.Name, want)
			}
		}
		return nil
	})
}

// healthReply is an HTTP answer (a health-check node port's, a metrics
// server's).
type healthReply struct {
	code   int
	header http.Header
	body   string
}

// httpGet fetches url from inside the namespace from, without keep-alives.
func httpGet(ctx context.Context, from *fw.NS, url string) (healthReply, error) {
	tr := &http.Transport{DialContext: from.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return healthReply{}, err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return healthReply{}, err
	}
	defer resp.Body.Close() //nolint:errcheck // read-only
	b, err := io.ReadAll(resp.Body)
	return healthReply{code: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

// checkHealth waits until the health-check node port on addr answers with
// code and the given local endpoint count, with kube-proxy's body and
// headers.
func checkHealth(t *testing.T, from *fw.NS, addr netip.AddrPort, svc *v1.Service, code, localEndpoints int) healthReply {
	t.Helper()
	type healthBody struct {
		Service struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"service"`
		LocalEndpoints      *int  `json:"localEndpoints"`
		ServiceProxyHealthy *bool `json:"serviceProxyHealthy"`
	}
	var got healthReply
	var body healthBody
	fw.Eventually(t, converge, func(ctx context.Context) error {
		r, err := httpGet(ctx, from, "http://"+addr.String()+"/")
		if err != nil {
			return err
		}
		var b healthBody
		if err := json.Unmarshal([]byte(r.body), &b); err != nil {
			return fmt.Errorf("health check %s body %q: %w", addr, r.body, err)
		}
		if r.code != code || b.LocalEndpoints == nil || *b.LocalEndpoints != localEndpoints {
			return fmt.Errorf("health check %s: %d %s, want %d with %d local endpoints", addr, r.code, r.body, code, localEndpoints)
		}
		got, body = r, b
		return nil
	})
	if body.Service.Namespace != svc.Namespace || body.Service.Name != svc.Name || body.ServiceProxyHealthy == nil || !*body.ServiceProxyHealthy {
		t.Errorf("health check %s body %q: want service %s/%s and serviceProxyHealthy true", addr, got.body, svc.Namespace, svc.Name)
	}
	if h := got.header.Get("X-Load-Balancing-Endpoint-Weight"); h != strconv.Itoa(localEndpoints) {
		t.Errorf("health check %s: X-Load-Balancing-Endpoint-Weight %q, want %d", addr, h, localEndpoints)
	}
	if ct := got.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("health check %s: Content-Type %q", addr, ct)
	}
	return got
}

// hasServiceChain reports whether node's nat table of the family holds the
// KUBE-SVC chain of the Service port.
func hasServiceChain(t *testing.T, n *fw.Node, fam v1.IPFamily, svc *v1.Service, port string, proto v1.Protocol) bool {
	t.Helper()
	spn := proxy.ServicePortName{NamespacedName: types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, Port: port, Protocol: proto}
	return strings.Contains(n.IPTablesSave(t, fam, "nat"), ":"+rules.ChainNamesFor(spn).Cluster+" ")
}

// dumpOnFailure logs the nodes' nat and filter tables of both families
// when t fails, to show which rule a packet missed.
func (w *featureWorld) dumpOnFailure(t *testing.T, nodes ...*fw.Node) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range nodes {
			for _, fam := range w.families {
				for _, table := range []string{"nat", "filter"} {
					cmd := "iptables-save"
					if fam == v1.IPv6Protocol {
						cmd = "ip6tables-save"
					}
					out, err := n.Run(context.Background(), cmd, "-t", table)
					t.Logf("%s %s %s (%v):\n%s", n.Name(), fam, table, err, out)
				}
			}
		}
	})
}

func addrOn(n *fw.Node, fam v1.IPFamily, port int32) netip.AddrPort {
	return netip.AddrPortFrom(n.IP(fam), uint16(port))
}

func TestFeatures(t *testing.T) {
	w := newFeatureWorld(t)
	protos := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}

	t.Run("ClusterIP from an outside client is masqueraded", func(t *testing.T) {
		svc := w.service(t, "outside", nil, w.podC.Backend(), w.podD.Backend())
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, proto := range protos {
				w.client.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
				if r := w.client.MustRequest(t, proto, addr); r.Source.Addr() == w.client.IP(fam) {
					t.Errorf("%s %s from outside kept the client source %v; want masquerade", fam, proto, r.Source.Addr())
				}
			}
		}
	})

	t.Run("named target ports resolve per EndpointSlice", func(t *testing.T) {
		svc := w.c.CreateService(t, newService("named", func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{
				{Name: "web", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "alt", Protocol: v1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(altPort)},
			}
		}))
		// pod-a serves "http" on 8080, pod-c on 9090: two slices.
		a, c := w.podA.Backend(), w.podC.Backend()
		a.NamedPorts = map[string]int32{"http": echoPort}
		c.NamedPorts = map[string]int32{"http": altPort}
		for _, fam := range w.families {
			w.createSlice(t, svc, fam, "a", nil, a)
			w.createSlice(t, svc, fam, "c", nil, c)
		}
		for _, fam := range w.families {
			w.podB.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(svc, fam, 80), []string{"pod-a", "pod-c-9090"}, converge)
			w.client.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(svc, fam, 80), []string{"pod-a", "pod-c-9090"}, converge)
			w.podB.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(svc, fam, 81), []string{"pod-a-9090", "pod-c-9090"}, converge)
		}
	})

	t.Run("LoadBalancer ingress IPs, ipMode and source ranges", func(t *testing.T) {
		w.dumpOnFailure(t, w.n1)
		t.Cleanup(func() {
			if t.Failed() {
				for _, a := range []string{"198.18.64.4", "fd00:198:18:64::4"} {
					out, err := w.client.Run(context.Background(), "ip", "route", "get", a)
					t.Logf("client route to %s: %s %v", a, out, err)
				}
				out, err := w.n1.Run(context.Background(), "conntrack", "-L")
				t.Logf("node-1 conntrack: %v\n%s", err, out)
			}
		})
		lb := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }
		svc := w.service(t, "lb", lb, w.podC.Backend(), w.podD.Backend())
		ingress := append(w.ingressFor(1, nil), w.ingressFor(2, ptr.To(v1.LoadBalancerIPModeVIP))...)
		ingress = append(ingress, w.ingressFor(3, ptr.To(v1.LoadBalancerIPModeProxy))...)
		w.setIngress(t, svc, ingress...)
		for _, fam := range w.families {
			for _, i := range []int{1, 2} {
				addr := netip.AddrPortFrom(w.c.ExternalIP(fam, i), 80)
				for _, proto := range protos {
					w.client.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
				}
			}
			// ipMode Proxy: the load balancer proxies, the node must not
			// capture the address.
			proxied := w.c.ExternalIP(fam, 3)
			unanswered(t, w.client.NS, v1.ProtocolTCP, netip.AddrPortFrom(proxied, 80), nil)
			if dump := w.n1.IPTablesSave(t, fam, "nat"); strings.Contains(dump, proxied.String()+"/") {
				t.Errorf("%s nat table mentions the ipMode Proxy address %v", fam, proxied)
			}
		}

		ranged := w.service(t, "lb-ranges", func(s *v1.Service) {
			lb(s)
			for _, a := range []netip.Addr{w.client.IP(v1.IPv4Protocol), w.client.IP(v1.IPv6Protocol), w.n1.IP(v1.IPv4Protocol), w.n1.IP(v1.IPv6Protocol)} {
				s.Spec.LoadBalancerSourceRanges = append(s.Spec.LoadBalancerSourceRanges, hostPrefix(a).String())
			}
		}, w.podC.Backend(), w.podD.Backend())
		w.setIngress(t, ranged, w.ingressFor(4, nil)...)
		for _, fam := range w.families {
			addr := netip.AddrPortFrom(w.c.ExternalIP(fam, 4), 80)
			for _, proto := range protos {
				w.client.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
				// node-1's own address is inside a range: the node gets in.
				w.n1.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
				unanswered(t, w.other.NS, proto, addr, echo.ErrTimeout)
				// node-2 is outside every range: its own packets are
				// dropped in OUTPUT (a UDP send fails with EPERM).
				unanswered(t, w.n2.NS, proto, addr, nil)
			}
		}
	})

	t.Run("ExternalIPs reach the endpoints from outside", func(t *testing.T) {
		w.service(t, "extip", func(s *v1.Service) {
			for _, f := range w.families {
				s.Spec.ExternalIPs = append(s.Spec.ExternalIPs, w.c.ExternalIP(f, 10).String())
			}
		}, w.podC.Backend(), w.podD.Backend())
		for _, fam := range w.families {
			addr := netip.AddrPortFrom(w.c.ExternalIP(fam, 10), 80)
			for _, proto := range protos {
				w.client.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
			}
		}
		// With Local policy, reached through node-2: pod-c only, and the
		// client's own source.
		w.service(t, "extip-local", func(s *v1.Service) {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			for _, f := range w.families {
				s.Spec.ExternalIPs = append(s.Spec.ExternalIPs, w.c.ExternalIP(f, 11).String())
			}
		}, w.podC.Backend(), w.podD.Backend())
		for _, fam := range w.families {
			w.client.AddRoute(t, hostPrefix(w.c.ExternalIP(fam, 11)), w.n2.IP(fam))
			addr := netip.AddrPortFrom(w.c.ExternalIP(fam, 11), 80)
			for _, proto := range protos {
				w.client.WaitForBackends(t, proto, addr, names(w.podC), converge)
				onlyFrom(t, w.client.NS, proto, addr, 10, "pod-c")
				if r := w.client.MustRequest(t, proto, addr); r.Source.Addr() != w.client.IP(fam) {
					t.Errorf("%s %s Local-policy external IP: source %v, want the client's %v", fam, proto, r.Source.Addr(), w.client.IP(fam))
				}
			}
		}
	})

	t.Run("externalTrafficPolicy Local: source kept, health checks, short-circuit", func(t *testing.T) {
		svc := w.service(t, "etp-local", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, w.podC.Backend(), w.podD.Backend())
		w.setIngress(t, svc, w.ingressFor(20, nil)...)
		hc := uint16(svc.Spec.HealthCheckNodePort)
		if hc == 0 {
			t.Fatalf("Service %s has no healthCheckNodePort", svc.Name)
		}
		for _, fam := range w.families {
			lbIP := w.c.ExternalIP(fam, 20)
			// The outside client reaches this address through node-2,
			// which has pod-c.
			w.client.AddRoute(t, hostPrefix(lbIP), w.n2.IP(fam))
			addr := netip.AddrPortFrom(lbIP, 80)
			for _, proto := range protos {
				w.client.WaitForBackends(t, proto, addr, names(w.podC), converge)
				if r := w.client.MustRequest(t, proto, addr); r.Source.Addr() != w.client.IP(fam) {
					t.Errorf("%s %s via the LB IP: source %v, want the client's %v", fam, proto, r.Source.Addr(), w.client.IP(fam))
				}
				// Pod and node traffic on node-1 (no local endpoint) is
				// short-circuited to every endpoint.
				w.podA.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
				w.n1.WaitForBackends(t, proto, addr, names(w.podC, w.podD), converge)
			}
			checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n2.IP(fam), hc), svc, http.StatusOK, 1)
			checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n3.IP(fam), hc), svc, http.StatusOK, 1)
			checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n1.IP(fam), hc), svc, http.StatusServiceUnavailable, 0)
		}
		// A second local endpoint on node-2 is reported in the weight.
		c2 := w.n2.AddPod(t, "pod-c2")
		c2.StartEcho(t, fw.EchoOn(echoPort))
		w.c.SetEndpoints(t, svc, w.podC.Backend(), c2.Backend(), w.podD.Backend())
		checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n2.IP(v1.IPv4Protocol), hc), svc, http.StatusOK, 2)
	})

	t.Run("health-check port taken: Event on the Service, others keep serving", func(t *testing.T) {
		const port = 32123
		squatter := w.n1.StartEcho(t, fw.EchoOptions{Name: "squatter", TCP: []int{port}})
		svc := w.service(t, "hc-taken", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = port
		}, w.podC.Backend())
		fw.Eventually(t, converge, func(ctx context.Context) error {
			evs, err := w.c.Client().EventsV1().Events(svc.Namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Regarding.Kind == "Service" && e.Regarding.Name == svc.Name && e.Reason == "FailedToStartServiceHealthcheck" && e.Type == v1.EventTypeWarning {
					if !strings.Contains(e.Note, "node-1") {
						return fmt.Errorf("event note %q does not name node-1", e.Note)
					}
					t.Logf("event: %s %s: %s", e.Type, e.Reason, e.Note)
					return nil
				}
			}
			return fmt.Errorf("no FailedToStartServiceHealthcheck event for %s among %d events", svc.Name, len(evs.Items))
		})
		checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n2.IP(v1.IPv4Protocol), port), svc, http.StatusOK, 1)
		if r := w.client.MustRequest(t, v1.ProtocolTCP, netip.AddrPortFrom(w.n1.IP(v1.IPv4Protocol), port)); r.Name != "squatter" {
			t.Errorf("port %d on node-1 answered by %s, want the process that holds it", port, r.Name)
		}
		// Once the port is free, a later sync opens it. This goes beyond
		// kube-proxy v1.37, which tries once per Service change (seen
		// when this test runs with IPTPROXY_BIN=kube-proxy).
		if w.daemons[0].Name() == "kube-proxy" {
			return
		}
		if err := squatter.Stop(t.Context(), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n1.IP(v1.IPv4Protocol), port), svc, http.StatusServiceUnavailable, 0)
	})

	t.Run("externalTrafficPolicy Local with only a terminating local endpoint", func(t *testing.T) {
		term := w.podC.Backend()
		term.Terminating = true
		svc := w.service(t, "etp-terminating", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, term, w.podD.Backend())
		hc := uint16(svc.Spec.HealthCheckNodePort)
		for _, fam := range w.families {
			// node-2 still sends new connections to its serving,
			// terminating pod, but tells load balancers to drain it.
			addr := addrOn(w.n2, fam, svc.Spec.Ports[0].NodePort)
			w.client.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.podC), converge)
			onlyFrom(t, w.client.NS, v1.ProtocolTCP, addr, 10, "pod-c")
			checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n2.IP(fam), hc), svc, http.StatusServiceUnavailable, 0)
			checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n3.IP(fam), hc), svc, http.StatusOK, 1)
		}
	})

	t.Run("internalTrafficPolicy Local", func(t *testing.T) {
		svc := w.service(t, "itp-local", func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}, w.podA.Backend(), w.podC.Backend())
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, proto := range protos {
				w.podB.WaitForBackends(t, proto, addr, names(w.podA), converge)
				onlyFrom(t, w.podB.NS, proto, addr, 10, "pod-a")
				w.n2.WaitForBackends(t, proto, addr, names(w.podC), converge)
				// node-3 has no local endpoint: dropped.
				unanswered(t, w.podD.NS, proto, addr, echo.ErrTimeout)
			}
		}
	})

	t.Run("sessionAffinity ClientIP sticks to one endpoint", func(t *testing.T) {
		svc := w.service(t, "sticky", func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](3)}}
		}, w.podA.Backend(), w.podC.Backend(), w.podD.Backend())
		type vantage struct {
			from  *fw.NS
			proto v1.Protocol
		}
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, v := range []vantage{{w.podB.NS, v1.ProtocolTCP}, {w.podB.NS, v1.ProtocolUDP}, {w.client.NS, v1.ProtocolTCP}} {
				fw.Eventually(t, converge, func(ctx context.Context) error {
					_, err := v.from.Request(ctx, v.proto, addr)
					return err
				})
				for round := range 2 {
					// Every request is a new connection (a new UDP
					// socket): only the affinity keeps the endpoint.
					seen := requests(t, v.from, v.proto, addr, 15)
					if len(seen) != 1 {
						t.Errorf("%s %s from %s, round %d: answered by %v, want one endpoint", fam, v.proto, v.from.Name(), round, seen)
					}
					if round == 0 {
						// After the timeout the choice may change;
						// it must stick again.
						time.Sleep(4 * time.Second)
					}
				}
			}
		}
	})

	t.Run("topology hints: same zone, all-or-nothing, same node", func(t *testing.T) {
		hinted := func(p *fw.Pod, zones ...string) fw.Backend {
			b := p.Backend()
			b.HintZones = zones
			return b
		}
		svc := w.service(t, "zonal", func(s *v1.Service) {
			s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
		}, hinted(w.podA, "zone-a"), hinted(w.podC, "zone-b"), hinted(w.podD, "zone-c"))
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			waitUntilOnly(t, w.podB.NS, v1.ProtocolTCP, addr, "pod-a")
			onlyFrom(t, w.podB.NS, v1.ProtocolTCP, addr, 20, "pod-a")
			waitUntilOnly(t, w.n2.NS, v1.ProtocolUDP, addr, "pod-c")
			onlyFrom(t, w.n2.NS, v1.ProtocolUDP, addr, 20, "pod-c")
		}
		// One endpoint without hints: every endpoint is used.
		w.c.SetEndpoints(t, svc, hinted(w.podA, "zone-a"), hinted(w.podC, "zone-b"), w.podD.Backend())
		for _, fam := range w.families {
			w.podB.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(svc, fam, 80), names(w.podA, w.podC, w.podD), converge)
		}

		// PreferSameNode: node hints win over zone hints.
		nodeHinted := func(p *fw.Pod, node, zone string) fw.Backend {
			b := p.Backend()
			b.HintNodes, b.HintZones = []string{node}, []string{zone}
			return b
		}
		same := w.service(t, "same-node", func(s *v1.Service) {
			s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameNode)
		}, nodeHinted(w.podC, "node-1", "zone-b"), nodeHinted(w.podD, "node-3", "zone-c"))
		for _, fam := range w.families {
			addr := fw.ServiceAddr(same, fam, 80)
			waitUntilOnly(t, w.podB.NS, v1.ProtocolTCP, addr, "pod-c")
			onlyFrom(t, w.podB.NS, v1.ProtocolTCP, addr, 20, "pod-c")
			waitUntilOnly(t, w.n3.NS, v1.ProtocolTCP, addr, "pod-d")
		}
	})

	t.Run("terminating endpoints: fallback, never not-serving, ready wins", func(t *testing.T) {
		term := w.podA.Backend()
		term.Terminating = true
		gone := w.podC.Backend()
		gone.Terminating, gone.NotServing = true, true
		unready := w.podD.Backend()
		unready.NotReady = true
		svc := w.service(t, "terminating", nil, term, gone, unready)
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, proto := range protos {
				w.n2.WaitForBackends(t, proto, addr, names(w.podA), converge)
				onlyFrom(t, w.n2.NS, proto, addr, 20, "pod-a")
			}
		}
		w.c.SetEndpoints(t, svc, term, gone, w.podD.Backend())
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			waitUntilOnly(t, w.n2.NS, v1.ProtocolTCP, addr, "pod-d")
			onlyFrom(t, w.n2.NS, v1.ProtocolTCP, addr, 20, "pod-d")
			// UDP: pod-a still serves, so its conntrack entries are
			// kept (as kube-proxy keeps them) and a new request that
			// happens to reuse the source port of an earlier one may
			// still reach it; new flows must go to pod-d.
			waitUntilOnly(t, w.n2.NS, v1.ProtocolUDP, addr, "pod-d")
		}
	})

	t.Run("ignored Services and EndpointSlices get no rules", func(t *testing.T) {
		headless := w.service(t, "headless", func(s *v1.Service) { s.Spec.ClusterIP = v1.ClusterIPNone }, w.podA.Backend())
		extName := w.c.CreateService(t, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "extname"},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "backend.example.com",
				Ports: []v1.ServicePort{fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort)}},
		})
		other := w.service(t, "other-proxy", func(s *v1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "someone-else"}
		}, w.podA.Backend())
		headlessSlice := w.service(t, "headless-slice", nil)
		fqdn := w.service(t, "fqdn-slice", nil)
		for _, fam := range w.families {
			w.createSlice(t, headlessSlice, fam, "x", func(es *discoveryv1.EndpointSlice) {
				es.Labels[v1.IsHeadlessService] = ""
			}, w.podA.Backend())
		}
		w.createSlice(t, fqdn, v1.IPv4Protocol, "x", func(es *discoveryv1.EndpointSlice) {
			es.AddressType = discoveryv1.AddressTypeFQDN
			es.Name = fqdn.Name + "-fqdn"
			es.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"pod-a.example.com"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}}
		})
		// A Service created after them proves the daemon still syncs.
		after := w.service(t, "after-ignored", nil, w.podC.Backend())
		for _, fam := range w.families {
			w.podB.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(after, fam, 80), names(w.podC), converge)
			// Slices the daemon must ignore leave these Services
			// without endpoints: refused, never answered by pod-a.
			for _, s := range []*v1.Service{headlessSlice, fqdn} {
				unanswered(t, w.podB.NS, v1.ProtocolTCP, fw.ServiceAddr(s, fam, 80), echo.ErrRefused)
			}
			unanswered(t, w.podB.NS, v1.ProtocolTCP, fw.ServiceAddr(other, fam, 80), nil)
			for _, s := range []*v1.Service{headless, extName, other, headlessSlice, fqdn} {
				if hasServiceChain(t, w.n1, fam, s, "tcp", v1.ProtocolTCP) {
					t.Errorf("%s: Service %s has a KUBE-SVC chain; want it ignored", fam, s.Name)
				}
			}
			if !hasServiceChain(t, w.n1, fam, after, "tcp", v1.ProtocolTCP) {
				t.Errorf("%s: Service %s has no KUBE-SVC chain", fam, after.Name)
			}
		}
	})

	t.Run("NodePort on both families, Cluster and Local policy", func(t *testing.T) {
		np := func(policy v1.ServiceExternalTrafficPolicy) func(*v1.Service) {
			return func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.ExternalTrafficPolicy = policy
			}
		}
		cluster := w.service(t, "np6-cluster", np(v1.ServiceExternalTrafficPolicyCluster), w.podC.Backend())
		local := w.service(t, "np6-local", np(v1.ServiceExternalTrafficPolicyLocal), w.podC.Backend())
		for _, fam := range w.families {
			for i, proto := range protos {
				addr := addrOn(w.n1, fam, cluster.Spec.Ports[i].NodePort)
				w.client.WaitForBackends(t, proto, addr, names(w.podC), converge)
				if r := w.client.MustRequest(t, proto, addr); r.Source.Addr() == w.client.IP(fam) {
					t.Errorf("%s %s Cluster-policy NodePort kept the client source", fam, proto)
				}
				addr = addrOn(w.n2, fam, local.Spec.Ports[i].NodePort)
				w.client.WaitForBackends(t, proto, addr, names(w.podC), converge)
				if r := w.client.MustRequest(t, proto, addr); r.Source.Addr() != w.client.IP(fam) {
					t.Errorf("%s %s Local-policy NodePort source %v, want %v", fam, proto, r.Source.Addr(), w.client.IP(fam))
				}
				unanswered(t, w.client.NS, proto, addrOn(w.n1, fam, local.Spec.Ports[i].NodePort), echo.ErrTimeout)
			}
		}
	})

	t.Run("masqueradeAll masquerades pod traffic", func(t *testing.T) {
		n4 := w.c.AddNode(t, fw.NodeOptions{})
		w.routeServiceAndExternal(t, n4.NS, w.c.Host().IP)
		pod := n4.AddPod(t, "pod-e")
		d := w.startIPTProxy(t, n4, func(cfg *kpv1alpha1.KubeProxyConfiguration) { cfg.IPTables.MasqueradeAll = true })
		d.WaitHealthy(t, 60*time.Second)
		svc := w.service(t, "masq-all", nil, w.podC.Backend())
		for _, fam := range w.families {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, proto := range protos {
				pod.WaitForBackends(t, proto, addr, names(w.podC), converge)
				if r := pod.MustRequest(t, proto, addr); r.Source.Addr() != n4.IP(fam) {
					t.Errorf("%s %s with masqueradeAll: source %v, want node-4's %v", fam, proto, r.Source.Addr(), n4.IP(fam))
				}
				// Without it (node-1), the pod's own source is kept.
				w.podB.WaitForBackends(t, proto, addr, names(w.podC), converge)
				if r := w.podB.MustRequest(t, proto, addr); r.Source.Addr() != w.podB.IP(fam) {
					t.Errorf("%s %s without masqueradeAll: source %v, want pod-b's %v", fam, proto, r.Source.Addr(), w.podB.IP(fam))
				}
			}
		}
	})

	t.Run("Service changes converge: ingress removed, type changed, Service deleted", func(t *testing.T) {
		svc := w.service(t, "changing", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }, w.podC.Backend())
		svc = w.setIngress(t, svc, w.ingressFor(30, nil)...)
		fam := v1.IPv4Protocol
		lbAddr := netip.AddrPortFrom(w.c.ExternalIP(fam, 30), 80)
		npAddr := addrOn(w.n1, fam, svc.Spec.Ports[0].NodePort)
		cipAddr := fw.ServiceAddr(svc, fam, 80)
		w.client.WaitForBackends(t, v1.ProtocolTCP, lbAddr, names(w.podC), converge)
		w.client.WaitForBackends(t, v1.ProtocolTCP, npAddr, names(w.podC), converge)

		w.setIngress(t, svc)
		eventuallyUnanswered(t, w.client.NS, v1.ProtocolTCP, lbAddr)
		w.client.WaitForBackends(t, v1.ProtocolTCP, npAddr, names(w.podC), converge)

		api := w.c.Client().CoreV1().Services(svc.Namespace)
		cur, err := api.Get(t.Context(), svc.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.Type = v1.ServiceTypeClusterIP
		cur.Spec.ExternalTrafficPolicy = ""
		cur.Spec.AllocateLoadBalancerNodePorts = nil
		for i := range cur.Spec.Ports {
			cur.Spec.Ports[i].NodePort = 0
		}
		if _, err := api.Update(t.Context(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("turning %s into a ClusterIP Service: %v", svc.Name, err)
		}
		eventuallyUnanswered(t, w.client.NS, v1.ProtocolTCP, npAddr)
		w.podB.WaitForBackends(t, v1.ProtocolTCP, cipAddr, names(w.podC), converge)

		if err := api.Delete(t.Context(), svc.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventuallyUnanswered(t, w.podB.NS, v1.ProtocolTCP, cipAddr)
		fw.Eventually(t, converge, func(context.Context) error {
			if hasServiceChain(t, w.n1, fam, svc, "tcp", v1.ProtocolTCP) {
				return errors.New("the deleted Service's KUBE-SVC chain is still there")
			}
			return nil
		})
	})

	t.Run("health-check answers match upstream kube-proxy", func(t *testing.T) {
		n5 := w.c.AddNode(t, fw.NodeOptions{})
		kp := n5.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireKubeProxy(t), Configure: fastSync})
		kp.WaitHealthy(t, 60*time.Second)
		pod := n5.AddPod(t, "pod-f")
		pod.StartEcho(t, fw.EchoOn(echoPort))
		svc := w.service(t, "hc-compare", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, w.podC.Backend())
		hc := uint16(svc.Spec.HealthCheckNodePort)
		fam := v1.IPv4Protocol
		compare := func(ours, theirs healthReply) {
			t.Helper()
			if ours.body != theirs.body {
				t.Errorf("body: iptproxy %q, kube-proxy %q", ours.body, theirs.body)
			}
			for _, h := range []string{"Content-Type", "X-Content-Type-Options", "X-Load-Balancing-Endpoint-Weight"} {
				if ours.header.Get(h) != theirs.header.Get(h) {
					t.Errorf("header %s: iptproxy %q, kube-proxy %q", h, ours.header.Get(h), theirs.header.Get(h))
				}
			}
		}
		// No local endpoint on node-1 (iptproxy) nor node-5 (kube-proxy).
		compare(checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n1.IP(fam), hc), svc, http.StatusServiceUnavailable, 0),
			checkHealth(t, w.client.NS, netip.AddrPortFrom(n5.IP(fam), hc), svc, http.StatusServiceUnavailable, 0))
		// One local endpoint on node-2 (iptproxy) and node-5 (kube-proxy).
		w.c.SetEndpoints(t, svc, w.podC.Backend(), pod.Backend())
		compare(checkHealth(t, w.client.NS, netip.AddrPortFrom(w.n2.IP(fam), hc), svc, http.StatusOK, 1),
			checkHealth(t, w.client.NS, netip.AddrPortFrom(n5.IP(fam), hc), svc, http.StatusOK, 1))
	})
}
