// Package conntrack deletes stale UDP conntrack entries after endpoints go
// away, over netlink, as kube-proxy 1.37's reconciler
// (k8s.io/kubernetes/pkg/proxy/conntrack.CleanStaleEntries) does: a flow to
// a Service address (or NodePort) whose DNAT destination is no longer a
// serving endpoint would otherwise keep black-holing the client's packets,
// since every packet refreshes the entry's timeout.
//
// Which entries go follows kube-proxy 1.37 rule for rule:
//   - only UDP entries; TCP and SCTP entries are never touched (kube-proxy
//     1.37 dropped SCTP from the reconciler; its own test asserts that SCTP
//     entries survive);
//   - an entry whose original destination is a ClusterIP, load-balancer IP
//     or external IP and port of a UDP Service port, and whose reply source
//     is not a serving endpoint of that port, is stale; a Service port
//     without serving endpoints makes every entry to it stale (the REJECT
//     rule cannot catch flows DNATed before it existed);
//   - an entry whose original destination port is the NodePort of a UDP
//     Service port with at least one serving endpoint, and whose reply
//     source is not one of them, is stale (any destination address: entries
//     are matched on the port alone, so NodePorts of Services without
//     endpoints are left alone rather than hit unrelated flows);
//   - traffic policies, topology and terminating state play no part.
//
// One deliberate difference: kube-proxy checks the NodePort rule even for
// an entry to a Service IP whose endpoint is live, so a live flow to
// ClusterIP:30001 is deleted when another Service happens to use 30001 as
// its NodePort. Here an entry that matched a Service IP and port is
// settled by that match alone.
package conntrack

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// Interface lists and deletes conntrack entries of one address family.
type Interface interface {
	List(family v1.IPFamily) ([]*netlink.ConntrackFlow, error)
	Delete(family v1.IPFamily, flows []*netlink.ConntrackFlow) (int, error)
}

// Netlink is the real Interface, talking to the kernel of the calling
// thread's network namespace.
type Netlink struct{}

func af(family v1.IPFamily) netlink.InetFamily {
	if family == v1.IPv6Protocol {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// List returns every conntrack entry of family. A partial dump (EINTR,
// the table changed while it was read) is returned with the error.
func (Netlink) List(family v1.IPFamily) ([]*netlink.ConntrackFlow, error) {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, af(family))
	if err != nil && !errors.Is(err, unix.EINTR) {
		return nil, fmt.Errorf("listing conntrack entries: %w", err)
	}
	return flows, err
}

// Delete deletes exactly the given flows and reports how many went.
func (Netlink) Delete(family v1.IPFamily, flows []*netlink.ConntrackFlow) (int, error) {
	if len(flows) == 0 {
		return 0, nil
	}
	filters := make([]netlink.CustomConntrackFilter, len(flows))
	for i, f := range flows {
		filters[i] = exactFlow{f}
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, af(family), filters...)
	if err != nil {
		return int(n), fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return int(n), nil
}

// exactFlow matches one flow by its original and reply tuples.
type exactFlow struct{ f *netlink.ConntrackFlow }

func (e exactFlow) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	a, b := e.f, f
	return a.Forward.Protocol == b.Forward.Protocol &&
		a.Forward.SrcIP.Equal(b.Forward.SrcIP) && a.Forward.DstIP.Equal(b.Forward.DstIP) &&
		a.Forward.SrcPort == b.Forward.SrcPort && a.Forward.DstPort == b.Forward.DstPort &&
		a.Reverse.SrcIP.Equal(b.Reverse.SrcIP) && a.Reverse.SrcPort == b.Reverse.SrcPort
}

// frontend is a Service address and port, or a NodePort (Addr invalid).
type frontend struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

func protoNumber(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP, true
	}
	return 0, false
}

// Stale returns the UDP flows of state's Services whose reply
// source is not a serving endpoint of the Service port they were sent to.
// Flows to anything that is not a Service frontend are never returned.
func Stale(state *proxy.State, flows []*netlink.ConntrackFlow) []*netlink.ConntrackFlow {
	valid := map[frontend]map[netip.AddrPort]bool{}
	for spn, sp := range state.ServicePorts {
		proto, ok := protoNumber(sp.Protocol)
		if !ok {
			continue
		}
		eps := map[netip.AddrPort]bool{}
		for _, e := range state.Endpoints[spn] {
			if e.Serving {
				eps[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
			}
		}
		port := uint16(sp.Port)
		valid[frontend{proto, sp.ClusterIP, port}] = eps
		for _, ip := range sp.LoadBalancerVIPs {
			valid[frontend{proto, ip, port}] = eps
		}
		for _, ip := range sp.ExternalIPs {
			valid[frontend{proto, ip, port}] = eps
		}
		if sp.NodePort != 0 && len(eps) > 0 {
			valid[frontend{proto, netip.Addr{}, uint16(sp.NodePort)}] = eps
		}
	}
	var stale []*netlink.ConntrackFlow
	for _, f := range flows {
		dst, ok1 := netip.AddrFromSlice(f.Forward.DstIP)
		rsrc, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP)
		if !ok1 || !ok2 {
			continue
		}
		dst, rsrc = dst.Unmap(), rsrc.Unmap()
		reply := netip.AddrPortFrom(rsrc, f.Reverse.SrcPort)
		if eps, ok := valid[frontend{f.Forward.Protocol, dst, f.Forward.DstPort}]; ok {
			if !eps[reply] {
				stale = append(stale, f)
			}
			continue
		}
		if eps, ok := valid[frontend{f.Forward.Protocol, netip.Addr{}, f.Forward.DstPort}]; ok && !eps[reply] {
			stale = append(stale, f)
		}
	}
	return stale
}
