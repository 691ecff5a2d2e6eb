package app

import (
	"net"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/localdetect"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// NodeFacts are the facts about a node, besides the configuration, that
// shape its rules.
type NodeFacts struct {
	// Name is the node's name.
	Name string
	// Node is the node's object (nil when unknown: no addresses, no zone,
	// no pod CIDRs).
	Node *v1.Node
	// InterfaceAddrs lists the node's local addresses, for
	// nodePortAddresses CIDRs; nil reads this machine's interfaces.
	InterfaceAddrs func() ([]net.Addr, error)
	// TCPBeLiberal is the node's nf_conntrack_tcp_be_liberal sysctl.
	TCPBeLiberal bool
}

// RulesConfigs returns the renderer configuration of each IP family, as
// the daemon derives it from o and the node, and the primary family. It
// reads nothing from the kernel (but see NodeFacts.InterfaceAddrs), so
// offline tools render exactly what the daemon would.
func RulesConfigs(logger klog.Logger, o *options.Options, facts NodeFacts) (v1.IPFamily, map[v1.IPFamily]rules.Config) {
	info := &nodeInfo{node: facts.Node}
	if facts.Node != nil {
		info.ips = nodeHostIPs(facts.Node)
		info.podCIDRs = facts.Node.Spec.PodCIDRs
	}
	primary, nodeIPs := primaryFamily(logger, info.ips, o.Config.BindAddress)
	detectors := localdetect.Resolve(logger, o.LocalDetectConfig(), primary, info.podCIDRs)
	out := map[v1.IPFamily]rules.Config{}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		out[fam] = familyRulesConfig(logger, o, facts, info, fam, nodeIPs[fam], detectors[fam])
	}
	return primary, out
}

// familyRulesConfig is the renderer configuration of one family.
func familyRulesConfig(logger klog.Logger, o *options.Options, facts NodeFacts, info *nodeInfo, fam v1.IPFamily, nodeIP netip.Addr, detector localdetect.Detector) rules.Config {
	cfg := o.Config
	var zone string
	if info.node != nil {
		zone = info.node.Labels[proxy.LabelTopologyZone]
	}
	npAddrs, _, npLoopback := nodePortAddresses(logger, expandPrimary(cfg.NodePortAddresses), fam, nodeIP, facts.InterfaceAddrs)
	localhostNP := fam == v1.IPv4Protocol && cfg.IPTables.LocalhostNodePorts != nil && *cfg.IPTables.LocalhostNodePorts && npLoopback
	return rules.Config{
		Family:              fam,
		NodeName:            facts.Name,
		Zone:                zone,
		NodeIPs:             familyIPs(info.ips, fam),
		MasqueradeAll:       cfg.IPTables.MasqueradeAll,
		MasqueradeBit:       int(ptrOr(cfg.IPTables.MasqueradeBit, 14)),
		LocalTraffic:        rules.LocalTraffic{IfLocal: detector.IfLocal(), IfNotLocal: detector.IfNotLocal()},
		LocalhostNodePorts:  localhostNP,
		NodePortAddresses:   npAddrs,
		ConntrackTCPLiberal: cfg.Conntrack.TCPBeLiberal || facts.TCPBeLiberal,
		// kube-proxy's nfacct counters; the daemon drops those it cannot
		// create (no nfnetlink_acct), offline tools assume a usual kernel.
		NFAcctLocalhostNodePorts: metrics.LocalhostNodePortAcceptedNFAcctCounter,
		NFAcctInvalidDropped:     metrics.CTStateInvalidDroppedNFAcctCounter,
	}
}
