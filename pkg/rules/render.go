package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// largeClusterEndpointsThreshold is kube-proxy's threshold above which
// per-endpoint comments are left out to keep the tables small.
const largeClusterEndpointsThreshold = 1000

// LocalTraffic tells which packets come from pods on this node (the
// local-traffic detector). Args are iptables match arguments, e.g.
// ["-s", "10.244.0.0/16"] and ["!", "-s", "10.244.0.0/16"]; both nil when
// detection is off.
type LocalTraffic struct {
	IfLocal    []string
	IfNotLocal []string
}

// Implemented reports whether local-traffic detection is configured.
func (l LocalTraffic) Implemented() bool { return len(l.IfLocal) > 0 }

// Config is everything about the node and the configuration that shapes the
// rules, for one IP family.
type Config struct {
	Family   v1.IPFamily
	NodeName string
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string
	// NodeIPs are the node's addresses of this family, primary first
	// (loadBalancerSourceRanges that contain the primary let the node in).
	NodeIPs []netip.Addr

	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit marking packets to masquerade.
	MasqueradeBit int
	LocalTraffic  LocalTraffic

	// LocalhostNodePorts is true when NodePorts answer on 127.0.0.0/8
	// (IPv4 only, with route_localnet set).
	LocalhostNodePorts bool
	// NodePortAddresses lists the addresses NodePorts answer on; nil means
	// every local address.
	NodePortAddresses []netip.Addr
	// ConntrackTCPLiberal skips the DROP of INVALID packets, as kube-proxy
	// does when nf_conntrack_tcp_be_liberal is set.
	ConntrackTCPLiberal bool

	// NFAcctLocalhostNodePorts and NFAcctInvalidDropped name the nfacct
	// objects that count localhost NodePort packets and dropped INVALID
	// packets ("-m nfacct --nfacct-name"), as kube-proxy's rules do; ""
	// leaves the count out. The objects must exist before the rules are
	// restored.
	NFAcctLocalhostNodePorts string
	NFAcctInvalidDropped     string
}

func (c *Config) masqMark() string {
	// iptables-save prints marks in plain hex ("0x4000").
	return fmt.Sprintf("%#x", 1<<uint(c.MasqueradeBit))
}

func (c *Config) isIPv6() bool { return c.Family == v1.IPv6Protocol }

// Chain is the desired content of one chain.
type Chain struct {
	Name string
	// Rules are the rule bodies, in iptables-save form without the
	// "-A NAME" prefix.
	Rules []string
}

// Ruleset is the desired content of the nat and filter tables for one IP
// family: every chain iptproxy owns, in a stable order.
type Ruleset struct {
	Filter []*Chain
	NAT    []*Chain
	Stats  Stats
}

// Stats summarizes a render, for metrics and logs.
type Stats struct {
	ServicePorts int
	Endpoints    int
	// NoLocalEndpointsInternal/External count Service ports with a Local
	// policy and no local endpoint.
	NoLocalEndpointsInternal, NoLocalEndpointsExternal int
	// Rendered is the number of Service ports whose rules were rendered
	// afresh (the rest came from the cache).
	Rendered int
	// LargeClusterMode is true when per-endpoint comments were left out.
	LargeClusterMode bool
}

// serviceRules are the rules one Service port contributes.
type serviceRules struct {
	natChains []*Chain
	// Entries for the shared chains, keyed for the dispatch tree.
	natServices, natNodePorts                                 []dispatchEntry
	filterServices, filterExternal, filterFW, filterNodePorts []dispatchEntry
	noLocalInternal, noLocalExternal                          bool
}

// Renderer turns the model into rules. It caches each Service port's rules
// so a sync re-renders only the Services that changed. It is not safe for
// concurrent use.
type Renderer struct {
	cfg   Config
	cache map[proxy.ServicePortName]*serviceRules
	large bool
}

// NewRenderer returns a renderer for cfg.
func NewRenderer(cfg Config) *Renderer {
	return &Renderer{cfg: cfg, cache: map[proxy.ServicePortName]*serviceRules{}}
}

// Config returns the configuration the renderer uses.
func (r *Renderer) Config() Config { return r.cfg }

// SetConfig replaces the configuration; the next Render re-renders
// everything.
func (r *Renderer) SetConfig(cfg Config) {
	r.cfg = cfg
	clear(r.cache)
}

// Render returns the desired rules for state. changed lists the Services
// whose rules must be rendered afresh; nil means all of them.
func (r *Renderer) Render(state *proxy.State, changed map[proxy.ServicePortName]bool) *Ruleset {
	large := state.EndpointCount() > largeClusterEndpointsThreshold
	if large != r.large {
		r.large = large
		changed = nil
	}
	rs := &Ruleset{Stats: Stats{ServicePorts: len(state.ServicePorts), LargeClusterMode: large}}

	type sortKey struct {
		key string
		spn proxy.ServicePortName
	}
	keyed := make([]sortKey, 0, len(state.ServicePorts))
	for spn := range state.ServicePorts {
		keyed = append(keyed, sortKey{spn.String() + string(spn.Protocol), spn})
	}
	slices.SortFunc(keyed, func(a, b sortKey) int { return strings.Compare(a.key, b.key) })
	names := make([]proxy.ServicePortName, len(keyed))
	for i := range keyed {
		names[i] = keyed[i].spn
	}
	for spn := range r.cache {
		if _, ok := state.ServicePorts[spn]; !ok {
			delete(r.cache, spn)
		}
	}

	var (
		natServices, natNodePorts                                 []dispatchEntry
		filterServices, filterExternal, filterFW, filterNodePorts []dispatchEntry
		svcChains                                                 []*Chain
	)
	for _, spn := range names {
		sr := r.cache[spn]
		if sr == nil || changed == nil || changed[spn] {
			sr = r.renderServicePort(state.ServicePorts[spn], state.Endpoints[spn])
			r.cache[spn] = sr
			rs.Stats.Rendered++
		}
		rs.Stats.Endpoints += len(state.Endpoints[spn])
		if sr.noLocalInternal {
			rs.Stats.NoLocalEndpointsInternal++
		}
		if sr.noLocalExternal {
			rs.Stats.NoLocalEndpointsExternal++
		}
		natServices = append(natServices, sr.natServices...)
		natNodePorts = append(natNodePorts, sr.natNodePorts...)
		filterServices = append(filterServices, sr.filterServices...)
		filterExternal = append(filterExternal, sr.filterExternal...)
		filterFW = append(filterFW, sr.filterFW...)
		filterNodePorts = append(filterNodePorts, sr.filterNodePorts...)
		svcChains = append(svcChains, sr.natChains...)
	}
	cfg := &r.cfg
	fam := string(cfg.Family)
	var dispatchNAT, dispatchFilter []*Chain
	tree := func(table, root string, entries []dispatchEntry, into *[]*Chain) []string {
		for i := range entries {
			entries[i].seq = i
		}
		top, chains := buildDispatch(fam, table, root, entries)
		*into = append(*into, chains...)
		return top
	}
	natServicesRules := append(tree("nat", ChainServices, natServices, &dispatchNAT), r.nodePortsTail()...)
	natNodePortsRules := tree("nat", ChainNodePorts, natNodePorts, &dispatchNAT)
	filterServicesRules := tree("filter", ChainServices, filterServices, &dispatchFilter)
	filterExternalRules := tree("filter", ChainExternalServices, filterExternal, &dispatchFilter)
	filterFWRules := tree("filter", ChainProxyFirewall, filterFW, &dispatchFilter)
	filterNodePortsRules := tree("filter", ChainNodePorts, filterNodePorts, &dispatchFilter)

	mark := cfg.masqMark()
	rs.NAT = []*Chain{
		{Name: ChainServices, Rules: natServicesRules},
		{Name: ChainNodePorts, Rules: natNodePortsRules},
		{Name: ChainPostrouting, Rules: []string{
			(&rule{}).match("-m", "mark", "!", "--mark", mark+"/"+mark).jump("RETURN").line(),
			(&rule{}).jump("MARK", "--set-xmark", mark+"/0x0").line(),
			(&rule{}).comment("kubernetes service traffic requiring SNAT").jump("MASQUERADE", "--random-fully").line(),
		}},
		{Name: ChainMarkMasq, Rules: []string{(&rule{}).jump("MARK", "--set-xmark", mark+"/"+mark).line()}},
	}
	rs.NAT = append(rs.NAT, dispatchNAT...)
	rs.NAT = append(rs.NAT, svcChains...)

	var forward []string
	if !cfg.ConntrackTCPLiberal {
		invalid := (&rule{}).match("-m", "conntrack", "--ctstate", "INVALID")
		if cfg.NFAcctInvalidDropped != "" {
			invalid.match(nfacctMatch(cfg.NFAcctInvalidDropped)...)
		}
		forward = append(forward, invalid.jump("DROP").line())
	}
	forward = append(forward,
		(&rule{}).comment("kubernetes forwarding rules").match("-m", "mark", "--mark", mark+"/"+mark).jump("ACCEPT").line(),
		(&rule{}).comment("kubernetes forwarding conntrack rule").match("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED").jump("ACCEPT").line(),
	)
	rs.Filter = []*Chain{
		{Name: ChainServices, Rules: filterServicesRules},
		{Name: ChainExternalServices, Rules: filterExternalRules},
		{Name: ChainForward, Rules: forward},
		{Name: ChainNodePorts, Rules: filterNodePortsRules},
		{Name: ChainProxyFirewall, Rules: filterFWRules},
	}
	rs.Filter = append(rs.Filter, dispatchFilter...)
	if !cfg.isIPv6() && cfg.LocalhostNodePorts {
		rs.Filter = append(rs.Filter, &Chain{Name: ChainKubeletFirewall, Rules: []string{
			(&rule{src: "127.0.0.0/8", notSrc: true, dst: "127.0.0.0/8"}).
				comment("block incoming localnet connections").
				match("-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT").
				jump("DROP").line(),
		}})
	}
	return rs
}

// nodePortsTail is the last rule of nat KUBE-SERVICES, sending packets to
// the node's own addresses on to KUBE-NODEPORTS.
func (r *Renderer) nodePortsTail() []string {
	cfg := &r.cfg
	const comment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
	if cfg.NodePortAddresses == nil {
		rl := &rule{}
		if cfg.isIPv6() {
			rl.dst, rl.notDst = "::1/128", true
		} else if !cfg.LocalhostNodePorts {
			rl.dst, rl.notDst = "127.0.0.0/8", true
		}
		return []string{rl.comment(comment).match("-m", "addrtype", "--dst-type", "LOCAL").jump(ChainNodePorts).line()}
	}
	var out []string
	for _, ip := range cfg.NodePortAddresses {
		if ip.IsLoopback() && (cfg.isIPv6() || !cfg.LocalhostNodePorts) {
			continue
		}
		out = append(out, (&rule{dst: hostPrefix(ip)}).comment(comment).jump(ChainNodePorts).line())
	}
	return out
}

// renderServicePort renders the rules of one Service port, following
// kube-proxy's syncProxyRules.
func (r *Renderer) renderServicePort(sp *proxy.ServicePort, eps []*proxy.Endpoint) *serviceRules {
	cfg := &r.cfg
	sr := &serviceRules{}
	name := sp.Name.String()
	proto := strings.ToLower(string(sp.Protocol))
	chains := ChainNamesFor(sp.Name)
	cat := proxy.Categorize(eps, sp, cfg.NodeName, cfg.Zone)

	usesClusterChain := len(cat.Cluster) > 0 && sp.UsesClusterEndpoints()
	usesLocalChain := len(cat.Local) > 0 && sp.UsesLocalEndpoints()

	internalChain, hasInternal := chains.Cluster, cat.HasAny
	if sp.InternalPolicyLocal {
		internalChain = chains.Local
		hasInternal = hasInternal && len(cat.Local) > 0
	}
	externalPolicyChain, hasExternal := chains.Cluster, cat.HasAny
	if sp.ExternalPolicyLocal {
		externalPolicyChain = chains.Local
		hasExternal = hasExternal && len(cat.Local) > 0
	}
	usesExternalChain := cat.HasAny && sp.ExternallyAccessible()
	lbChain := chains.External
	usesFWChain := cat.HasAny && len(sp.LoadBalancerVIPs) > 0 && sp.FirewallEnabled
	if usesFWChain {
		lbChain = chains.Firewall
	}

	var internalTarget, internalComment, externalTarget, externalComment string
	if !cat.HasAny {
		internalTarget, externalTarget = "REJECT", "REJECT"
		internalComment = name + " has no endpoints"
		externalComment = internalComment
	} else {
		if !hasInternal {
			internalTarget, internalComment = "DROP", name+" has no local endpoints"
			sr.noLocalInternal = true
		}
		if !hasExternal {
			externalTarget, externalComment = "DROP", name+" has no local endpoints"
			sr.noLocalExternal = true
		}
	}
	filterVerdict := func(target string) []string {
		if target == "REJECT" {
			if cfg.isIPv6() {
				return []string{"REJECT", "--reject-with", "icmp6-port-unreachable"}
			}
			return []string{"REJECT", "--reject-with", "icmp-port-unreachable"}
		}
		return []string{target}
	}
	dispatch := func(dst netip.Addr, comment, target string) dispatchEntry {
		return dispatchEntry{key: addrKey(dst), kind: keyAddr,
			body: (&rule{dst: hostPrefix(dst), proto: proto}).comment(comment).dport(sp.Port).jump(target).line()}
	}
	verdict := func(dst netip.Addr, comment, target string) dispatchEntry {
		v := filterVerdict(target)
		return dispatchEntry{key: addrKey(dst), kind: keyAddr,
			body: (&rule{dst: hostPrefix(dst), proto: proto}).comment(comment).dport(sp.Port).jump(v[0], v[1:]...).line()}
	}
	portEntry := func(port int, body string) dispatchEntry {
		return dispatchEntry{key: portKey(proto, port), kind: keyPort, body: body}
	}

	// ClusterIP.
	if hasInternal {
		sr.natServices = append(sr.natServices, dispatch(sp.ClusterIP, name+" cluster IP", internalChain))
	} else {
		sr.filterServices = append(sr.filterServices, verdict(sp.ClusterIP, internalComment, internalTarget))
	}
	// External IPs.
	for _, ip := range sp.ExternalIPs {
		if cat.HasAny {
			sr.natServices = append(sr.natServices, dispatch(ip, name+" external IP", chains.External))
		}
		if !hasExternal {
			sr.filterExternal = append(sr.filterExternal, verdict(ip, externalComment, externalTarget))
		}
	}
	// Load-balancer IPs.
	for _, ip := range sp.LoadBalancerVIPs {
		if cat.HasAny {
			sr.natServices = append(sr.natServices, dispatch(ip, name+" loadbalancer IP", lbChain))
		}
		if usesFWChain {
			sr.filterFW = append(sr.filterFW, verdict(ip, name+" traffic not accepted by "+chains.Firewall, "DROP"))
		}
	}
	if !hasExternal {
		for _, ip := range sp.LoadBalancerVIPs {
			sr.filterExternal = append(sr.filterExternal, verdict(ip, externalComment, externalTarget))
		}
	}
	// NodePort.
	if sp.NodePort != 0 {
		if cat.HasAny {
			if cfg.LocalhostNodePorts && !cfg.isIPv6() && cfg.NFAcctLocalhostNodePorts != "" {
				sr.natNodePorts = append(sr.natNodePorts, portEntry(sp.NodePort,
					(&rule{dst: "127.0.0.0/8", proto: proto}).comment(name).match("-m", proto, "--dport", itoa(sp.NodePort)).
						match(nfacctMatch(cfg.NFAcctLocalhostNodePorts)...).jump(chains.External).line()))
			}
			sr.natNodePorts = append(sr.natNodePorts, portEntry(sp.NodePort,
				(&rule{proto: proto}).comment(name).match("-m", proto, "--dport", itoa(sp.NodePort)).jump(chains.External).line()))
		}
		if !hasExternal {
			v := filterVerdict(externalTarget)
			sr.filterExternal = append(sr.filterExternal, portEntry(sp.NodePort,
				(&rule{proto: proto}).comment(externalComment).match("-m", "addrtype", "--dst-type", "LOCAL").
					match("-m", proto, "--dport", itoa(sp.NodePort)).jump(v[0], v[1:]...).line()))
		}
	}
	// Health-check node port.
	if sp.HealthCheckNodePort != 0 {
		sr.filterNodePorts = append(sr.filterNodePorts, dispatchEntry{key: portKey("tcp", sp.HealthCheckNodePort), kind: keyPort,
			body: (&rule{proto: "tcp"}).comment(name+" health check node port").match("-m", "tcp", "--dport", itoa(sp.HealthCheckNodePort)).jump("ACCEPT").line()})
	}

	// Chains of the Service port.
	var svcRules = map[string][]string{}
	var order []string
	add := func(chain string, body string) {
		if _, ok := svcRules[chain]; !ok {
			order = append(order, chain)
		}
		svcRules[chain] = append(svcRules[chain], body)
	}
	declare := func(chain string) {
		if _, ok := svcRules[chain]; !ok {
			order = append(order, chain)
			svcRules[chain] = nil
		}
	}

	if hasInternal {
		masq := &rule{dst: hostPrefix(sp.ClusterIP), proto: proto}
		if cfg.MasqueradeAll {
			declare(internalChain)
			add(internalChain, masq.comment(name+" cluster IP").dport(sp.Port).jump(ChainMarkMasq).line())
		} else if cfg.LocalTraffic.Implemented() {
			masq.applyArgs(cfg.LocalTraffic.IfNotLocal)
			m := masq.matches
			masq.matches = nil
			masq.comment(name + " cluster IP").dport(sp.Port)
			masq.matches = append(masq.matches, m...)
			declare(internalChain)
			add(internalChain, masq.jump(ChainMarkMasq).line())
		}
	}

	if usesExternalChain {
		ext := chains.External
		declare(ext)
		if !sp.ExternalPolicyLocal {
			add(ext, (&rule{}).comment("masquerade traffic for "+name+" external destinations").jump(ChainMarkMasq).line())
		} else {
			if cfg.LocalTraffic.Implemented() {
				rl := (&rule{}).applyArgs(cfg.LocalTraffic.IfLocal)
				m := rl.matches
				rl.matches = nil
				rl.comment("pod traffic for " + name + " external destinations")
				rl.matches = append(rl.matches, m...)
				add(ext, rl.jump(chains.Cluster).line())
			}
			add(ext, (&rule{}).comment("masquerade LOCAL traffic for "+name+" external destinations").
				match("-m", "addrtype", "--src-type", "LOCAL").jump(ChainMarkMasq).line())
			add(ext, (&rule{}).comment("route LOCAL traffic for "+name+" external destinations").
				match("-m", "addrtype", "--src-type", "LOCAL").jump(chains.Cluster).line())
		}
		if hasExternal {
			add(ext, (&rule{}).jump(externalPolicyChain).line())
		}
	}

	if usesFWChain {
		fw := chains.Firewall
		declare(fw)
		allowFromNode := false
		for _, cidr := range sp.LoadBalancerSourceRanges {
			add(fw, (&rule{src: cidr.String()}).comment(name+" loadbalancer IP").jump(chains.External).line())
			if len(cfg.NodeIPs) > 0 && cidr.Contains(cfg.NodeIPs[0]) {
				allowFromNode = true
			}
		}
		if allowFromNode {
			for _, ip := range sp.LoadBalancerVIPs {
				add(fw, (&rule{src: hostPrefix(ip)}).comment(name+" loadbalancer IP").jump(chains.External).line())
			}
		}
		add(fw, (&rule{}).comment("other traffic to "+name+" will be dropped by KUBE-PROXY-FIREWALL").line())
	}

	if usesClusterChain {
		declare(chains.Cluster)
		for _, body := range r.serviceToEndpoints(sp, cat.Cluster) {
			add(chains.Cluster, body)
		}
	}
	if usesLocalChain {
		declare(chains.Local)
		for _, body := range r.serviceToEndpoints(sp, cat.Local) {
			add(chains.Local, body)
		}
	}
	for _, ep := range cat.Reachable {
		sep := EndpointChainName(sp.Name, ep.String())
		declare(sep)
		first := &rule{src: hostPrefix(ep.IP)}
		if !r.large {
			first.comment(name)
		}
		add(sep, first.jump(ChainMarkMasq).line())
		dnat := &rule{proto: proto}
		if !r.large {
			dnat.comment(name)
		}
		if sp.SessionAffinityClientIP {
			dnat.match("-m", "recent", "--set", "--name", sep, "--mask", r.recentMask(), "--rsource")
		}
		dnat.match("-m", proto)
		add(sep, dnat.jump("DNAT", "--to-destination", ep.String()).line())
	}

	for _, c := range order {
		sr.natChains = append(sr.natChains, &Chain{Name: c, Rules: svcRules[c]})
	}
	return sr
}

// serviceToEndpoints renders a KUBE-SVC/KUBE-SVL chain: affinity checks
// first, then one statistic rule per endpoint, the last unconditional.
func (r *Renderer) serviceToEndpoints(sp *proxy.ServicePort, eps []*proxy.Endpoint) []string {
	name := sp.Name.String()
	var out []string
	if sp.SessionAffinityClientIP {
		for _, ep := range eps {
			sep := EndpointChainName(sp.Name, ep.String())
			rl := &rule{}
			if !r.large {
				rl.comment(name + " -> " + ep.String())
			}
			rl.match("-m", "recent", "--rcheck", "--seconds", itoa(sp.StickyMaxAgeSeconds), "--reap", "--name", sep, "--mask", r.recentMask(), "--rsource")
			out = append(out, rl.jump(sep).line())
		}
	}
	for i, ep := range eps {
		sep := EndpointChainName(sp.Name, ep.String())
		rl := &rule{}
		if !r.large {
			rl.comment(name + " -> " + ep.String())
		}
		if i < len(eps)-1 {
			rl.match("-m", "statistic", "--mode", "random", "--probability", probability(len(eps)-i))
		}
		out = append(out, rl.jump(sep).line())
	}
	return out
}

func (r *Renderer) recentMask() string {
	if r.cfg.isIPv6() {
		return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	}
	return "255.255.255.255"
}

func itoa(i int) string { return fmt.Sprint(i) }

// nfacctMatch counts packets in the nfacct object name. iptables-save
// prints two spaces before the name (libxt_nfacct), and rules are kept in
// iptables-save's form.
func nfacctMatch(name string) []string {
	return []string{"-m", "nfacct", "--nfacct-name", " " + name}
}

// Payload renders the whole ruleset as iptables-restore input (both
// tables), as a full sync into empty tables would write it.
func (rs *Ruleset) Payload() []byte {
	var b strings.Builder
	for _, t := range []struct {
		name   string
		chains []*Chain
	}{{"filter", rs.Filter}, {"nat", rs.NAT}} {
		b.WriteString("*" + t.name + "\n")
		for _, c := range t.chains {
			b.WriteString(":" + c.Name + " - [0:0]\n")
		}
		for _, c := range t.chains {
			for _, r := range c.Rules {
				b.WriteString("-A " + c.Name + " " + r + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return []byte(b.String())
}
