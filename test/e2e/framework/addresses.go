package framework

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// The address plan (see the package documentation). All of it lies in
// 198.18.0.0/15 (RFC 2544, benchmarking) and in ULA space, and exists only
// inside the run's namespaces.
const (
	// NodeNetworkIPv4 and NodeNetworkIPv6 hold the control plane, the
	// nodes and the outside clients.
	NodeNetworkIPv4 = "198.18.0.0/24"
	NodeNetworkIPv6 = "fd00:198:18::/64"
	// ClusterCIDRIPv4 and ClusterCIDRIPv6 hold every pod CIDR; they are
	// the clusterCIDR of the generated KubeProxyConfiguration.
	ClusterCIDRIPv4 = "198.18.128.0/17"
	ClusterCIDRIPv6 = "fd00:198:18:100::/56"
	// ServiceCIDRIPv4 and ServiceCIDRIPv6 are kube-apiserver's
	// --service-cluster-ip-range.
	ServiceCIDRIPv4 = "198.19.0.0/16"
	ServiceCIDRIPv6 = "fd00:198:19::/112"
	// ExternalCIDRIPv4 and ExternalCIDRIPv6 are free for external IPs and
	// load-balancer ingress IPs (see Cluster.ExternalIP); nothing routes
	// them until a test does (NS.AddRoute).
	ExternalCIDRIPv4 = "198.18.64.0/24"
	ExternalCIDRIPv6 = "fd00:198:18:64::/64"
	// APIServerPort is kube-apiserver's secure port.
	APIServerPort = 6443
	// MaxNodes, MaxPodsPerNode and MaxClients bound the address plan.
	MaxNodes       = 71
	MaxPodsPerNode = 253
	MaxClients     = 99
)

// mirror returns 198.18.x.y and its IPv6 mirror fd00:198:18:x::y (x and y
// in decimal digits).
func mirror(x, y int) (netip.Addr, netip.Addr) {
	v4 := netip.AddrFrom4([4]byte{198, 18, byte(x), byte(y)})
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:198:18:%d::%d", x, y))
	return v4, v6
}

// hostIPs are the control plane's addresses on br0.
func hostIPs() (netip.Addr, netip.Addr) { return mirror(0, 1) }

// nodeIPs are node i's (1-based) addresses on the node network.
func nodeIPs(i int) (netip.Addr, netip.Addr) { return mirror(0, 10+i) }

// clientIPs are client j's (1-based) addresses on the node network.
func clientIPs(j int) (netip.Addr, netip.Addr) { return mirror(0, 100+j) }

// podCIDRs are node i's pod CIDRs.
func podCIDRs(i int) (netip.Prefix, netip.Prefix) {
	v4, v6 := mirror(128+i, 0)
	return netip.PrefixFrom(v4, 24), netip.PrefixFrom(v6, 64)
}

// podGateways are node i's addresses on its pod bridge.
func podGateways(i int) (netip.Addr, netip.Addr) { return mirror(128+i, 1) }

// podIPs are the addresses of pod k (1-based) on node i.
func podIPs(i, k int) (netip.Addr, netip.Addr) { return mirror(128+i, 1+k) }

// externalIPs are the i-th (1..254) external addresses.
func externalIPs(i int) (netip.Addr, netip.Addr) { return mirror(64, i) }

// familyOf returns the IP family of an address.
func familyOf(a netip.Addr) v1.IPFamily {
	if a.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// byFamily orders per-family values (v4, v6) as the families list says,
// leaving out families that are not listed.
func byFamily[E any](families []v1.IPFamily, v4, v6 E) []E {
	out := make([]E, 0, len(families))
	for _, f := range families {
		if f == v1.IPv4Protocol {
			out = append(out, v4)
		} else {
			out = append(out, v6)
		}
	}
	return out
}
