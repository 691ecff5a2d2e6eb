// Package rules is iptproxy's renderer: a pure function from the Service
// model (pkg/proxy) and the node's configuration to the chains and rules of
// the nat and filter tables, with kube-proxy's chain names, jumps and
// comments.
//
// Rules are produced in the canonical form iptables-save prints, so that
// what the kernel holds can be compared with what is wanted chain by chain
// (see pkg/planner).
package rules

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// Chains kube-proxy's iptables mode owns, by the same names.
const (
	ChainServices         = "KUBE-SERVICES"
	ChainExternalServices = "KUBE-EXTERNAL-SERVICES"
	ChainNodePorts        = "KUBE-NODEPORTS"
	ChainPostrouting      = "KUBE-POSTROUTING"
	ChainMarkMasq         = "KUBE-MARK-MASQ"
	ChainForward          = "KUBE-FORWARD"
	ChainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	ChainCanary           = "KUBE-PROXY-CANARY"
	// ChainKubeletFirewall holds the anti-martian rule that makes localhost
	// NodePorts safe; kubelet creates the same chain.
	ChainKubeletFirewall = "KUBE-FIREWALL"
)

// Prefixes of the per-Service chains.
const (
	PrefixServiceCluster = "KUBE-SVC-"
	PrefixServiceLocal   = "KUBE-SVL-"
	PrefixFirewall       = "KUBE-FW-"
	PrefixExternal       = "KUBE-EXT-"
	PrefixEndpoint       = "KUBE-SEP-"
)

// IsServiceChain reports whether chain is a per-Service, per-endpoint or
// dispatch chain (PrefixDispatch extends PrefixServiceCluster) that
// iptproxy (or kube-proxy) created and may delete.
func IsServiceChain(chain string) bool {
	for _, p := range []string{PrefixServiceCluster, PrefixServiceLocal, PrefixFirewall, PrefixExternal, PrefixEndpoint} {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// IsRootChain reports whether chain is one of the top-level chains iptproxy
// writes whole on every sync (KUBE-SERVICES, KUBE-NODEPORTS,
// KUBE-POSTROUTING, KUBE-MARK-MASQ and the filter roots). kubelet's
// KUBE-FIREWALL, which kubelet may write too, is not one.
func IsRootChain(chain string) bool {
	switch chain {
	case ChainServices, ChainExternalServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainForward, ChainProxyFirewall:
		return true
	}
	return false
}

func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// hash12 is hash16 cut to 12 characters, for dispatch chain names, which
// carry a longer prefix (25 characters in all, as kube-proxy's names).
func hash12(s string) string { return hash16(s)[:12] }

// ServiceChainNames are the names of the chains of one Service port.
type ServiceChainNames struct {
	Cluster, Local, Firewall, External string
}

// ChainNamesFor returns kube-proxy's chain names for a Service port:
// prefix + the first 16 characters of base32(sha256(name + protocol)).
func ChainNamesFor(spn proxy.ServicePortName) ServiceChainNames {
	h := hash16(spn.String() + strings.ToLower(string(spn.Protocol)))
	return ServiceChainNames{
		Cluster:  PrefixServiceCluster + h,
		Local:    PrefixServiceLocal + h,
		Firewall: PrefixFirewall + h,
		External: PrefixExternal + h,
	}
}

// EndpointChainName returns kube-proxy's KUBE-SEP chain name for endpoint
// ep ("ip:port") of a Service port.
func EndpointChainName(spn proxy.ServicePortName, ep string) string {
	return PrefixEndpoint + hash16(spn.String()+strings.ToLower(string(spn.Protocol))+ep)
}
