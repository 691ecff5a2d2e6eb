package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
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
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// hostileObject is one entry of the hostile corpus as the API sees it:
// objects to create (in order) and, when the apiserver accepts them all,
// what must then work.
type hostileObject struct {
	name     string
	services []*v1.Service
	slices   []*discoveryv1.EndpointSlice
	// status, if set, is written as the first Service's status after
	// creation (load-balancer ingress).
	status *v1.ServiceStatus
	// check runs when everything was accepted, with the created Services.
	check func(t *testing.T, svcs []*v1.Service)
}

// TestHostile creates the hostile corpus next to a normal Service on a real
// apiserver. Entries the apiserver refuses are logged (that validation is
// the first line of defence is a finding too); for the accepted ones real
// traffic to the normal Service and to the good parts must work, the
// daemon must stay up and healthy, and every skipped part must be logged
// once, not once per sync.
func TestHostile(t *testing.T) {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 1})
	n1 := c.Nodes()[0]
	pod := n1.AddPod(t, "pod-a")
	pod.StartEcho(t, fw.EchoOn(echoPort))
	client := c.AddClient(t, "outside")
	fam := v1.IPv4Protocol
	for _, cidr := range c.ServiceCIDRs() {
		n1.AddRoute(t, cidr, c.Host().IP(fam))
	}
	extIP := c.ExternalIP(fam, 7)
	client.AddRoute(t, netip.PrefixFrom(extIP, 32), n1.IP(fam))
	d := n1.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 2 * time.Second}
		cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
	}})
	d.WaitHealthy(t, 60*time.Second)

	normal := c.CreateService(t, fw.NewService("hostile", "normal", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort)))
	c.SetEndpoints(t, normal, pod.Backend())
	normalAddr := fw.ServiceAddr(normal, fam, 80)
	pod.WaitForBackends(t, v1.ProtocolTCP, normalAddr, names(pod), converge)

	podIP := pod.IP(fam).String()
	svc := func(name string, mutate func(*v1.Service)) *v1.Service {
		s := fw.NewService("hostile", name, fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	slice := func(service, name string, ports []discoveryv1.EndpointPort, addrs ...string) *discoveryv1.EndpointSlice {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "hostile", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: fw.ManagedBy}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       ports,
		}
		if ports == nil {
			s.Ports = []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To[int32](echoPort), Protocol: ptr.To(v1.ProtocolTCP)}}
		}
		for _, a := range addrs {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		return s
	}
	reaches := func(from *fw.NS, addr func([]*v1.Service) netip.AddrPort) func(*testing.T, []*v1.Service) {
		return func(t *testing.T, svcs []*v1.Service) {
			from.WaitForBackends(t, v1.ProtocolTCP, addr(svcs), names(pod), converge)
		}
	}
	clusterIP := func(port int32) func([]*v1.Service) netip.AddrPort {
		return func(svcs []*v1.Service) netip.AddrPort { return fw.ServiceAddr(svcs[0], fam, port) }
	}

	manyPorts := svc("many-ports", func(s *v1.Service) {
		s.Spec.Ports = nil
		for i := int32(1); i <= 1000; i++ {
			s.Spec.Ports = append(s.Spec.Ports, fw.ServicePort(fmt.Sprintf("p%d", i), v1.ProtocolTCP, i, echoPort))
		}
	})
	var manyPortSlices []*discoveryv1.EndpointSlice
	for k := range 10 { // the API allows 100 ports per slice
		var ports []discoveryv1.EndpointPort
		for i := k*100 + 1; i <= k*100+100; i++ {
			ports = append(ports, discoveryv1.EndpointPort{Name: ptr.To(fmt.Sprintf("p%d", i)), Port: ptr.To[int32](echoPort), Protocol: ptr.To(v1.ProtocolTCP)})
		}
		manyPortSlices = append(manyPortSlices, slice("many-ports", fmt.Sprintf("many-ports-%d", k), ports, podIP))
	}
	manyEndpoints := func(n int) []string {
		out := []string{podIP}
		for i := range n - 1 {
			out = append(out, fmt.Sprintf("198.18.%d.%d", 200+i/250, i%250+1))
		}
		return out
	}
	longNS, longName := strings.Repeat("n", 63), strings.Repeat("s", 63)

	corpus := []hostileObject{
		{name: "invalid external IP", services: []*v1.Service{svc("bad-extip", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"not-an-ip"} })}},
		{name: "IPv4-mapped IPv6 external IP", services: []*v1.Service{svc("mapped-extip", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"::ffff:" + extIP.String()} })}},
		{
			name:     "wrong-family external IP next to a good one",
			services: []*v1.Service{svc("wrong-family-extip", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"fd00:198:18:64::9", extIP.String()} })},
			slices:   []*discoveryv1.EndpointSlice{slice("wrong-family-extip", "wrong-family-extip-1", nil, podIP)},
			check:    reaches(client.NS, func([]*v1.Service) netip.AddrPort { return netip.AddrPortFrom(extIP, 80) }),
		},
		{name: "Service port 0", services: []*v1.Service{svc("port-0", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 })}},
		{name: "Service port 65536", services: []*v1.Service{svc("port-65536", func(s *v1.Service) { s.Spec.Ports[0].Port = 65536 })}},
		{name: "protocol in odd case", services: []*v1.Service{svc("odd-proto", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "tcp" })}},
		{name: "Unicode port name", services: []*v1.Service{svc("unicode", func(s *v1.Service) { s.Spec.Ports[0].Name = "pört" })}},
		{
			name:     "1000 ports on one Service",
			services: []*v1.Service{manyPorts},
			slices:   manyPortSlices,
			check: func(t *testing.T, svcs []*v1.Service) {
				for _, p := range []int32{1, 500, 1000} {
					pod.WaitForBackends(t, v1.ProtocolTCP, fw.ServiceAddr(svcs[0], fam, p), names(pod), converge)
				}
			},
		},
		{
			name:     "10,000 endpoints in one slice",
			services: []*v1.Service{svc("ten-thousand", nil)},
			slices:   []*discoveryv1.EndpointSlice{slice("ten-thousand", "ten-thousand-1", nil, manyEndpoints(10000)...)},
		},
		{
			name:     "1000 endpoints in one slice (the API's maximum)",
			services: []*v1.Service{svc("thousand", nil)},
			slices:   []*discoveryv1.EndpointSlice{slice("thousand", "thousand-1", nil, manyEndpoints(1000)...)},
			check: func(t *testing.T, svcs []*v1.Service) {
				fw.Eventually(t, converge, func(context.Context) error {
					if n := endpointJumps(t, n1, "thousand"); n != 1000 {
						return fmt.Errorf("%d endpoint chains for hostile/thousand, want 1000", n)
					}
					return nil
				})
			},
		},
		{
			name:     "duplicate endpoints across slices",
			services: []*v1.Service{svc("dup", nil)},
			slices:   []*discoveryv1.EndpointSlice{slice("dup", "dup-1", nil, podIP), slice("dup", "dup-2", nil, podIP)},
			check: func(t *testing.T, svcs []*v1.Service) {
				reaches(pod.NS, clusterIP(80))(t, svcs)
				if n := endpointJumps(t, n1, "dup"); n != 1 {
					t.Errorf("%d endpoint chains for hostile/dup, want 1 (the endpoint once)", n)
				}
			},
		},
		{name: "slice whose service-name label points nowhere", slices: []*discoveryv1.EndpointSlice{slice("ghost", "ghost-1", nil, podIP)}},
		{
			name:     "a Service for the bad endpoints below",
			services: []*v1.Service{svc("victim", nil)},
			slices:   []*discoveryv1.EndpointSlice{slice("victim", "victim-1", nil, podIP)},
			check:    reaches(pod.NS, clusterIP(80)),
		},
		{name: "invalid endpoint address", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-1", nil, "198.18.0.999")}},
		{name: "wrong-family endpoint address", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-2", nil, "fd00:198:18::99")}},
		{name: "IPv4-mapped IPv6 endpoint address", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-3", nil, "::ffff:"+podIP)}},
		{name: "loopback endpoint address", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-4", nil, "127.0.0.1")}},
		{name: "multicast endpoint address", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-5", nil, "224.0.0.1")}},
		{name: "endpoint port 0", slices: []*discoveryv1.EndpointSlice{slice("victim", "bad-ep-6", []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To[int32](0), Protocol: ptr.To(v1.ProtocolTCP)}}, podIP)}},
		{
			name: "names at maximum length",
			services: []*v1.Service{func() *v1.Service {
				s := svc(longName, func(s *v1.Service) { s.Spec.Ports[0].Name = strings.Repeat("x", 15) })
				s.Namespace = longNS
				return s
			}()},
			slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
				s := slice(longName, strings.Repeat("e", 253), []discoveryv1.EndpointPort{{Name: ptr.To(strings.Repeat("x", 15)), Port: ptr.To[int32](echoPort), Protocol: ptr.To(v1.ProtocolTCP)}}, podIP)
				s.Namespace = longNS
				return s
			}()},
			check: reaches(pod.NS, clusterIP(80)),
		},
		{
			name: "LoadBalancer ingress with a hostname only",
			services: []*v1.Service{svc("lb-hostname", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].TargetPort = intstr.FromInt32(echoPort)
			})},
			status: &v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{Hostname: "lb.example.com"}}}},
			slices: []*discoveryv1.EndpointSlice{slice("lb-hostname", "lb-hostname-1", nil, podIP)},
			check: func(t *testing.T, svcs []*v1.Service) {
				reaches(pod.NS, clusterIP(80))(t, svcs)
				reaches(client.NS, func(svcs []*v1.Service) netip.AddrPort {
					return netip.AddrPortFrom(n1.IP(fam), uint16(svcs[0].Spec.Ports[0].NodePort))
				})(t, svcs)
			},
		},
	}

	var refused []string
	for _, h := range corpus {
		t.Run(h.name, func(t *testing.T) {
			ctx := t.Context()
			var created []*v1.Service
			accepted := true
			for _, s := range h.services {
				if s.Namespace != "hostile" {
					c.CreateNamespace(t, s.Namespace)
				}
				got, err := c.Client().CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
				if err != nil {
					refused = append(refused, h.name+": "+firstLine(err))
					accepted = false
					continue
				}
				created = append(created, got)
			}
			if h.status != nil && len(created) > 0 {
				created[0].Status = *h.status
				got, err := c.Client().CoreV1().Services(created[0].Namespace).UpdateStatus(ctx, created[0], metav1.UpdateOptions{})
				if err != nil {
					refused = append(refused, h.name+" (status): "+firstLine(err))
					accepted = false
				} else {
					created[0] = got
				}
			}
			for _, s := range h.slices {
				if _, err := c.Client().DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
					refused = append(refused, h.name+": "+firstLine(err))
					accepted = false
				}
			}
			if !accepted {
				t.Logf("the apiserver refused (part of) this entry")
				return
			}
			t.Logf("the apiserver accepted this entry")
			if h.check != nil {
				h.check(t, created)
			}
			// The normal Service keeps working after every entry.
			pod.WaitForBackends(t, v1.ProtocolTCP, normalAddr, names(pod), converge)
		})
	}

	t.Run("daemon stays up, healthy, and logs each bad part once", func(t *testing.T) {
		// Let several sync periods (2 s) pass: a bad part logged per sync
		// would show up several times.
		time.Sleep(8 * time.Second)
		if !d.Running() {
			t.Fatalf("iptproxy exited:\n%s", d.Log())
		}
		d.WaitHealthy(t, 10*time.Second)
		pod.WaitForBackends(t, v1.ProtocolTCP, normalAddr, names(pod), converge)
		counts := map[string]int{}
		for _, line := range strings.Split(d.Log(), "\n") {
			if m := invalidPartRE.FindStringSubmatch(line); m != nil {
				counts[m[1]]++
			}
		}
		// The apiserver accepts an EndpointSlice port 0; iptproxy skips it.
		if len(counts) == 0 {
			t.Errorf("no invalid part logged; the slice with port 0 must be")
		}
		for msg, n := range counts {
			t.Logf("logged %d× %s", n, msg)
			if n != 1 {
				t.Errorf("%q logged %d times, want once", msg, n)
			}
		}
	})
	for _, r := range refused {
		t.Logf("refused by API validation: %s", r)
	}
}

// endpointJumps counts the endpoint chains node n's nat table sends
// Service hostile/<name> port "tcp" to.
func endpointJumps(t *testing.T, n *fw.Node, name string) int {
	t.Helper()
	chain := rules.ChainNamesFor(proxy.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "hostile", Name: name}, Port: "tcp", Protocol: v1.ProtocolTCP}).Cluster
	count := 0
	for _, line := range strings.Split(n.IPTablesSave(t, v1.IPv4Protocol, "nat"), "\n") {
		if strings.HasPrefix(line, "-A "+chain+" ") && strings.Contains(line, "-j "+rules.PrefixEndpoint) {
			count++
		}
	}
	return count
}

// invalidPartRE captures the error of an "Ignoring invalid part" log line.
var invalidPartRE = regexp.MustCompile(`Ignoring invalid part of \w+" err="((?:[^"\\]|\\.)*)"`)

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
