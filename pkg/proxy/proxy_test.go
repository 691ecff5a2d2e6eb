package proxy

import (
	"errors"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
)

func ep(ip string, mutate ...func(*Endpoint)) *Endpoint {
	e := &Endpoint{IP: netip.MustParseAddr(ip), Port: 80, Ready: true, Serving: true}
	for _, m := range mutate {
		m(e)
	}
	return e
}

func local(e *Endpoint)       { e.IsLocal = true }
func notReady(e *Endpoint)    { e.Ready = false }
func terminating(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }
func notServing(e *Endpoint)  { e.Ready, e.Serving, e.Terminating = false, false, true }
func zone(z string) func(*Endpoint) {
	return func(e *Endpoint) { e.Hints = &TopologyHints{ForZones: []string{z}} }
}

func ips(eps []*Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.IP.String())
	}
	return out
}

func TestCategorize(t *testing.T) {
	cluster := &ServicePort{}
	itpLocal := &ServicePort{InternalPolicyLocal: true}
	etpLocal := &ServicePort{ExternalPolicyLocal: true, NodePort: 30000}
	tests := []struct {
		name           string
		sp             *ServicePort
		eps            []*Endpoint
		zone           string
		cluster, local []string
		hasAny         bool
	}{
		{"ready only", cluster, []*Endpoint{ep("10.0.0.1"), ep("10.0.0.2", notReady)}, "", []string{"10.0.0.1"}, nil, true},
		{"terminating fallback", cluster, []*Endpoint{ep("10.0.0.1", terminating), ep("10.0.0.2", notServing)}, "", []string{"10.0.0.1"}, nil, true},
		{"not serving never", cluster, []*Endpoint{ep("10.0.0.2", notServing)}, "", []string{}, nil, false},
		{"zone hints used", cluster, []*Endpoint{ep("10.0.0.1", zone("a")), ep("10.0.0.2", zone("b"))}, "a", []string{"10.0.0.1"}, nil, true},
		{"zone hints all-or-nothing", cluster, []*Endpoint{ep("10.0.0.1", zone("a")), ep("10.0.0.2")}, "a", []string{"10.0.0.1", "10.0.0.2"}, nil, true},
		{"zone hints for other zones ignored", cluster, []*Endpoint{ep("10.0.0.1", zone("b")), ep("10.0.0.2", zone("b"))}, "a", []string{"10.0.0.1", "10.0.0.2"}, nil, true},
		{"internal local", itpLocal, []*Endpoint{ep("10.0.0.1", local), ep("10.0.0.2")}, "", nil, []string{"10.0.0.1"}, true},
		{"internal local none local", itpLocal, []*Endpoint{ep("10.0.0.2")}, "", nil, []string{}, true},
		{"external local", etpLocal, []*Endpoint{ep("10.0.0.1", local), ep("10.0.0.2")}, "", []string{"10.0.0.1", "10.0.0.2"}, []string{"10.0.0.1"}, true},
		{"external local terminating", etpLocal, []*Endpoint{ep("10.0.0.1", local, terminating), ep("10.0.0.2")}, "", []string{"10.0.0.2"}, []string{"10.0.0.1"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Categorize(tc.eps, tc.sp, "node-a", tc.zone)
			if tc.cluster != nil && !equal(ips(c.Cluster), tc.cluster) {
				t.Errorf("cluster = %v, want %v", ips(c.Cluster), tc.cluster)
			}
			if tc.local != nil && !equal(ips(c.Local), tc.local) {
				t.Errorf("local = %v, want %v", ips(c.Local), tc.local)
			}
			if c.HasAny != tc.hasAny {
				t.Errorf("hasAny = %v, want %v", c.HasAny, tc.hasAny)
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestServicePortsForBadInput(t *testing.T) {
	base := func() *v1.Service {
		return &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"},
			Spec: v1.ServiceSpec{
				Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1", "fd00::1"},
				Ports: []v1.ServicePort{{Name: "a", Port: 80, Protocol: "tcp", NodePort: 30000}},
			},
		}
	}
	tests := []struct {
		name      string
		mutate    func(*v1.Service)
		family    v1.IPFamily
		wantPorts int
		wantErrs  int
		check     func(t *testing.T, ports map[ServicePortName]*ServicePort)
	}{
		{"odd-case protocol accepted", func(*v1.Service) {}, v1.IPv4Protocol, 1, 0, nil},
		{"port 0 and 65536 skipped", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "z", Port: 0}, v1.ServicePort{Name: "big", Port: 65536})
		}, v1.IPv4Protocol, 1, 2, nil},
		{"unknown protocol skipped", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "x", Port: 81, Protocol: "ICMP"})
		}, v1.IPv4Protocol, 1, 1, nil},
		{"invalid external IP skipped", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"1.2.3", "203.0.113.1"} },
			v1.IPv4Protocol, 1, 1, func(t *testing.T, ports map[ServicePortName]*ServicePort) {
				for _, p := range ports {
					if len(p.ExternalIPs) != 1 {
						t.Errorf("external IPs = %v", p.ExternalIPs)
					}
				}
			}},
		{"hostname-only LB ingress ignored", func(s *v1.Service) {
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example"}}
		}, v1.IPv4Protocol, 1, 0, func(t *testing.T, ports map[ServicePortName]*ServicePort) {
			for _, p := range ports {
				if len(p.LoadBalancerVIPs) != 0 {
					t.Errorf("LB VIPs = %v", p.LoadBalancerVIPs)
				}
			}
		}},
		{"invalid source ranges deny all", func(s *v1.Service) {
			s.Spec.LoadBalancerSourceRanges = []string{"nonsense"}
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.9"}}
		}, v1.IPv4Protocol, 1, 1, func(t *testing.T, ports map[ServicePortName]*ServicePort) {
			for _, p := range ports {
				if !p.FirewallEnabled || len(p.LoadBalancerSourceRanges) != 0 {
					t.Errorf("firewall = %v ranges %v; want enabled and empty", p.FirewallEnabled, p.LoadBalancerSourceRanges)
				}
			}
		}},
		{"IPv6 family", func(*v1.Service) {}, v1.IPv6Protocol, 1, 0, func(t *testing.T, ports map[ServicePortName]*ServicePort) {
			for _, p := range ports {
				if p.ClusterIP != netip.MustParseAddr("fd00::1") {
					t.Errorf("cluster IP = %v", p.ClusterIP)
				}
			}
		}},
		{"headless skipped", func(s *v1.Service) { s.Spec.ClusterIP = "None"; s.Spec.ClusterIPs = []string{"None"} }, v1.IPv4Protocol, 0, 0, nil},
		{"ExternalName skipped", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName }, v1.IPv4Protocol, 0, 0, nil},
		{"proxy-name label skipped", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }, v1.IPv4Protocol, 0, 0, nil},
		{"garbage cluster IP", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"300.1.1.1"} }, v1.IPv4Protocol, 0, 1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.mutate(s)
			ports, errs := ServicePortsFor(s, tc.family)
			if len(ports) != tc.wantPorts || len(errs) != tc.wantErrs {
				t.Fatalf("got %d ports, errors %v; want %d ports, %d errors", len(ports), errs, tc.wantPorts, tc.wantErrs)
			}
			for _, err := range errs {
				var ie *InvalidError
				if !errors.As(err, &ie) {
					t.Errorf("error %v is not an *InvalidError", err)
				}
			}
			if tc.check != nil {
				tc.check(t, ports)
			}
		})
	}
}

func TestTrackerMergesSlices(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	tr := NewTracker(logger, v1.IPv4Protocol, "node-a")
	mk := func(name string, eps ...discovery.Endpoint) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discovery.LabelServiceName: "s"}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("a"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
			Endpoints:   eps,
		}
	}
	ready := discovery.EndpointConditions{Ready: ptr.To(true)}
	term := discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	tr.OnEndpointSliceUpdate(mk("s-1",
		discovery.Endpoint{Addresses: []string{"10.0.0.2"}, Conditions: term},
		discovery.Endpoint{Addresses: []string{"not-an-ip"}, Conditions: ready},
		discovery.Endpoint{Addresses: []string{"fd00::1"}, Conditions: ready},
	), false)
	tr.OnEndpointSliceUpdate(mk("s-2",
		discovery.Endpoint{Addresses: []string{"10.0.0.2"}, Conditions: ready, NodeName: ptr.To("node-a")},
		discovery.Endpoint{Addresses: []string{"10.0.0.10"}, Conditions: ready},
	), false)
	noLabel := mk("orphan")
	noLabel.Labels = nil
	if tr.OnEndpointSliceUpdate(noLabel, false) {
		t.Error("slice without service-name label was accepted")
	}
	fqdn := mk("fqdn")
	fqdn.AddressType = discovery.AddressTypeFQDN
	if tr.OnEndpointSliceUpdate(fqdn, false) {
		t.Error("FQDN slice was accepted")
	}
	state, change := tr.Checkout()
	spn := ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "s"}, Port: "a", Protocol: v1.ProtocolTCP}
	eps := state.Endpoints[spn]
	if got := ips(eps); !equal(got, []string{"10.0.0.10", "10.0.0.2"}) {
		t.Fatalf("endpoints = %v; want sorted by ip:port, duplicates merged, bad ones skipped", got)
	}
	if !eps[1].Ready || !eps[1].IsLocal {
		t.Errorf("duplicate endpoint: the ready copy should win, got %+v", eps[1])
	}
	if !change.Services[spn.NamespacedName] {
		t.Error("change does not name the Service")
	}
	if _, change := tr.Checkout(); len(change.Services) != 0 {
		t.Errorf("second checkout reports changes %v", change.Services)
	}
}
