// Package localdetect decides which packets come from pods on this node, the
// way kube-proxy's --detect-local-mode does, and expresses the answer as
// iptables match arguments.
//
// The proxier uses the arguments in rules such as "masquerade traffic to a
// ClusterIP that does not come from a local pod" and "short-circuit traffic
// from local pods to the external-traffic chain". A Detector is a value: it
// holds no state beyond the arguments it returns.
package localdetect

import (
	"net"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// The local-traffic detection modes kube-proxy understands (the values of
// --detect-local-mode and detectLocalMode).
const (
	// ModeClusterCIDR treats traffic from the cluster CIDR (per IP family) as
	// local. It is the default.
	ModeClusterCIDR v1alpha1.LocalMode = "ClusterCIDR"
	// ModeNodeCIDR treats traffic from the node's own pod CIDR
	// (node.spec.podCIDRs) as local.
	ModeNodeCIDR v1alpha1.LocalMode = "NodeCIDR"
	// ModeBridgeInterface treats traffic arriving on a named bridge as local.
	ModeBridgeInterface v1alpha1.LocalMode = "BridgeInterface"
	// ModeInterfaceNamePrefix treats traffic arriving on any interface whose
	// name starts with a prefix as local.
	ModeInterfaceNamePrefix v1alpha1.LocalMode = "InterfaceNamePrefix"
)

// How long kube-proxy waits for its Node object at start-up (see
// NeedsPodCIDRs).
const (
	// NodeIPsTimeout is how long kube-proxy waits for its Node object to
	// exist and have addresses before carrying on without them.
	NodeIPsTimeout = 30 * time.Second
	// PodCIDRsTimeout is how much longer kube-proxy waits, in NodeCIDR mode,
	// for node.spec.podCIDRs to be set before giving up with an error.
	PodCIDRsTimeout = 5 * time.Minute
)

// Detector holds the iptables match arguments that select traffic from local
// pods and traffic not from local pods. The zero value is the no-op detector:
// it is not implemented and returns no arguments.
type Detector struct {
	ifLocal    []string
	ifNotLocal []string
}

// NoOp returns a detector that detects nothing; Implemented reports false.
func NoOp() Detector {
	return Detector{}
}

// ByCIDR returns a detector that treats traffic whose source is in cidr as
// local ("-s cidr" / "! -s cidr"). cidr is used as given; callers pass a
// canonical network such as the one ParseCIDR returns.
func ByCIDR(cidr string) Detector {
	return Detector{
		ifLocal:    []string{"-s", cidr},
		ifNotLocal: []string{"!", "-s", cidr},
	}
}

// ByBridgeInterface returns a detector that treats traffic arriving on the
// interface iface as local ("-i iface" / "! -i iface").
func ByBridgeInterface(iface string) Detector {
	return Detector{
		ifLocal:    []string{"-i", iface},
		ifNotLocal: []string{"!", "-i", iface},
	}
}

// ByInterfaceNamePrefix returns a detector that treats traffic arriving on any
// interface whose name starts with prefix as local ("-i prefix+" /
// "! -i prefix+").
func ByInterfaceNamePrefix(prefix string) Detector {
	return Detector{
		ifLocal:    []string{"-i", prefix + "+"},
		ifNotLocal: []string{"!", "-i", prefix + "+"},
	}
}

// Implemented reports whether the detector matches anything. Rules that need
// a detector must be left out when it is not implemented.
func (d Detector) Implemented() bool {
	return len(d.ifLocal) > 0
}

// IfLocal returns the iptables arguments that match traffic from a local pod.
// The caller may modify the returned slice.
func (d Detector) IfLocal() []string {
	return slices.Clone(d.ifLocal)
}

// IfNotLocal returns the iptables arguments that match traffic that is not
// from a local pod. The caller may modify the returned slice.
func (d Detector) IfNotLocal() []string {
	return slices.Clone(d.ifNotLocal)
}

// String describes the detector for logs, e.g. "-s 10.244.0.0/16" or "none".
func (d Detector) String() string {
	if !d.Implemented() {
		return "none"
	}
	return strings.Join(d.ifLocal, " ")
}

// Config is the part of the kube-proxy configuration that selects the
// detector.
type Config struct {
	// Mode is detectLocalMode; empty is treated like ModeClusterCIDR was by
	// the time the configuration is completed, so callers pass the completed
	// value.
	Mode v1alpha1.LocalMode
	// ClusterCIDRs is the split form of clusterCIDR / --cluster-cidr (at most
	// one CIDR per IP family).
	ClusterCIDRs []string
	// BridgeInterface is detectLocal.bridgeInterface.
	BridgeInterface string
	// InterfaceNamePrefix is detectLocal.interfaceNamePrefix.
	InterfaceNamePrefix string
}

// NeedsPodCIDRs reports whether the detector depends on node.spec.podCIDRs.
//
// kube-proxy then waits at start-up, after waiting up to NodeIPsTimeout for
// its Node object to have addresses, up to PodCIDRsTimeout more for
// node.spec.podCIDRs to be set, and fails with "timeout waiting for PodCIDR
// allocation on node %q" (or "timeout waiting for node %q to exist") if they
// never appear. Afterwards it exits whenever the Node's podCIDRs differ from
// the ones it started with, so that it restarts with the new ones.
func (c Config) NeedsPodCIDRs() bool {
	return c.Mode == ModeNodeCIDR
}

// Resolve returns the detector for each IP family, as kube-proxy's
// getLocalDetectors does.
//
// For ModeClusterCIDR the first CIDR of each family in c.ClusterCIDRs is used;
// for ModeNodeCIDR the first of each family in nodePodCIDRs (the Node's
// spec.podCIDRs). A family without a CIDR gets the no-op detector, and when
// that is the primary family an informational line is logged, as upstream
// does. The interface modes use the same detector for both families. Any
// other mode gives no-op detectors. Invalid CIDRs are skipped (they are
// rejected earlier by validation; podCIDRs come from the API server).
func Resolve(logger klog.Logger, c Config, primary v1.IPFamily, nodePodCIDRs []string) map[v1.IPFamily]Detector {
	detectors := map[v1.IPFamily]Detector{
		v1.IPv4Protocol: NoOp(),
		v1.IPv6Protocol: NoOp(),
	}

	switch c.Mode {
	case ModeClusterCIDR:
		for family, cidr := range firstCIDRPerFamily(logger, c.ClusterCIDRs) {
			detectors[family] = ByCIDR(cidr)
		}
		if !detectors[primary].Implemented() {
			logger.Info("Detect-local-mode set to ClusterCIDR, but no cluster CIDR specified for primary IP family", "ipFamily", primary, "clusterCIDRs", c.ClusterCIDRs)
		}
	case ModeNodeCIDR:
		for family, cidr := range firstCIDRPerFamily(logger, nodePodCIDRs) {
			detectors[family] = ByCIDR(cidr)
		}
		if !detectors[primary].Implemented() {
			logger.Info("Detect-local-mode set to NodeCIDR, but no PodCIDR defined at node for primary IP family", "ipFamily", primary, "podCIDRs", nodePodCIDRs)
		}
	case ModeBridgeInterface:
		d := ByBridgeInterface(c.BridgeInterface)
		detectors[v1.IPv4Protocol], detectors[v1.IPv6Protocol] = d, d
	case ModeInterfaceNamePrefix:
		d := ByInterfaceNamePrefix(c.InterfaceNamePrefix)
		detectors[v1.IPv4Protocol], detectors[v1.IPv6Protocol] = d, d
	default:
		logger.Info("Defaulting to no-op detect-local", "detectLocalMode", c.Mode)
	}
	return detectors
}

// firstCIDRPerFamily returns, for each IP family, the canonical form of the
// first valid CIDR of that family in cidrs. Surrounding blanks are ignored;
// empty entries are skipped silently and invalid ones with a log line.
func firstCIDRPerFamily(logger klog.Logger, cidrs []string) map[v1.IPFamily]string {
	out := map[v1.IPFamily]string{}
	for _, raw := range cidrs {
		s := strings.TrimSpace(raw)
		if s == "" {
			continue
		}
		_, ipnet, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			logger.Error(err, "Invalid CIDR ignored", "CIDR", s)
			continue
		}
		family := familyOf(ipnet)
		if _, seen := out[family]; !seen {
			out[family] = ipnet.String()
		}
	}
	return out
}

func familyOf(ipnet *net.IPNet) v1.IPFamily {
	if netutils.IsIPv4CIDR(ipnet) {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}
