package rules

import (
	"bytes"
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
// family: every chain iptproxy owns, in a stable order. A ruleset with a
// Delta holds only the chains that changed (see Delta).
type Ruleset struct {
	Filter []*Chain
	NAT    []*Chain
	Stats  Stats
	// Generation numbers the renders of one Renderer, from 1.
	Generation uint64
	// Delta, when set, marks a ruleset rendered as a change from the
	// render numbered Delta.Since.
	Delta *Delta
}

// Delta describes a ruleset rendered as a change from an earlier render of
// the same Renderer. Filter and NAT then hold only the chains that may
// differ from that render's (re-rendered Service ports, rebuilt dispatch
// chains, the top-level chains); every other chain of that render is still
// wanted, unchanged, except the chains named Gone, which are wanted no
// more. Applying it needs what that render left in the kernel: see
// planner.Applied.
type Delta struct {
	Since               uint64
	GoneFilter, GoneNAT []string
}

// Stats summarizes a render, for metrics and logs.
type Stats struct {
	ServicePorts int
	Endpoints    int
	// NoLocalEndpointsInternal/External count Service ports with a Local
	// policy and no local endpoint.
	NoLocalEndpointsInternal, NoLocalEndpointsExternal int
	// Rendered is the number of Service ports whose rules were rendered
	// afresh.
	Rendered int
	// LargeClusterMode is true when per-endpoint comments were left out.
	LargeClusterMode bool
	// FilterRules and NATRules count the rules of the whole desired
	// tables (also of a ruleset with a Delta).
	FilterRules, NATRules int
}

// Shared chains built as dispatch trees, indexing serviceRules.entries and
// Renderer.trees.
const (
	treeNATServices = iota
	treeNATNodePorts
	treeFilterServices
	treeFilterExternal
	treeFilterFirewall
	treeFilterNodePorts
	numTrees
)

// serviceRules are the rules one Service port contributes.
type serviceRules struct {
	natChains []*Chain
	// entries are the port's rules in the shared chains, per tree.
	entries                          [numTrees][]dispatchEntry
	noLocalInternal, noLocalExternal bool
}

// cachedPort is what the renderer keeps of one Service port between
// renders: not its chains' rules (the kernel has them, and the planner
// their hashes) but their names, so that a later render knows which are
// gone, its entries in the dispatch trees, and its counts.
type cachedPort struct {
	spn proxy.ServicePortName
	// sortKey orders Service ports as kube-proxy lists them.
	sortKey                          string
	chains                           []string
	rules                            int
	entries                          [numTrees][]dispatchEntry
	endpoints                        int
	noLocalInternal, noLocalExternal bool
}

// Renderer turns the model into rules. It keeps each Service port's chain
// names and the dispatch trees between renders, so that a render after a
// few Services changed costs in proportion to them. It is not safe for
// concurrent use.
type Renderer struct {
	cfg   Config
	cache map[proxy.ServicePortName]*cachedPort
	// order holds the cached ports sorted by sortKey.
	order []*cachedPort
	trees [numTrees]*dispatchState
	large bool
	// generation numbers the renders; valid is false until a render from
	// scratch has filled the cache (and after SetConfig).
	generation uint64
	valid      bool
	// endpoints is the number of endpoints of the cached ports.
	endpoints int
}

// endpointCount returns the number of endpoints of state's Service ports:
// from the cache and the changed ports when the cache is valid, else by
// counting them all.
func (r *Renderer) endpointCount(state *proxy.State, changed map[proxy.ServicePortName]bool) int {
	if !r.valid || changed == nil {
		return state.EndpointCount()
	}
	n := r.endpoints
	for spn := range changed {
		if cp := r.cache[spn]; cp != nil {
			n -= cp.endpoints
		}
		if _, ok := state.ServicePorts[spn]; ok {
			n += len(state.Endpoints[spn])
		}
	}
	return n
}

// NewRenderer returns a renderer for cfg.
func NewRenderer(cfg Config) *Renderer {
	return &Renderer{cfg: cfg}
}

// Config returns the configuration the renderer uses.
func (r *Renderer) Config() Config { return r.cfg }

// SetConfig replaces the configuration; the next Render re-renders
// everything.
func (r *Renderer) SetConfig(cfg Config) {
	r.cfg = cfg
	r.valid = false
}

// portSortKey is the key kube-proxy's order of Service ports follows.
func portSortKey(spn proxy.ServicePortName) string {
	return spn.String() + string(spn.Protocol)
}

// Generation returns the number of the last render (0 before the first).
func (r *Renderer) Generation() uint64 { return r.generation }

// newCachedPort renders a Service port; it returns the port's chains and
// what the cache keeps of them.
func (r *Renderer) newCachedPort(spn proxy.ServicePortName, sortKey string, state *proxy.State) (*cachedPort, []*Chain) {
	eps := state.Endpoints[spn]
	sr := r.renderServicePort(state.ServicePorts[spn], eps)
	cp := &cachedPort{spn: spn, sortKey: sortKey, endpoints: len(eps),
		noLocalInternal: sr.noLocalInternal, noLocalExternal: sr.noLocalExternal,
		chains: make([]string, len(sr.natChains))}
	for i, c := range sr.natChains {
		cp.chains[i] = c.Name
		cp.rules += len(c.Rules)
	}
	for t := range sr.entries {
		es := slices.Clip(sr.entries[t])
		for i := range es {
			es[i].svc, es[i].seq = sortKey, i
		}
		cp.entries[t] = es
	}
	return cp, sr.natChains
}

// Render returns the desired rules for state. changed lists the Service
// ports whose rules must be rendered afresh (those added, changed or
// removed since the last Render); nil renders everything. With changed,
// and a cache from an earlier render, the result carries a Delta and holds
// only the chains that may have changed.
func (r *Renderer) Render(state *proxy.State, changed map[proxy.ServicePortName]bool) *Ruleset {
	large := r.endpointCount(state, changed) > largeClusterEndpointsThreshold
	scratch := changed == nil || large != r.large || !r.valid
	r.large = large
	r.generation++
	rs := &Ruleset{Generation: r.generation, Stats: Stats{ServicePorts: len(state.ServicePorts), LargeClusterMode: large}}
	var svcChains []*Chain
	if !scratch {
		rs.Delta = &Delta{Since: r.generation - 1}
		rs.Stats.Rendered, svcChains = r.update(state, changed, rs.Delta)
		if len(r.cache) != len(state.ServicePorts) {
			// changed missed a Service port: never guess.
			scratch, rs.Delta = true, nil
		}
	}
	if scratch {
		rs.Stats.Rendered, svcChains = r.fill(state)
	}

	for _, cp := range r.order {
		rs.Stats.Endpoints += cp.endpoints
		rs.Stats.NATRules += cp.rules
		if cp.noLocalInternal {
			rs.Stats.NoLocalEndpointsInternal++
		}
		if cp.noLocalExternal {
			rs.Stats.NoLocalEndpointsExternal++
		}
	}
	r.endpoints = rs.Stats.Endpoints

	var dispatchNAT, dispatchFilter []*Chain
	var top [numTrees][]string
	for t, d := range r.trees {
		rules, chains, fresh, gone := d.build(rs.Delta != nil)
		top[t] = rules
		n := 0
		for _, c := range chains {
			n += len(c.Rules)
		}
		if rs.Delta != nil {
			chains = fresh
		}
		if d.table == "nat" {
			dispatchNAT = append(dispatchNAT, chains...)
			rs.Stats.NATRules += n
		} else {
			dispatchFilter = append(dispatchFilter, chains...)
			rs.Stats.FilterRules += n
		}
		if rs.Delta == nil {
			continue
		}
		if d.table == "nat" {
			rs.Delta.GoneNAT = append(rs.Delta.GoneNAT, gone...)
		} else {
			rs.Delta.GoneFilter = append(rs.Delta.GoneFilter, gone...)
		}
	}

	cfg := &r.cfg
	mark := cfg.masqMark()
	base := []*Chain{
		{Name: ChainServices, Rules: append(slices.Clip(top[treeNATServices]), r.nodePortsTail()...)},
		{Name: ChainNodePorts, Rules: top[treeNATNodePorts]},
		{Name: ChainPostrouting, Rules: []string{
			(&rule{}).match("-m", "mark", "!", "--mark", mark+"/"+mark).jump("RETURN").line(),
			(&rule{}).jump("MARK", "--set-xmark", mark+"/0x0").line(),
			(&rule{}).comment("kubernetes service traffic requiring SNAT").jump("MASQUERADE", "--random-fully").line(),
		}},
		{Name: ChainMarkMasq, Rules: []string{(&rule{}).jump("MARK", "--set-xmark", mark+"/"+mark).line()}},
	}
	rs.NAT = make([]*Chain, 0, len(base)+len(dispatchNAT)+len(svcChains))
	rs.NAT = append(rs.NAT, base...)
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
	baseFilter := []*Chain{
		{Name: ChainServices, Rules: top[treeFilterServices]},
		{Name: ChainExternalServices, Rules: top[treeFilterExternal]},
		{Name: ChainForward, Rules: forward},
		{Name: ChainNodePorts, Rules: top[treeFilterNodePorts]},
		{Name: ChainProxyFirewall, Rules: top[treeFilterFirewall]},
	}
	if !cfg.isIPv6() && cfg.LocalhostNodePorts {
		baseFilter = append(baseFilter, &Chain{Name: ChainKubeletFirewall, Rules: []string{
			(&rule{src: "127.0.0.0/8", notSrc: true, dst: "127.0.0.0/8"}).
				comment("block incoming localnet connections").
				match("-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT").
				jump("DROP").line(),
		}})
	}
	rs.Filter = append(baseFilter, dispatchFilter...)
	for _, c := range base {
		rs.Stats.NATRules += len(c.Rules)
	}
	for _, c := range baseFilter {
		rs.Stats.FilterRules += len(c.Rules)
	}
	return rs
}

// fill renders every Service port from scratch and rebuilds the cache and
// the trees. It returns the number of ports rendered and their chains, in
// kube-proxy's order.
func (r *Renderer) fill(state *proxy.State) (int, []*Chain) {
	type rendered struct {
		cp     *cachedPort
		chains []*Chain
	}
	ports := make([]rendered, 0, len(state.ServicePorts))
	for spn := range state.ServicePorts {
		cp, chains := r.newCachedPort(spn, portSortKey(spn), state)
		ports = append(ports, rendered{cp, chains})
	}
	slices.SortFunc(ports, func(a, b rendered) int { return strings.Compare(a.cp.sortKey, b.cp.sortKey) })
	r.cache = make(map[proxy.ServicePortName]*cachedPort, len(ports))
	r.order = make([]*cachedPort, len(ports))
	var all []*Chain
	for i, p := range ports {
		r.cache[p.cp.spn] = p.cp
		r.order[i] = p.cp
		all = append(all, p.chains...)
	}
	fam := string(r.cfg.Family)
	for t := range r.trees {
		var entries []dispatchEntry
		for _, cp := range r.order {
			entries = append(entries, cp.entries[t]...)
		}
		slices.SortFunc(entries, func(a, b dispatchEntry) int { return compareSorted(&a, &b) })
		table, root := treeChain(t)
		r.trees[t] = &dispatchState{family: fam, table: table, root: root, entries: entries}
	}
	r.valid = true
	return len(r.order), all
}

// treeChain returns the table and shared chain of a tree.
func treeChain(t int) (table, root string) {
	switch t {
	case treeNATServices:
		return "nat", ChainServices
	case treeNATNodePorts:
		return "nat", ChainNodePorts
	case treeFilterServices:
		return "filter", ChainServices
	case treeFilterExternal:
		return "filter", ChainExternalServices
	case treeFilterFirewall:
		return "filter", ChainProxyFirewall
	default:
		return "filter", ChainNodePorts
	}
}

// update re-renders the changed Service ports, updating the cache, the
// order and the trees' entries, and records the chains that are gone in
// delta. It returns the number of ports rendered and their chains.
func (r *Renderer) update(state *proxy.State, changed map[proxy.ServicePortName]bool, delta *Delta) (int, []*Chain) {
	rendered := 0
	var fresh []*Chain
	for spn := range changed {
		old := r.cache[spn]
		var cp *cachedPort
		if _, ok := state.ServicePorts[spn]; ok {
			var chains []*Chain
			cp, chains = r.newCachedPort(spn, portSortKey(spn), state)
			fresh = append(fresh, chains...)
			rendered++
		}
		var oldChains, newChains []string
		var oldEntries, newEntries [numTrees][]dispatchEntry
		if old != nil {
			oldChains, oldEntries = old.chains, old.entries
		}
		if cp != nil {
			newChains, newEntries = cp.chains, cp.entries
		}
		switch {
		case old == nil && cp == nil:
			continue
		case cp == nil:
			delete(r.cache, spn)
			i, _ := slices.BinarySearchFunc(r.order, old.sortKey, func(c *cachedPort, k string) int { return strings.Compare(c.sortKey, k) })
			r.order = slices.Delete(r.order, i, i+1)
		case old == nil:
			r.cache[spn] = cp
			i, _ := slices.BinarySearchFunc(r.order, cp.sortKey, func(c *cachedPort, k string) int { return strings.Compare(c.sortKey, k) })
			r.order = slices.Insert(r.order, i, cp)
		default:
			*old = *cp // keep the pointer in order
		}
		for _, name := range oldChains {
			if !slices.Contains(newChains, name) {
				delta.GoneNAT = append(delta.GoneNAT, name)
			}
		}
		for t, d := range r.trees {
			if sameEntries(oldEntries[t], newEntries[t]) {
				continue
			}
			for _, e := range oldEntries[t] {
				d.remove(e)
			}
			for _, e := range newEntries[t] {
				d.insert(e)
			}
		}
	}
	return rendered, fresh
}

// sameEntries reports whether two lists of a port's entries are equal.
func sameEntries(a, b []dispatchEntry) bool {
	return slices.EqualFunc(a, b, func(x, y dispatchEntry) bool {
		return x.kind == y.kind && x.body == y.body && bytes.Equal(x.key, y.key)
	})
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
		sr.entries[treeNATServices] = append(sr.entries[treeNATServices], dispatch(sp.ClusterIP, name+" cluster IP", internalChain))
	} else {
		sr.entries[treeFilterServices] = append(sr.entries[treeFilterServices], verdict(sp.ClusterIP, internalComment, internalTarget))
	}
	// External IPs.
	for _, ip := range sp.ExternalIPs {
		if cat.HasAny {
			sr.entries[treeNATServices] = append(sr.entries[treeNATServices], dispatch(ip, name+" external IP", chains.External))
		}
		if !hasExternal {
			sr.entries[treeFilterExternal] = append(sr.entries[treeFilterExternal], verdict(ip, externalComment, externalTarget))
		}
	}
	// Load-balancer IPs.
	for _, ip := range sp.LoadBalancerVIPs {
		if cat.HasAny {
			sr.entries[treeNATServices] = append(sr.entries[treeNATServices], dispatch(ip, name+" loadbalancer IP", lbChain))
		}
		if usesFWChain {
			sr.entries[treeFilterFirewall] = append(sr.entries[treeFilterFirewall], verdict(ip, name+" traffic not accepted by "+chains.Firewall, "DROP"))
		}
	}
	if !hasExternal {
		for _, ip := range sp.LoadBalancerVIPs {
			sr.entries[treeFilterExternal] = append(sr.entries[treeFilterExternal], verdict(ip, externalComment, externalTarget))
		}
	}
	// NodePort.
	if sp.NodePort != 0 {
		if cat.HasAny {
			if cfg.LocalhostNodePorts && !cfg.isIPv6() && cfg.NFAcctLocalhostNodePorts != "" {
				sr.entries[treeNATNodePorts] = append(sr.entries[treeNATNodePorts], portEntry(sp.NodePort,
					(&rule{dst: "127.0.0.0/8", proto: proto}).comment(name).match("-m", proto, "--dport", itoa(sp.NodePort)).
						match(nfacctMatch(cfg.NFAcctLocalhostNodePorts)...).jump(chains.External).line()))
			}
			sr.entries[treeNATNodePorts] = append(sr.entries[treeNATNodePorts], portEntry(sp.NodePort,
				(&rule{proto: proto}).comment(name).match("-m", proto, "--dport", itoa(sp.NodePort)).jump(chains.External).line()))
		}
		if !hasExternal {
			v := filterVerdict(externalTarget)
			sr.entries[treeFilterExternal] = append(sr.entries[treeFilterExternal], portEntry(sp.NodePort,
				(&rule{proto: proto}).comment(externalComment).match("-m", "addrtype", "--dst-type", "LOCAL").
					match("-m", proto, "--dport", itoa(sp.NodePort)).jump(v[0], v[1:]...).line()))
		}
	}
	// Health-check node port.
	if sp.HealthCheckNodePort != 0 {
		sr.entries[treeFilterNodePorts] = append(sr.entries[treeFilterNodePorts], dispatchEntry{key: portKey("tcp", sp.HealthCheckNodePort), kind: keyPort,
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
	sr.pack()
	return sr
}

// pack moves the bodies of the Service port's dispatch entries, which the
// renderer keeps until the port changes, into one string.
func (sr *serviceRules) pack() {
	size := 0
	for _, es := range sr.entries {
		for _, e := range es {
			size += len(e.body)
		}
	}
	var b strings.Builder
	b.Grow(size)
	for _, es := range sr.entries {
		for _, e := range es {
			b.WriteString(e.body)
		}
	}
	text, off := b.String(), 0
	for _, es := range sr.entries {
		for i := range es {
			n := len(es[i].body)
			es[i].body = text[off : off+n]
			off += n
		}
	}
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
