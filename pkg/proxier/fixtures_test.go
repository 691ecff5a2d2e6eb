package proxier

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// service returns a Service with one port per protocol given.
func service(ns, name string, typ v1.ServiceType, clusterIP string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       typ,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

// slice returns an EndpointSlice for Service ns/svc with ready endpoints at
// ips (on node "node-a" unless the IP is listed in remote).
func slice(ns, svc, name string, port int32, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for i, ip := range ips {
		node := "node-a"
		if i%2 == 1 {
			node = "node-b"
		}
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(node),
		})
	}
	return s
}

// loadRichCluster hands richCluster's objects to p (not marked synced).
func loadRichCluster(p *Proxier) {
	svcs, slices := richCluster()
	for _, s := range svcs {
		p.OnServiceUpdate(nil, s)
	}
	for _, s := range slices {
		p.OnEndpointSliceUpdate(s, false)
	}
}

// richCluster returns Services and slices exercising every rule shape.
func richCluster() ([]*v1.Service, []*discovery.EndpointSlice) {
	local := v1.ServiceExternalTrafficPolicyLocal
	svcs := []*v1.Service{
		service("ns", "plain", v1.ServiceTypeClusterIP, "172.30.0.10"),
		service("ns", "udp", v1.ServiceTypeClusterIP, "172.30.0.11", func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{{Name: "p", Port: 53, Protocol: v1.ProtocolUDP}, {Name: "q", Port: 54, Protocol: v1.ProtocolSCTP}}
		}),
		service("ns", "empty", v1.ServiceTypeClusterIP, "172.30.0.12"),
		service("ns", "np", v1.ServiceTypeNodePort, "172.30.0.13", func(s *v1.Service) {
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalIPs = []string{"203.0.113.7"}
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		}),
		service("ns", "lb", v1.ServiceTypeLoadBalancer, "172.30.0.14", func(s *v1.Service) {
			s.Spec.Ports[0].NodePort = 30081
			s.Spec.ExternalTrafficPolicy = local
			s.Spec.HealthCheckNodePort = 30900
			s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "192.0.2.0/24"}
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.9"}}
		}),
		service("ns", "lb-nolocal", v1.ServiceTypeLoadBalancer, "172.30.0.15", func(s *v1.Service) {
			s.Spec.Ports[0].NodePort = 30082
			s.Spec.ExternalTrafficPolicy = local
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}}
		}),
		service("ns", "itp", v1.ServiceTypeClusterIP, "172.30.0.16", func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
	}
	slices := []*discovery.EndpointSlice{
		slice("ns", "plain", "plain-1", 8080, "10.1.0.1", "10.1.1.1", "10.1.0.2"),
		slice("ns", "np", "np-1", 8080, "10.1.0.3", "10.1.1.3"),
		slice("ns", "lb", "lb-1", 8080, "10.1.0.4", "10.1.1.4"),
		slice("ns", "lb-nolocal", "lb-nolocal-1", 8080, "", "10.1.1.5"),
		slice("ns", "itp", "itp-1", 8080, "10.1.0.6"),
	}
	udp := slice("ns", "udp", "udp-1", 5353, "10.1.0.7")
	udp.Ports = []discovery.EndpointPort{
		{Name: ptr.To("p"), Port: ptr.To[int32](5353), Protocol: ptr.To(v1.ProtocolUDP)},
		{Name: ptr.To("q"), Port: ptr.To[int32](5454), Protocol: ptr.To(v1.ProtocolSCTP)},
	}
	slices = append(slices, udp)
	// lb-nolocal has only a remote endpoint: drop the empty address.
	slices[3].Endpoints = slices[3].Endpoints[1:]
	return svcs, slices
}

func ipN(i int) string { return fmt.Sprintf("10.2.%d.%d", i/250, i%250+1) }

func s2nn(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}
