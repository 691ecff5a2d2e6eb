package options

import (
	"fmt"
	"net"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"
)

// NodePortAddresses is the parsed form of nodePortAddresses /
// --nodeport-addresses.
type NodePortAddresses struct {
	// CIDRs holds, per IP family and in the order given, the CIDRs listed
	// explicitly and the expansions of "localhost" (127.0.0.0/8, ::1/128) and
	// "all" (0.0.0.0/0, ::/0). CIDRs are canonical (host bits cleared).
	CIDRs map[v1.IPFamily][]netip.Prefix
	// Primary reports whether the "primary" keyword was given: NodePorts are
	// then also accepted on the node's primary address of each family,
	// which is known only once the Node object has been read.
	Primary bool
}

// ParseNodePortAddresses parses the list of CIDRs and keywords ("primary",
// "localhost", "all"). Surrounding blanks are not allowed, as in kube-proxy's
// validation.
func ParseNodePortAddresses(addrs []string) (NodePortAddresses, error) {
	n := NodePortAddresses{CIDRs: map[v1.IPFamily][]netip.Prefix{}}
	add := func(p netip.Prefix) {
		f := prefixFamily(p)
		n.CIDRs[f] = append(n.CIDRs[f], p)
	}
	for _, a := range addrs {
		switch a {
		case NodePortAddressesPrimary:
			n.Primary = true
		case NodePortAddressesLocalhost:
			add(netip.MustParsePrefix("127.0.0.0/8"))
			add(netip.MustParsePrefix("::1/128"))
		case NodePortAddressesAll:
			add(netip.MustParsePrefix("0.0.0.0/0"))
			add(netip.MustParsePrefix("::/0"))
		default:
			_, ipnet, err := netutils.ParseCIDRSloppy(a)
			if err != nil {
				return NodePortAddresses{}, fmt.Errorf("nodePortAddresses: %q is neither a CIDR nor one of 'primary', 'localhost', 'all': %w", a, err)
			}
			p, err := ipNetToPrefix(ipnet)
			if err != nil {
				return NodePortAddresses{}, fmt.Errorf("nodePortAddresses: %q: %w", a, err)
			}
			add(p)
		}
	}
	return n, nil
}

// ForFamily returns the CIDRs of family on which NodePorts are accepted, as
// kube-proxy computes them: the parsed CIDRs of that family plus, for
// "primary", the node's IP of that family (nodeIPs, as NodeIPs returns
// them; a loopback or missing node IP adds nothing). When that leaves
// nothing, the result is the whole family (0.0.0.0/0 or ::/0), so an unset
// list, or one naming only the other family, accepts NodePorts on every
// local address of this family.
func (n NodePortAddresses) ForFamily(family v1.IPFamily, nodeIPs map[v1.IPFamily]net.IP) []netip.Prefix {
	out := append([]netip.Prefix(nil), n.CIDRs[family]...)
	if n.Primary {
		if ip := nodeIPs[family]; ip != nil && !ip.IsLoopback() {
			if addr, ok := netip.AddrFromSlice(ip); ok {
				addr = addr.Unmap()
				if prefixFamily(netip.PrefixFrom(addr, 0)) == family {
					out = append(out, netip.PrefixFrom(addr, addr.BitLen()))
				}
			}
		}
	}
	if len(out) == 0 {
		if family == v1.IPv6Protocol {
			return []netip.Prefix{netip.MustParsePrefix("::/0")}
		}
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	}
	return out
}

// MatchAll reports whether prefixes (as ForFamily returns them) contain the
// whole address space, in which case kube-proxy ignores the other entries
// and accepts NodePorts on every local address.
func MatchAll(prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Bits() == 0 {
			return true
		}
	}
	return false
}

func prefixFamily(p netip.Prefix) v1.IPFamily {
	if p.Addr().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// ipNetToPrefix converts a parsed CIDR, treating IPv4-mapped IPv6 networks as
// IPv4 as Kubernetes does.
func ipNetToPrefix(ipnet *net.IPNet) (netip.Prefix, error) {
	ones, bits := ipnet.Mask.Size()
	addr, ok := netip.AddrFromSlice(ipnet.IP)
	if !ok || bits == 0 {
		return netip.Prefix{}, fmt.Errorf("invalid network %v", ipnet)
	}
	if addr.Is4In6() {
		addr = addr.Unmap()
		if bits == 128 {
			ones -= 96
		}
	}
	if ones < 0 || ones > addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("invalid prefix length in %v", ipnet)
	}
	return netip.PrefixFrom(addr, ones).Masked(), nil
}

// NodeIPs returns the node's primary IP family and its IP per family, as
// kube-proxy's detectNodeIPs does: rawNodeIPs are the Node object's addresses
// (primary first, at most one per family); a bindAddress that is not
// unspecified (0.0.0.0 or ::) overrides the IP of its family and makes that
// family primary; a family without an address gets loopback (127.0.0.1 or
// ::1), and a loopback primary IP is logged. With no addresses at all the
// primary family is IPv4.
func NodeIPs(logger klog.Logger, rawNodeIPs []net.IP, bindAddress string) (v1.IPFamily, map[v1.IPFamily]net.IP) {
	primary := v1.IPv4Protocol
	ips := map[v1.IPFamily]net.IP{
		v1.IPv4Protocol: net.IPv4(127, 0, 0, 1),
		v1.IPv6Protocol: net.IPv6loopback,
	}
	familyOf := func(ip net.IP) v1.IPFamily {
		if ip.To4() != nil {
			return v1.IPv4Protocol
		}
		return v1.IPv6Protocol
	}
	if len(rawNodeIPs) > 0 {
		primary = familyOf(rawNodeIPs[0])
		ips[primary] = rawNodeIPs[0]
		if len(rawNodeIPs) > 1 {
			ips[familyOf(rawNodeIPs[1])] = rawNodeIPs[1]
		}
	}
	if bind := parseIP(bindAddress); bind != nil && !bind.IsUnspecified() {
		primary = familyOf(bind)
		ips[primary] = bind
	}
	if ips[primary].IsLoopback() {
		logger.Info("Can't determine this node's IP, assuming loopback; if this is incorrect, please set the --bind-address flag")
	}
	return primary, ips
}
