package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// Kinds of entry into a Service.
const (
	EntryClusterIP    = "ClusterIP"
	EntryNodePort     = "NodePort"
	EntryLoadBalancer = "LoadBalancer"
	EntryExternalIP   = "ExternalIP"
)

// Default outside clients for tracing external entries (benchmarking and
// documentation ranges, so they are never a pod or node).
var (
	outsideClient4 = netip.MustParseAddr("198.18.0.1")
	outsideClient6 = netip.MustParseAddr("2001:db8:ffff::1")
)

// outsideInterface is the interface outside clients arrive on in traces.
const outsideInterface = "eth0"

// ServiceReport is what show prints for one Service on one node.
type ServiceReport struct {
	// Service is "namespace/name".
	Service string       `json:"service"`
	Node    string       `json:"node"`
	Ports   []PortReport `json:"ports"`
}

// PortReport describes one port of a Service in one IP family.
type PortReport struct {
	Family   v1.IPFamily `json:"ipFamily"`
	Name     string      `json:"name"`
	Protocol v1.Protocol `json:"protocol"`
	Port     int         `json:"port"`

	ClusterIP       netip.Addr    `json:"clusterIP"`
	NodePort        int           `json:"nodePort,omitempty"`
	LoadBalancerIPs []netip.Addr  `json:"loadBalancerIPs,omitempty"`
	ExternalIPs     []netip.Addr  `json:"externalIPs,omitempty"`
	SourceRanges    []string      `json:"loadBalancerSourceRanges,omitempty"`
	InternalPolicy  string        `json:"internalTrafficPolicy"`
	ExternalPolicy  string        `json:"externalTrafficPolicy,omitempty"`
	Affinity        string        `json:"sessionAffinity"`
	AffinitySeconds int           `json:"sessionAffinityTimeoutSeconds,omitempty"`
	TopologyMode    string        `json:"topologyMode,omitempty"`
	Chains          []string      `json:"chains"`
	Entries         []Entry       `json:"entries"`
	Endpoints       []EndpointUse `json:"endpoints"`
	LeftOut         []LeftOut     `json:"leftOut,omitempty"`
}

// Entry is one way into the Service, traced with a typical packet.
type Entry struct {
	Kind string `json:"kind"`
	// Address is the address:port the packet is sent to.
	Address string `json:"address"`
	// Packet is the packet traced.
	Packet trace.Packet `json:"packet"`
	// Verdict and Targets are the trace's summary.
	Verdict string   `json:"verdict"`
	Targets []Target `json:"targets"`
}

// EndpointUse is one endpoint with its chance of being picked through each
// entry, as the rules give it.
type EndpointUse struct {
	Address string `json:"address"`
	Node    string `json:"node,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Local   bool   `json:"local"`
	// Probability has one value per entry, in the order of Entries.
	Probability []float64 `json:"probability"`
}

// LeftOut is an endpoint the rules do not use (for some traffic), with why.
type LeftOut struct {
	Address string `json:"address"`
	Node    string `json:"node,omitempty"`
	// Scope is "all", "internal" (ClusterIP) or "external" traffic.
	Scope  string `json:"scope"`
	Reason string `json:"reason"`
}

// ErrServiceNotFound is returned by ShowService for a Service that no
// model serves.
var ErrServiceNotFound = fmt.Errorf("service not found")

// ShowService describes Service nn on the node of the models (one per IP
// family). Endpoint probabilities come from tracing packets through
// each model's tables.
func ShowService(models []*Model, nn types.NamespacedName) (*ServiceReport, error) {
	r := &ServiceReport{Service: nn.String()}
	for _, m := range models {
		r.Node = m.Config.NodeName
		names := slices.Clone(m.State.ServicePortNames(nn)) // the state's own index: never sort it in place
		slices.SortFunc(names, func(a, b proxy.ServicePortName) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
		})
		for _, spn := range names {
			sp := m.State.ServicePorts[spn]
			if sp == nil {
				continue
			}
			pr, err := showPort(m, sp, m.State.Endpoints[spn])
			if err != nil {
				return nil, err
			}
			r.Ports = append(r.Ports, *pr)
		}
	}
	if len(r.Ports) == 0 {
		return nil, fmt.Errorf("%s: %w", nn, ErrServiceNotFound)
	}
	return r, nil
}

func showPort(m *Model, sp *proxy.ServicePort, eps []*proxy.Endpoint) (*PortReport, error) {
	cfg := m.Config
	pr := portSettings(sp)
	pr.Family = cfg.Family
	pr.TopologyMode = proxy.Categorize(eps, sp, cfg.NodeName, cfg.Zone).TopologyMode
	entries := portEntries(cfg, sp)
	prob, err := traceEntries(m, sp, pr, entries)
	if err != nil {
		return nil, err
	}
	pr.Entries = entries
	pr.Endpoints = endpointUses(eps, prob)
	ex := proxy.Exclusions(eps, sp, cfg.NodeName, cfg.Zone)
	proxy.SortExclusions(ex)
	for _, x := range ex {
		pr.LeftOut = append(pr.LeftOut, LeftOut{Address: x.Endpoint.String(), Node: x.Endpoint.NodeName(), Scope: x.Scope, Reason: x.Reason})
	}
	return pr, nil
}

// portSettings reports what the Service port is configured with.
func portSettings(sp *proxy.ServicePort) *PortReport {
	pr := &PortReport{
		Name: sp.Name.Port, Protocol: sp.Protocol, Port: sp.Port,
		ClusterIP: sp.ClusterIP, NodePort: sp.NodePort,
		LoadBalancerIPs: sp.LoadBalancerVIPs, ExternalIPs: sp.ExternalIPs,
		InternalPolicy: policyName(sp.InternalPolicyLocal), Affinity: string(v1.ServiceAffinityNone),
	}
	if sp.ExternallyAccessible() {
		pr.ExternalPolicy = policyName(sp.ExternalPolicyLocal)
	}
	for _, p := range sp.LoadBalancerSourceRanges {
		pr.SourceRanges = append(pr.SourceRanges, p.String())
	}
	if sp.SessionAffinityClientIP {
		pr.Affinity, pr.AffinitySeconds = string(v1.ServiceAffinityClientIP), sp.StickyMaxAgeSeconds
	}
	return pr
}

// portEntries returns the ways into the Service port, each with a typical
// packet: the cluster IP from the node (or from outside when the node's
// addresses are unknown), the node port, load-balancer and external IPs
// from outside (from an allowed source range when there is one).
func portEntries(cfg rules.Config, sp *proxy.ServicePort) []Entry {
	proto := protocolName(sp.Protocol)
	outside := outsideClient4
	if cfg.Family == v1.IPv6Protocol {
		outside = outsideClient6
	}
	var entries []Entry
	if sp.ClusterIP.IsValid() {
		pkt := trace.Packet{Protocol: proto, Dst: sp.ClusterIP, DstPort: sp.Port}
		if len(cfg.NodeIPs) > 0 {
			pkt.Src, pkt.Local = cfg.NodeIPs[0], true
		} else {
			pkt.Src, pkt.InInterface = outside, outsideInterface
		}
		entries = append(entries, Entry{Kind: EntryClusterIP, Packet: pkt})
	}
	external := func(kind string, dst netip.Addr, port int) {
		src := outside
		if sp.FirewallEnabled && kind == EntryLoadBalancer && len(sp.LoadBalancerSourceRanges) > 0 {
			// An address inside the first allowed range.
			r := sp.LoadBalancerSourceRanges[0]
			src = r.Addr()
			if r.Bits() < r.Addr().BitLen() {
				src = src.Next()
			}
		}
		entries = append(entries, Entry{Kind: kind, Packet: trace.Packet{Protocol: proto, Src: src, Dst: dst, DstPort: port, InInterface: outsideInterface}})
	}
	if sp.NodePort != 0 && len(cfg.NodeIPs) > 0 {
		external(EntryNodePort, cfg.NodeIPs[0], sp.NodePort)
	}
	for _, ip := range sp.LoadBalancerVIPs {
		external(EntryLoadBalancer, ip, sp.Port)
	}
	for _, ip := range sp.ExternalIPs {
		external(EntryExternalIP, ip, sp.Port)
	}
	return entries
}

// traceEntries traces each entry's packet, filling its verdict and targets
// and the Service's chains in pr; it returns, per destination accepted,
// its probability through each entry.
func traceEntries(m *Model, sp *proxy.ServicePort, pr *PortReport, entries []Entry) (map[string][]float64, error) {
	prob := map[string][]float64{}
	seenChain := map[string]bool{}
	for i := range entries {
		e := &entries[i]
		e.Address = netip.AddrPortFrom(e.Packet.Dst, uint16(e.Packet.DstPort)).String()
		res, err := trace.Trace(m.Tables, m.Node, e.Packet)
		if err != nil {
			return nil, fmt.Errorf("tracing %s entry %s of %s: %w", e.Kind, e.Address, sp.Name, err)
		}
		rep := Summarize(res)
		e.Verdict, e.Targets = rep.Verdict, rep.Targets
		for _, t := range rep.Targets {
			if t.Verdict != VerdictAccepted {
				continue
			}
			if prob[t.Destination] == nil {
				prob[t.Destination] = make([]float64, len(entries))
			}
			prob[t.Destination][i] += t.Probability
		}
		// Chains every packet crosses (found by tracing the same packet to
		// an address no Service has) are not this Service's.
		common := map[string]bool{}
		base := e.Packet
		base.Dst = unusedAddr(m.Config.Family)
		if bres, err := trace.Trace(m.Tables, m.Node, base); err == nil {
			for _, c := range chainsOf(bres) {
				common[c] = true
			}
		}
		for _, c := range chainsOf(res) {
			if !common[c] && !seenChain[c] {
				seenChain[c] = true
				pr.Chains = append(pr.Chains, c)
			}
		}
	}
	return prob, nil
}

// endpointUses lists the endpoints the traces reached, in the Service's
// order, then any other destination (which should not happen, but the
// rules are the truth).
func endpointUses(eps []*proxy.Endpoint, prob map[string][]float64) []EndpointUse {
	var out []EndpointUse
	for _, ep := range eps {
		p, ok := prob[ep.String()]
		if !ok {
			continue
		}
		out = append(out, EndpointUse{Address: ep.String(), Node: ep.NodeName(), Zone: ep.Zone(), Local: ep.IsLocal, Probability: p})
		delete(prob, ep.String())
	}
	var rest []string
	for d := range prob {
		rest = append(rest, d)
	}
	slices.Sort(rest)
	for _, d := range rest {
		out = append(out, EndpointUse{Address: d, Probability: prob[d]})
	}
	return out
}

func policyName(local bool) string {
	if local {
		return "Local"
	}
	return "Cluster"
}

// protocolName is the tracer's protocol name ("tcp", "udp", "sctp").
func protocolName(p v1.Protocol) string {
	switch p {
	case v1.ProtocolUDP:
		return "udp"
	case v1.ProtocolSCTP:
		return "sctp"
	}
	return "tcp"
}

// unusedAddr is an address no Service, pod or node has (TEST-NET-1,
// documentation prefix).
func unusedAddr(fam v1.IPFamily) netip.Addr {
	if fam == v1.IPv6Protocol {
		return netip.MustParseAddr("2001:db8:fffe::1")
	}
	return netip.MustParseAddr("192.0.2.254")
}

// chainsOf lists, in order, the user-defined chains in which a rule
// matched the packet (chains merely crossed are left out).
func chainsOf(res *trace.Result) []string {
	var out []string
	seen := map[string]bool{}
	for _, o := range res.Outcomes {
		for _, s := range o.Steps {
			name := s.Table + "/" + s.Chain
			if s.Chain != "" && s.Rule > 0 && s.Action != trace.ActionSkip && !builtinChain(s.Chain) && !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	return out
}

func builtinChain(c string) bool {
	switch c {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// percent renders a probability for people.
func percent(p float64) string {
	if p == 0 {
		return "-"
	}
	return strconv.FormatFloat(p*100, 'f', 1, 64) + "%"
}
