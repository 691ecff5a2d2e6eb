package proxiertest

import (
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// ServiceOption changes a Service built by Service.
type ServiceOption func(*v1.Service)

// Service returns a ClusterIP Service "namespace/name" with clusterIP (its
// family follows the address) and, unless an option replaces them, one
// port "p" 80/TCP.
func Service(nsName, clusterIP string, opts ...ServiceOption) *v1.Service {
	ns, name, _ := strings.Cut(nsName, "/")
	fam := v1.IPv4Protocol
	if strings.Contains(clusterIP, ":") {
		fam = v1.IPv6Protocol
	}
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			IPFamilies: []v1.IPFamily{fam},
			Ports:      []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Port is a Service port; nodePort 0 means none.
func Port(name string, port int32, proto v1.Protocol, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Port: port, Protocol: proto, NodePort: nodePort}
}

// Ports replaces the Service's ports.
func Ports(ports ...v1.ServicePort) ServiceOption {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

// NodePort makes the Service a NodePort Service with nodePort on its first
// port.
func NodePort(nodePort int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = nodePort
	}
}

// LoadBalancer makes the Service a LoadBalancer Service with nodePort on
// its first port and ingress IPs ips (ipMode unset).
func LoadBalancer(nodePort int32, ips ...string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = nodePort
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// IngressIPMode adds a load-balancer ingress IP with the given ipMode.
func IngressIPMode(ip string, mode v1.LoadBalancerIPMode) ServiceOption {
	return func(s *v1.Service) {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: ptr.To(mode)})
	}
}

// ExternalIPs sets the Service's external IPs.
func ExternalIPs(ips ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

// SourceRanges sets loadBalancerSourceRanges.
func SourceRanges(cidrs ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = cidrs }
}

// ExternalLocal sets externalTrafficPolicy: Local with a health-check node
// port.
func ExternalLocal(healthCheckNodePort int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

// InternalLocal sets internalTrafficPolicy: Local.
func InternalLocal() ServiceOption {
	return func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
}

// ClientIPAffinity sets sessionAffinity: ClientIP with timeoutSeconds.
func ClientIPAffinity(timeoutSeconds int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(timeoutSeconds)}}
	}
}

// Label sets a label.
func Label(key, value string) ServiceOption {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[key] = value
	}
}

// Headless makes the Service headless (clusterIP None).
func Headless() ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ClusterIP = v1.ClusterIPNone
		s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
	}
}

// ExternalName makes the Service an ExternalName Service (which keeps the
// cluster IP set here, so only the type makes it ignored).
func ExternalName(name string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeExternalName
		s.Spec.ExternalName = name
	}
}

// SlicePort is an EndpointSlice port.
func SlicePort(name string, port int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

// EndpointOption changes an endpoint built by Endpoint.
type EndpointOption func(*discovery.Endpoint)

// Endpoint returns a ready endpoint at ip on node ("" for none).
func Endpoint(ip, node string, opts ...EndpointOption) discovery.Endpoint {
	e := discovery.Endpoint{
		Addresses:  []string{ip},
		Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
	}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// Terminating marks the endpoint terminating and not ready; serving says
// whether it still serves.
func Terminating(serving bool) EndpointOption {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(serving), Terminating: ptr.To(true)}
	}
}

// NotReady marks the endpoint neither ready nor serving (not terminating).
func NotReady() EndpointOption {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
	}
}

// Zone sets the endpoint's zone.
func Zone(zone string) EndpointOption {
	return func(e *discovery.Endpoint) { e.Zone = ptr.To(zone) }
}

// Hints sets topology hints: zones, then nodes.
func Hints(zones []string, nodes []string) EndpointOption {
	return func(e *discovery.Endpoint) {
		h := &discovery.EndpointHints{}
		for _, z := range zones {
			h.ForZones = append(h.ForZones, discovery.ForZone{Name: z})
		}
		for _, n := range nodes {
			h.ForNodes = append(h.ForNodes, discovery.ForNode{Name: n})
		}
		e.Hints = h
	}
}

// Slice returns EndpointSlice "namespace/<sliceName>" for Service
// "namespace/name" with ports and endpoints; its address type follows the
// first endpoint's address.
func Slice(nsName, sliceName string, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	ns, svc, _ := strings.Cut(nsName, "/")
	at := discovery.AddressTypeIPv4
	if len(eps) > 0 && strings.Contains(eps[0].Addresses[0], ":") {
		at = discovery.AddressTypeIPv6
	}
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: sliceName, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// Modify applies f to obj and returns obj, for one-off changes in tables.
func Modify[T any](obj T, f func(T)) T {
	f(obj)
	return obj
}
