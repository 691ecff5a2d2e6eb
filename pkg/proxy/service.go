package proxy

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	netutils "k8s.io/utils/net"
)

// Labels that exclude objects from iptproxy, as from kube-proxy. The informers
// filter on them; ServicePortsFor checks them again for objects that arrive
// by other paths (render from YAML files).
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = v1.IsHeadlessService
)

// defaultStickyMaxAgeSeconds is the API's default ClientIP affinity timeout.
const defaultStickyMaxAgeSeconds = 10800

// ParseIP parses an IP as kube-proxy does (leading zeros in IPv4 allowed),
// returning an unmapped netip.Addr. ok is false for anything that is not an
// IP.
func ParseIP(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(strings.TrimSpace(s))
	if ip == nil {
		return netip.Addr{}, false
	}
	if v4 := ip.To4(); v4 != nil && !strings.Contains(s, ":") {
		return netip.AddrFrom4([4]byte(v4)), true
	}
	a, ok := netip.AddrFromSlice(ip)
	return a, ok
}

// ParseServingIP parses an address a Service or an endpoint is served on.
// Beyond ParseIP it refuses IPv4-mapped IPv6 addresses ("::ffff:10.0.0.1"):
// the API rejects them in new objects, and such an address would land in
// the IPv6 rules while every packet to it travels as IPv4. reason says why
// s was refused.
func ParseServingIP(s string) (ip netip.Addr, reason string) {
	ip, ok := ParseIP(s)
	if !ok {
		return netip.Addr{}, "not an IP address"
	}
	if ip.Is4In6() {
		return netip.Addr{}, "IPv4-mapped IPv6 address"
	}
	return ip, ""
}

// FamilyOf returns the IP family of a.
func FamilyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// ShouldSkipService reports whether iptproxy ignores the Service entirely,
// and why: headless and ExternalName Services, and Services that belong to
// another proxy.
func ShouldSkipService(svc *v1.Service) (bool, string) {
	switch {
	case svc.Spec.ClusterIP == v1.ClusterIPNone || svc.Spec.ClusterIP == "":
		return true, "headless"
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return true, "ExternalName"
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return true, "service-proxy-name label"
	}
	return false, ""
}

// normalizeProtocol maps a protocol string to the API constant, accepting
// any case; ok is false for protocols iptables mode does not serve.
func normalizeProtocol(p v1.Protocol) (v1.Protocol, bool) {
	switch strings.ToUpper(string(p)) {
	case "TCP", "":
		return v1.ProtocolTCP, true
	case "UDP":
		return v1.ProtocolUDP, true
	case "SCTP":
		return v1.ProtocolSCTP, true
	}
	return p, false
}

func validPort(p int32) bool { return p > 0 && p <= 65535 }

// ServicePortsFor converts a Service into the ServicePorts of one IP family.
// Parts that cannot be served (a bad IP, an out-of-range port, an unknown
// protocol) are left out and described in the returned errors; the rest of
// the Service is still served. A nil map means the Service has nothing for
// this family.
func ServicePortsFor(svc *v1.Service, family v1.IPFamily) (map[ServicePortName]*ServicePort, []error) {
	if skip, _ := ShouldSkipService(svc); skip {
		return nil, nil
	}
	r := &serviceReader{svc: svc, family: family, obj: "Service " + svc.Namespace + "/" + svc.Name}
	clusterIP := r.clusterIP()
	if !clusterIP.IsValid() {
		return nil, r.errs
	}
	base := r.servicePortBase(clusterIP)
	return r.ports(&base), r.errs
}

// serviceReader reads one Service for one IP family, collecting what is
// wrong with it.
type serviceReader struct {
	svc    *v1.Service
	family v1.IPFamily
	obj    string
	errs   []error
}

func (r *serviceReader) bad(field, value, reason string) {
	r.errs = append(r.errs, &InvalidError{Object: r.obj, Field: field, Value: value, Reason: reason})
}

// addrs parses the serving addresses of field, keeping those of the
// family.
func (r *serviceReader) addrs(field string, values []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range values {
		ip, reason := ParseServingIP(s)
		if reason != "" {
			r.bad(field, s, reason)
			continue
		}
		if FamilyOf(ip) == r.family {
			out = append(out, ip)
		}
	}
	return out
}

// clusterIP returns the Service's first cluster IP of the family (invalid
// when it has none).
func (r *serviceReader) clusterIP() netip.Addr {
	clusterIPs := r.svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{r.svc.Spec.ClusterIP}
	}
	if ips := r.addrs("spec.clusterIPs", clusterIPs); len(ips) > 0 {
		return ips[0]
	}
	return netip.Addr{}
}

// servicePortBase returns what every port of the Service shares: its
// addresses, traffic policies, session affinity and load-balancer fields.
func (r *serviceReader) servicePortBase(clusterIP netip.Addr) ServicePort {
	spec := &r.svc.Spec
	externallyAccessible := spec.Type == v1.ServiceTypeNodePort || spec.Type == v1.ServiceTypeLoadBalancer ||
		(spec.Type == v1.ServiceTypeClusterIP && len(spec.ExternalIPs) > 0)
	base := ServicePort{
		ClusterIP:           clusterIP,
		ExternalPolicyLocal: externallyAccessible && spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
		InternalPolicyLocal: spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
	}
	if spec.SessionAffinity == v1.ServiceAffinityClientIP {
		base.SessionAffinityClientIP = true
		base.StickyMaxAgeSeconds = defaultStickyMaxAgeSeconds
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > 0 && t <= 86400 {
				base.StickyMaxAgeSeconds = int(t)
			} else {
				r.bad("spec.sessionAffinityConfig.clientIP.timeoutSeconds", portString(int(t)), "out of range 1-86400; using the default")
			}
		}
	}
	base.ExternalIPs = r.addrs("spec.externalIPs", spec.ExternalIPs)
	if spec.Type == v1.ServiceTypeLoadBalancer {
		r.loadBalancer(&base)
	}
	return base
}

// loadBalancer fills the load-balancer fields: the VIPs (not those of
// hostname-only or Proxy-mode ingress), the source ranges and the
// health-check node port.
func (r *serviceReader) loadBalancer(base *ServicePort) {
	var vips []string
	for _, ing := range r.svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue // hostname-only ingress: nothing to capture
		}
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
			continue // Proxy mode: the load balancer delivers to the node
		}
		vips = append(vips, ing.IP)
	}
	base.LoadBalancerVIPs = r.addrs("status.loadBalancer.ingress.ip", vips)
	ranges, rangeErrs := sourceRanges(r.svc, r.family)
	for _, e := range rangeErrs {
		r.bad("spec.loadBalancerSourceRanges", e, "not a CIDR")
	}
	base.LoadBalancerSourceRanges = ranges
	base.FirewallEnabled = ranges != nil
	if base.ExternalPolicyLocal {
		if p := r.svc.Spec.HealthCheckNodePort; validPort(p) {
			base.HealthCheckNodePort = int(p)
		} else if p != 0 {
			r.bad("spec.healthCheckNodePort", portString(int(p)), "out of range")
		}
	}
}

// ports returns the Service's valid ports, each a copy of base.
func (r *serviceReader) ports(base *ServicePort) map[ServicePortName]*ServicePort {
	svc := r.svc
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports := make(map[ServicePortName]*ServicePort, len(svc.Spec.Ports))
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		proto, ok := normalizeProtocol(p.Protocol)
		if !ok {
			r.bad("spec.ports.protocol", string(p.Protocol), "unsupported protocol")
			continue
		}
		if !validPort(p.Port) {
			r.bad("spec.ports.port", portString(int(p.Port)), "out of range 1-65535")
			continue
		}
		name := ServicePortName{NamespacedName: nn, Port: p.Name, Protocol: proto}
		if _, dup := ports[name]; dup {
			r.bad("spec.ports.name", p.Name, "duplicate port name and protocol")
			continue
		}
		sp := *base
		sp.Name = name
		sp.Port = int(p.Port)
		sp.Protocol = proto
		if p.NodePort != 0 && svc.Spec.Type != v1.ServiceTypeClusterIP {
			if validPort(p.NodePort) {
				sp.NodePort = int(p.NodePort)
			} else {
				r.bad("spec.ports.nodePort", portString(int(p.NodePort)), "out of range 1-65535")
			}
		}
		ports[name] = &sp
	}
	return ports
}

// sourceRanges returns the loadBalancerSourceRanges of one family. As in
// kube-proxy, a range covering everything means no filtering. Unlike
// kube-proxy, when every range given is unparsable the Service gets an empty
// (deny-all) allow-list rather than none, so bad input never opens access.
func sourceRanges(svc *v1.Service, family v1.IPFamily) ([]netip.Prefix, []string) {
	var out []netip.Prefix
	var bad []string
	given := 0
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		given++
		_, ipnet, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			bad = append(bad, s)
			continue
		}
		ones, _ := ipnet.Mask.Size()
		ip, _ := ParseIP(ipnet.IP.String())
		pfx := netip.PrefixFrom(ip, ones).Masked()
		if FamilyOf(pfx.Addr()) != family {
			continue
		}
		if pfx.Bits() == 0 {
			return nil, bad
		}
		out = append(out, pfx)
	}
	if given > 0 && len(bad) == given {
		// Everything was invalid: keep the firewall, allow nobody.
		return []netip.Prefix{}, bad
	}
	return out, bad
}
