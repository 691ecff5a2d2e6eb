package framework

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the
// EndpointSlices the harness writes (there is no endpointslice controller:
// no controller-manager runs).
const ManagedBy = "e2e.iptproxy.io"

// NewService returns a ClusterIP Service (not created yet) with the ports;
// adjust it (type, IP family policy, traffic policies, ...) and pass it to
// CreateService.
func NewService(namespace, name string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeClusterIP,
			Ports: ports,
		},
	}
}

// ServicePort returns a Service port with a numeric target port.
func ServicePort(name string, protocol v1.Protocol, port, targetPort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: protocol, Port: port, TargetPort: intstr.FromInt32(targetPort)}
}

// CreateService creates the Service (and its namespace, if needed) and
// returns it as stored, with its cluster IPs and node ports filled in.
func (c *Cluster) CreateService(t T, svc *v1.Service) *v1.Service {
	t.Helper()
	ctx := t.Context()
	if err := c.ensureNamespace(ctx, svc.Namespace); err != nil {
		t.Fatalf("%v", err)
	}
	created, err := c.Client().CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return created
}

// Backend is one endpoint of a Service, as SetEndpoints writes it.
type Backend struct {
	// Name names the pod the endpoint is (its targetRef); may be empty.
	Name string
	// Addresses are the endpoint's addresses; each goes into the slice of
	// its family.
	Addresses []netip.Addr
	// NodeName and Zone place the endpoint (empty: unset).
	NodeName, Zone string
	// NotReady, Terminating and NotServing set the conditions. By default
	// an endpoint is ready and serving. Terminating makes it not ready;
	// a terminating endpoint is serving unless NotServing, and a
	// not-ready one that is not terminating is not serving either.
	NotReady, Terminating, NotServing bool
	// HintZones and HintNodes are topology hints (forZones, forNodes).
	HintZones, HintNodes []string
	// NamedPorts resolves the Service's named target ports for this
	// endpoint.
	NamedPorts map[string]int32
}

// Backend returns the pod as a ready endpoint on its node.
func (p *Pod) Backend() Backend {
	return Backend{Name: p.name, Addresses: []netip.Addr{p.v4, p.v6}, NodeName: p.node.name, Zone: p.node.zone}
}

// Backend returns the node as a ready host-network endpoint (its node IPs).
func (n *Node) Backend() Backend {
	return Backend{Addresses: []netip.Addr{n.v4, n.v6}, NodeName: n.name, Zone: n.zone}
}

// conditions returns the endpoint conditions Backend's flags describe.
func (b Backend) conditions() discoveryv1.EndpointConditions {
	ready := !b.NotReady && !b.Terminating
	serving := !b.NotServing && (b.Terminating || ready)
	return discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(b.Terminating)}
}

// EndpointSliceName is the name SetEndpoints gives the slice of a family:
// "<service>-ipv4" or "<service>-ipv6".
func EndpointSliceName(service string, family v1.IPFamily) string {
	return service + "-" + strings.ToLower(string(family))
}

// NewEndpointSlice returns the EndpointSlice of one family of svc with the
// backends' addresses of that family (backends without one are left out),
// with ports taken from the Service's target ports.
func NewEndpointSlice(svc *v1.Service, family v1.IPFamily, backends ...Backend) (*discoveryv1.EndpointSlice, error) {
	addrType := discoveryv1.AddressTypeIPv4
	if family == v1.IPv6Protocol {
		addrType = discoveryv1.AddressTypeIPv6
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace,
			Name:      EndpointSliceName(svc.Name, family),
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: addrType,
		Endpoints:   []discoveryv1.Endpoint{},
	}
	if svc.UID != "" {
		es.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
	}
	for _, port := range svc.Spec.Ports {
		sp := discoveryv1.EndpointPort{Name: ptr.To(port.Name), Protocol: ptr.To(port.Protocol), AppProtocol: port.AppProtocol}
		switch {
		case port.TargetPort.Type == intstr.String:
			// Resolved per backend below; a slice has one number per
			// port, so every backend must agree.
			var num int32
			for _, b := range backends {
				n, ok := b.NamedPorts[port.TargetPort.StrVal]
				if !ok {
					return nil, fmt.Errorf("backend %q has no port named %q", b.Name, port.TargetPort.StrVal)
				}
				if num != 0 && n != num {
					return nil, fmt.Errorf("backends disagree on port %q (%d, %d); use one Service per port number", port.TargetPort.StrVal, num, n)
				}
				num = n
			}
			if num != 0 {
				sp.Port = ptr.To(num)
			}
		case port.TargetPort.IntVal != 0:
			sp.Port = ptr.To(port.TargetPort.IntVal)
		default:
			sp.Port = ptr.To(port.Port)
		}
		es.Ports = append(es.Ports, sp)
	}
	for _, b := range backends {
		var addrs []string
		for _, a := range b.Addresses {
			if familyOf(a) == family {
				addrs = append(addrs, a.Unmap().String())
			}
		}
		if len(addrs) == 0 {
			continue
		}
		ep := discoveryv1.Endpoint{Addresses: addrs, Conditions: b.conditions()}
		if b.Name != "" {
			ep.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: svc.Namespace, Name: b.Name}
		}
		if b.NodeName != "" {
			ep.NodeName = ptr.To(b.NodeName)
		}
		if b.Zone != "" {
			ep.Zone = ptr.To(b.Zone)
		}
		if len(b.HintZones)+len(b.HintNodes) > 0 {
			ep.Hints = &discoveryv1.EndpointHints{}
			for _, z := range b.HintZones {
				ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range b.HintNodes {
				ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es, nil
}

// SetEndpoints creates or replaces the Service's EndpointSlices, one per IP
// family of the Service, so that they list exactly the backends (use no
// backends for a Service without endpoints). It returns the slices as
// stored.
func (c *Cluster) SetEndpoints(t T, svc *v1.Service, backends ...Backend) []*discoveryv1.EndpointSlice {
	t.Helper()
	out, err := c.setEndpoints(t.Context(), svc, backends)
	if err != nil {
		t.Fatalf("setting endpoints of %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return out
}

func (c *Cluster) setEndpoints(ctx context.Context, svc *v1.Service, backends []Backend) ([]*discoveryv1.EndpointSlice, error) {
	families := svc.Spec.IPFamilies
	if len(families) == 0 {
		families = c.families
	}
	api := c.Client().DiscoveryV1().EndpointSlices(svc.Namespace)
	var out []*discoveryv1.EndpointSlice
	for _, f := range families {
		want, err := NewEndpointSlice(svc, f, backends...)
		if err != nil {
			return nil, err
		}
		got, err := api.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			got, err = api.Create(ctx, want, metav1.CreateOptions{})
		case err == nil:
			want.ResourceVersion = got.ResourceVersion
			got, err = api.Update(ctx, want, metav1.UpdateOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("writing EndpointSlice %s: %w", want.Name, err)
		}
		out = append(out, got)
	}
	return out, nil
}

// ServiceAddr returns the Service's cluster IP of the family with the port,
// or an invalid AddrPort when the Service has no cluster IP of that family.
func ServiceAddr(svc *v1.Service, family v1.IPFamily, port int32) netip.AddrPort {
	for _, s := range svc.Spec.ClusterIPs {
		a, err := netip.ParseAddr(s)
		if err == nil && familyOf(a) == family {
			return netip.AddrPortFrom(a, uint16(port))
		}
	}
	return netip.AddrPort{}
}
