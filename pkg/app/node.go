package app

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// nodeInfo is what iptproxy needs from its own Node object.
type nodeInfo struct {
	node     *v1.Node
	ips      []netip.Addr // one per family, primary first
	podCIDRs []string
}

// nodeHostIPs returns the node's addresses as kube-proxy reads them: the
// first InternalIP (else ExternalIP) is primary, then the first address of
// the other family.
func nodeHostIPs(node *v1.Node) []netip.Addr {
	var all []netip.Addr
	for _, t := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != t {
				continue
			}
			if ip, ok := proxy.ParseIP(a.Address); ok {
				all = append(all, ip)
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	out := []netip.Addr{all[0]}
	for _, ip := range all[1:] {
		if ip.Is4() != all[0].Is4() {
			out = append(out, ip)
			break
		}
	}
	return out
}

// waitForNode fetches the node, waiting up to ipsTimeout for it to have
// addresses and, when podCIDRs are needed, up to podCIDRsTimeout for those,
// as kube-proxy does at start.
func waitForNode(ctx context.Context, client kubernetes.Interface, name string, needPodCIDRs bool, ipsTimeout, podCIDRsTimeout time.Duration) (*nodeInfo, error) {
	logger := klog.FromContext(ctx)
	get := func() (*nodeInfo, error) {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
				return nil, fmt.Errorf("reading Node %q: %w (does iptproxy's ServiceAccount have the iptproxy ClusterRole?)", name, err)
			}
			logger.Error(err, "Reading Node; retrying", "node", name)
			return nil, nil
		}
		return &nodeInfo{node: node, ips: nodeHostIPs(node), podCIDRs: node.Spec.PodCIDRs}, nil
	}
	var info *nodeInfo
	var fatal error
	poll := func(ctx context.Context, timeout time.Duration, done func(*nodeInfo) bool) {
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_ = wait.PollUntilContextCancel(c, time.Second, true, func(context.Context) (bool, error) {
			i, err := get()
			if err != nil {
				fatal = err
				return true, nil
			}
			if i != nil {
				info = i
			}
			return info != nil && done(info), nil
		})
	}
	poll(ctx, ipsTimeout, func(i *nodeInfo) bool { return len(i.ips) > 0 })
	if fatal != nil {
		return nil, fatal
	}
	if needPodCIDRs && (info == nil || len(info.podCIDRs) == 0) {
		poll(ctx, podCIDRsTimeout, func(i *nodeInfo) bool { return len(i.podCIDRs) > 0 })
		if fatal != nil {
			return nil, fatal
		}
		if info == nil {
			return nil, fmt.Errorf("timeout waiting for node %q to exist", name)
		}
		if len(info.podCIDRs) == 0 {
			return nil, fmt.Errorf("timeout waiting for PodCIDR allocation on node %q", name)
		}
	}
	if info == nil {
		logger.Error(nil, "Timed out waiting for node to exist", "node", name)
		return &nodeInfo{}, nil
	}
	if len(info.ips) == 0 {
		logger.Error(nil, "Timed out waiting for node to be assigned IPs", "node", name)
	}
	return info, nil
}

// primaryFamily picks the primary IP family and the node IP of each
// family, as kube-proxy's detectNodeIPs: from the node's addresses, then
// overridden by a specific --bind-address; loopback when unknown.
func primaryFamily(logger klog.Logger, nodeIPs []netip.Addr, bindAddress string) (v1.IPFamily, map[v1.IPFamily]netip.Addr) {
	primary := v1.IPv4Protocol
	ips := map[v1.IPFamily]netip.Addr{
		v1.IPv4Protocol: netip.MustParseAddr("127.0.0.1"),
		v1.IPv6Protocol: netip.IPv6Loopback(),
	}
	if len(nodeIPs) > 0 {
		primary = proxy.FamilyOf(nodeIPs[0])
		for _, ip := range nodeIPs {
			ips[proxy.FamilyOf(ip)] = ip
		}
	}
	if ip, ok := proxy.ParseIP(bindAddress); ok && !ip.IsUnspecified() {
		primary = proxy.FamilyOf(ip)
		ips[primary] = ip
	}
	if ips[primary].IsLoopback() {
		logger.Info("Can't determine this node's IP, assuming loopback; if this is incorrect, please set the --bind-address flag")
	}
	return primary, ips
}

// nodePortAddresses resolves nodePortAddresses for one family: nil means
// every local address; otherwise the local interface addresses inside the
// given CIDRs ("primary" means the node IP). It also reports whether
// 127.0.0.1 is among the addresses NodePorts may answer on. interfaceAddrs
// lists the local addresses (nil: this machine's).
func nodePortAddresses(logger klog.Logger, cidrs []string, family v1.IPFamily, nodeIP netip.Addr, interfaceAddrs func() ([]net.Addr, error)) (addrs []netip.Addr, matchAll, containsV4Loopback bool) {
	var prefixes []netip.Prefix
	for _, c := range cidrs {
		c = strings.TrimSpace(c)
		switch c {
		case "primary":
			if nodeIP.IsValid() && !nodeIP.IsLoopback() {
				prefixes = append(prefixes, netip.PrefixFrom(nodeIP, nodeIP.BitLen()))
			}
			continue
		case "":
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			logger.Error(err, "Ignoring invalid nodePortAddresses entry", "cidr", c)
			continue
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked()
		if proxy.FamilyOf(p.Addr()) != family {
			continue
		}
		// As kube-proxy: a CIDR whose address is a loopback one counts,
		// even when it does not hold 127.0.0.1.
		if family == v1.IPv4Protocol && (p.Addr().IsLoopback() || p.Contains(netip.MustParseAddr("127.0.0.1"))) {
			containsV4Loopback = true
		}
		prefixes = append(prefixes, p)
	}
	if len(prefixes) == 0 {
		// As kube-proxy: a family with no CIDRs of its own matches all
		// of its addresses.
		return nil, true, family == v1.IPv4Protocol || containsV4Loopback
	}
	for _, p := range prefixes {
		if p.Bits() == 0 {
			return nil, true, true
		}
	}
	if interfaceAddrs == nil {
		interfaceAddrs = net.InterfaceAddrs
	}
	ifAddrs, err := interfaceAddrs()
	if err != nil {
		logger.Error(err, "Listing local addresses for nodePortAddresses")
	}
	for _, a := range ifAddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := proxy.ParseIP(ipn.IP.String())
		if !ok || proxy.FamilyOf(ip) != family {
			continue
		}
		for _, p := range prefixes {
			if p.Contains(ip) && !slices.Contains(addrs, ip) {
				addrs = append(addrs, ip)
			}
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	if addrs == nil {
		addrs = []netip.Addr{}
	}
	return addrs, false, containsV4Loopback
}
