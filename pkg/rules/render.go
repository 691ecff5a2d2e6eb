package rules

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
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
type Chain = iptables.Chain

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
			es[i].svc, es[i].seq = sortKey, int32(i)
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

	r.countPorts(&rs.Stats)
	top, dispatchNAT, dispatchFilter := r.buildTrees(rs)
	base := r.baseNAT(top)
	rs.NAT = make([]*Chain, 0, len(base)+len(dispatchNAT)+len(svcChains))
	rs.NAT = append(rs.NAT, base...)
	rs.NAT = append(rs.NAT, dispatchNAT...)
	rs.NAT = append(rs.NAT, svcChains...)
	baseFilter := r.baseFilter(top)
	rs.Filter = append(baseFilter, dispatchFilter...)
	for _, c := range base {
		rs.Stats.NATRules += len(c.Rules)
	}
	for _, c := range baseFilter {
		rs.Stats.FilterRules += len(c.Rules)
	}
	return rs
}

// countPorts adds the cached ports' endpoints, rules and ports without
// local endpoints to st, and remembers the endpoint count.
func (r *Renderer) countPorts(st *Stats) {
	for _, cp := range r.order {
		st.Endpoints += cp.endpoints
		st.NATRules += cp.rules
		if cp.noLocalInternal {
			st.NoLocalEndpointsInternal++
		}
		if cp.noLocalExternal {
			st.NoLocalEndpointsExternal++
		}
	}
	r.endpoints = st.Endpoints
}

// buildTrees builds the dispatch trees: it returns each tree's rules in
// its shared chain, and the dispatch chains of nat and filter (with a
// Delta, only the fresh ones, the gone ones recorded in it), counting
// their rules in rs.Stats.
func (r *Renderer) buildTrees(rs *Ruleset) (top [numTrees][]iptables.Rule, nat, filter []*Chain) {
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
			nat = append(nat, chains...)
			rs.Stats.NATRules += n
		} else {
			filter = append(filter, chains...)
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
	return top, nat, filter
}

// baseNAT returns nat's shared chains: KUBE-SERVICES and KUBE-NODEPORTS
// (the roots of their trees), KUBE-POSTROUTING and KUBE-MARK-MASQ.
func (r *Renderer) baseNAT(top [numTrees][]iptables.Rule) []*Chain {
	mark := r.cfg.masqMark()
	return []*Chain{
		{Name: ChainServices, Rules: append(slices.Clip(top[treeNATServices]), r.nodePortsTail()...)},
		{Name: ChainNodePorts, Rules: top[treeNATNodePorts]},
		{Name: ChainPostrouting, Rules: []iptables.Rule{
			(&iptables.RuleBuilder{}).Match("-m", "mark", "!", "--mark", mark+"/"+mark).Jump("RETURN").Rule(),
			(&iptables.RuleBuilder{}).Jump("MARK", "--set-xmark", mark+"/0x0").Rule(),
			(&iptables.RuleBuilder{}).Comment("kubernetes service traffic requiring SNAT").Jump("MASQUERADE", "--random-fully").Rule(),
		}},
		{Name: ChainMarkMasq, Rules: []iptables.Rule{(&iptables.RuleBuilder{}).Jump("MARK", "--set-xmark", mark+"/"+mark).Rule()}},
	}
}

// baseFilter returns filter's shared chains: the roots of its trees,
// KUBE-FORWARD and, for localhost node ports, kubelet's KUBE-FIREWALL.
func (r *Renderer) baseFilter(top [numTrees][]iptables.Rule) []*Chain {
	cfg := &r.cfg
	mark := cfg.masqMark()
	var forward []iptables.Rule
	if !cfg.ConntrackTCPLiberal {
		invalid := (&iptables.RuleBuilder{}).Match("-m", "conntrack", "--ctstate", "INVALID")
		if cfg.NFAcctInvalidDropped != "" {
			invalid.Match(nfacctMatch(cfg.NFAcctInvalidDropped)...)
		}
		forward = append(forward, invalid.Jump("DROP").Rule())
	}
	forward = append(forward,
		(&iptables.RuleBuilder{}).Comment("kubernetes forwarding rules").Match("-m", "mark", "--mark", mark+"/"+mark).Jump("ACCEPT").Rule(),
		(&iptables.RuleBuilder{}).Comment("kubernetes forwarding conntrack rule").Match("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED").Jump("ACCEPT").Rule(),
	)
	chains := []*Chain{
		{Name: ChainServices, Rules: top[treeFilterServices]},
		{Name: ChainExternalServices, Rules: top[treeFilterExternal]},
		{Name: ChainForward, Rules: forward},
		{Name: ChainNodePorts, Rules: top[treeFilterNodePorts]},
		{Name: ChainProxyFirewall, Rules: top[treeFilterFirewall]},
	}
	if !cfg.isIPv6() && cfg.LocalhostNodePorts {
		chains = append(chains, &Chain{Name: ChainKubeletFirewall, Rules: []iptables.Rule{
			(&iptables.RuleBuilder{Src: "127.0.0.0/8", NotSrc: true, Dst: "127.0.0.0/8"}).
				Comment("block incoming localnet connections").
				Match("-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT").
				Jump("DROP").Rule(),
		}})
	}
	return chains
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
func (r *Renderer) nodePortsTail() []iptables.Rule {
	cfg := &r.cfg
	const comment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
	if cfg.NodePortAddresses == nil {
		rl := &iptables.RuleBuilder{}
		if cfg.isIPv6() {
			rl.Dst, rl.NotDst = "::1/128", true
		} else if !cfg.LocalhostNodePorts {
			rl.Dst, rl.NotDst = "127.0.0.0/8", true
		}
		return []iptables.Rule{rl.Comment(comment).Match("-m", "addrtype", "--dst-type", "LOCAL").Jump(ChainNodePorts).Rule()}
	}
	var out []iptables.Rule
	for _, ip := range cfg.NodePortAddresses {
		if ip.IsLoopback() && (cfg.isIPv6() || !cfg.LocalhostNodePorts) {
			continue
		}
		out = append(out, (&iptables.RuleBuilder{Dst: iptables.HostPrefix(ip)}).Comment(comment).Jump(ChainNodePorts).Rule())
	}
	return out
}

// renderServicePort renders the rules of one Service port, following
// kube-proxy's syncProxyRules: its entries in the shared dispatch chains,
// then its own chains (the masquerade rule of the internal chain, EXT, FW,
// SVC/SVL and the endpoints' SEP chains).
func (r *Renderer) renderServicePort(sp *proxy.ServicePort, eps []*proxy.Endpoint) *serviceRules {
	cfg := &r.cfg
	pol := newPortPolicy(sp, proxy.Categorize(eps, sp, cfg.NodeName, cfg.Zone), cfg.isIPv6())
	sr := &serviceRules{noLocalInternal: pol.noLocalInternal, noLocalExternal: pol.noLocalExternal}
	r.clusterIPEntries(sr, pol)
	r.externalIPEntries(sr, pol)
	r.loadBalancerEntries(sr, pol)
	r.nodePortEntries(sr, pol)
	var pc portChains
	r.internalMasquerade(&pc, pol)
	r.externalChain(&pc, pol)
	r.firewallChain(&pc, pol)
	r.endpointChains(&pc, pol)
	sr.natChains = pc.chains
	sr.pack()
	return sr
}

// portPolicy is what kube-proxy decides for one Service port before it
// writes a rule: which of the port's chains exist, where internal and
// external traffic go, and the verdict for traffic with nowhere to go.
type portPolicy struct {
	sp          *proxy.ServicePort
	name, proto string
	ipv6        bool
	chains      ServiceChainNames
	cat         proxy.Categorized

	usesClusterChain, usesLocalChain, usesExternalChain, usesFWChain bool
	// hasInternal and hasExternal are false when the policy's endpoints
	// are missing; internalTarget and externalTarget (REJECT or DROP)
	// and their comments say what happens then.
	hasInternal, hasExternal           bool
	internalChain, externalPolicyChain string
	lbChain                            string
	internalTarget, internalComment    string
	externalTarget, externalComment    string
	noLocalInternal, noLocalExternal   bool
}

func newPortPolicy(sp *proxy.ServicePort, cat proxy.Categorized, ipv6 bool) *portPolicy {
	p := &portPolicy{sp: sp, name: sp.Name.String(), proto: strings.ToLower(string(sp.Protocol)), ipv6: ipv6,
		chains: ChainNamesFor(sp.Name), cat: cat}
	p.usesClusterChain = len(cat.Cluster) > 0 && sp.UsesClusterEndpoints()
	p.usesLocalChain = len(cat.Local) > 0 && sp.UsesLocalEndpoints()
	p.internalChain, p.hasInternal = p.chains.Cluster, cat.HasAny
	if sp.InternalPolicyLocal {
		p.internalChain = p.chains.Local
		p.hasInternal = p.hasInternal && len(cat.Local) > 0
	}
	p.externalPolicyChain, p.hasExternal = p.chains.Cluster, cat.HasAny
	if sp.ExternalPolicyLocal {
		p.externalPolicyChain = p.chains.Local
		p.hasExternal = p.hasExternal && len(cat.Local) > 0
	}
	p.usesExternalChain = cat.HasAny && sp.ExternallyAccessible()
	p.usesFWChain = cat.HasAny && len(sp.LoadBalancerVIPs) > 0 && sp.FirewallEnabled
	p.lbChain = p.chains.External
	if p.usesFWChain {
		p.lbChain = p.chains.Firewall
	}
	if !cat.HasAny {
		p.internalTarget, p.externalTarget = "REJECT", "REJECT"
		p.internalComment = p.name + " has no endpoints"
		p.externalComment = p.internalComment
		return p
	}
	if !p.hasInternal {
		p.internalTarget, p.internalComment = "DROP", p.name+" has no local endpoints"
		p.noLocalInternal = true
	}
	if !p.hasExternal {
		p.externalTarget, p.externalComment = "DROP", p.name+" has no local endpoints"
		p.noLocalExternal = true
	}
	return p
}

// verdict returns the filter target and arguments for a REJECT or DROP.
func (p *portPolicy) verdict(target string) []string {
	if target != "REJECT" {
		return []string{target}
	}
	if p.ipv6 {
		return []string{"REJECT", "--reject-with", "icmp6-port-unreachable"}
	}
	return []string{"REJECT", "--reject-with", "icmp-port-unreachable"}
}

// toAddr is a dispatch entry for the port on dst, jumping to target (a
// chain, or a verdict with its arguments).
func (p *portPolicy) toAddr(dst netip.Addr, comment string, target ...string) dispatchEntry {
	return dispatchEntry{key: addrKey(dst), kind: keyAddr,
		body: (&iptables.RuleBuilder{Dst: iptables.HostPrefix(dst), Proto: p.proto}).Comment(comment).DPort(p.sp.Port).Jump(target[0], target[1:]...).Rule()}
}

// toPort is a dispatch entry for a node port.
func toPort(proto string, port int, rule iptables.Rule) dispatchEntry {
	return dispatchEntry{key: portKey(proto, port), kind: keyPort, body: rule}
}

func (sr *serviceRules) add(tree int, e dispatchEntry) {
	sr.entries[tree] = append(sr.entries[tree], e)
}

// clusterIPEntries dispatches the ClusterIP to the internal chain, or
// rejects or drops it in filter.
func (r *Renderer) clusterIPEntries(sr *serviceRules, p *portPolicy) {
	if p.hasInternal {
		sr.add(treeNATServices, p.toAddr(p.sp.ClusterIP, p.name+" cluster IP", p.internalChain))
	} else {
		sr.add(treeFilterServices, p.toAddr(p.sp.ClusterIP, p.internalComment, p.verdict(p.internalTarget)...))
	}
}

// externalIPEntries dispatches the external IPs to EXT.
func (r *Renderer) externalIPEntries(sr *serviceRules, p *portPolicy) {
	for _, ip := range p.sp.ExternalIPs {
		if p.cat.HasAny {
			sr.add(treeNATServices, p.toAddr(ip, p.name+" external IP", p.chains.External))
		}
		if !p.hasExternal {
			sr.add(treeFilterExternal, p.toAddr(ip, p.externalComment, p.verdict(p.externalTarget)...))
		}
	}
}

// loadBalancerEntries dispatches the load-balancer IPs to FW (or EXT).
func (r *Renderer) loadBalancerEntries(sr *serviceRules, p *portPolicy) {
	for _, ip := range p.sp.LoadBalancerVIPs {
		if p.cat.HasAny {
			sr.add(treeNATServices, p.toAddr(ip, p.name+" loadbalancer IP", p.lbChain))
		}
		if p.usesFWChain {
			sr.add(treeFilterFirewall, p.toAddr(ip, p.name+" traffic not accepted by "+p.chains.Firewall, "DROP"))
		}
	}
	if !p.hasExternal {
		for _, ip := range p.sp.LoadBalancerVIPs {
			sr.add(treeFilterExternal, p.toAddr(ip, p.externalComment, p.verdict(p.externalTarget)...))
		}
	}
}

// nodePortEntries dispatches the node port to EXT and opens the
// health-check node port.
func (r *Renderer) nodePortEntries(sr *serviceRules, p *portPolicy) {
	cfg, sp, proto := &r.cfg, p.sp, p.proto
	if sp.NodePort != 0 {
		if p.cat.HasAny {
			if cfg.LocalhostNodePorts && !cfg.isIPv6() && cfg.NFAcctLocalhostNodePorts != "" {
				sr.add(treeNATNodePorts, toPort(proto, sp.NodePort,
					(&iptables.RuleBuilder{Dst: "127.0.0.0/8", Proto: proto}).Comment(p.name).Match("-m", proto, "--dport", itoa(sp.NodePort)).
						Match(nfacctMatch(cfg.NFAcctLocalhostNodePorts)...).Jump(p.chains.External).Rule()))
			}
			sr.add(treeNATNodePorts, toPort(proto, sp.NodePort,
				(&iptables.RuleBuilder{Proto: proto}).Comment(p.name).Match("-m", proto, "--dport", itoa(sp.NodePort)).Jump(p.chains.External).Rule()))
		}
		if !p.hasExternal {
			v := p.verdict(p.externalTarget)
			sr.add(treeFilterExternal, toPort(proto, sp.NodePort,
				(&iptables.RuleBuilder{Proto: proto}).Comment(p.externalComment).Match("-m", "addrtype", "--dst-type", "LOCAL").
					Match("-m", proto, "--dport", itoa(sp.NodePort)).Jump(v[0], v[1:]...).Rule()))
		}
	}
	if sp.HealthCheckNodePort != 0 {
		sr.add(treeFilterNodePorts, toPort("tcp", sp.HealthCheckNodePort,
			(&iptables.RuleBuilder{Proto: "tcp"}).Comment(p.name+" health check node port").Match("-m", "tcp", "--dport", itoa(sp.HealthCheckNodePort)).Jump("ACCEPT").Rule()))
	}
}

// portChains collects a Service port's chains in the order they are
// first declared.
type portChains struct {
	chains []*Chain
	// index finds chains by name once there are many (a Service with
	// many endpoints has a chain per endpoint).
	index map[string]*Chain
}

// declare returns chain, creating it empty if needed.
func (pc *portChains) declare(name string) *Chain {
	if pc.index != nil {
		if c := pc.index[name]; c != nil {
			return c
		}
	} else {
		for _, c := range pc.chains {
			if c.Name == name {
				return c
			}
		}
	}
	c := &Chain{Name: name}
	pc.chains = append(pc.chains, c)
	if pc.index != nil {
		pc.index[name] = c
	} else if len(pc.chains) > 16 {
		pc.index = make(map[string]*Chain, 2*len(pc.chains))
		for _, c := range pc.chains {
			pc.index[c.Name] = c
		}
	}
	return c
}

// add appends rules to chain, declaring it if needed.
func (pc *portChains) add(name string, rules ...iptables.Rule) {
	c := pc.declare(name)
	c.Rules = append(c.Rules, rules...)
}

// internalMasquerade marks cluster-IP traffic for masquerading in the
// internal chain: all of it (masqueradeAll), or what does not come from a
// local pod.
func (r *Renderer) internalMasquerade(pc *portChains, p *portPolicy) {
	cfg := &r.cfg
	if !p.hasInternal || (!cfg.MasqueradeAll && !cfg.LocalTraffic.Implemented()) {
		return
	}
	masq := &iptables.RuleBuilder{Dst: iptables.HostPrefix(p.sp.ClusterIP), Proto: p.proto}
	if !cfg.MasqueradeAll {
		masq.ApplyArgs(cfg.LocalTraffic.IfNotLocal)
	}
	pc.add(p.internalChain, masq.Comment(p.name+" cluster IP").DPort(p.sp.Port).Jump(ChainMarkMasq).Rule())
}

// externalChain writes KUBE-EXT: masquerade (or, with a Local policy,
// short-circuit pod and node traffic to the cluster chain), then on to the
// external policy's chain.
func (r *Renderer) externalChain(pc *portChains, p *portPolicy) {
	if !p.usesExternalChain {
		return
	}
	cfg, ext := &r.cfg, p.chains.External
	pc.declare(ext)
	if !p.sp.ExternalPolicyLocal {
		pc.add(ext, (&iptables.RuleBuilder{}).Comment("masquerade traffic for "+p.name+" external destinations").Jump(ChainMarkMasq).Rule())
	} else {
		if cfg.LocalTraffic.Implemented() {
			pc.add(ext, (&iptables.RuleBuilder{}).ApplyArgs(cfg.LocalTraffic.IfLocal).
				Comment("pod traffic for "+p.name+" external destinations").Jump(p.chains.Cluster).Rule())
		}
		pc.add(ext,
			(&iptables.RuleBuilder{}).Comment("masquerade LOCAL traffic for "+p.name+" external destinations").
				Match("-m", "addrtype", "--src-type", "LOCAL").Jump(ChainMarkMasq).Rule(),
			(&iptables.RuleBuilder{}).Comment("route LOCAL traffic for "+p.name+" external destinations").
				Match("-m", "addrtype", "--src-type", "LOCAL").Jump(p.chains.Cluster).Rule())
	}
	if p.hasExternal {
		pc.add(ext, (&iptables.RuleBuilder{}).Jump(p.externalPolicyChain).Rule())
	}
}

// firewallChain writes KUBE-FW: the loadBalancerSourceRanges (and the
// load-balancer IPs themselves when a range holds the node) go on to EXT;
// the rest falls through to KUBE-PROXY-FIREWALL's DROP.
func (r *Renderer) firewallChain(pc *portChains, p *portPolicy) {
	if !p.usesFWChain {
		return
	}
	cfg, fw := &r.cfg, p.chains.Firewall
	pc.declare(fw)
	allowFromNode := false
	for _, cidr := range p.sp.LoadBalancerSourceRanges {
		pc.add(fw, (&iptables.RuleBuilder{Src: cidr.String()}).Comment(p.name+" loadbalancer IP").Jump(p.chains.External).Rule())
		if len(cfg.NodeIPs) > 0 && cidr.Contains(cfg.NodeIPs[0]) {
			allowFromNode = true
		}
	}
	if allowFromNode {
		for _, ip := range p.sp.LoadBalancerVIPs {
			pc.add(fw, (&iptables.RuleBuilder{Src: iptables.HostPrefix(ip)}).Comment(p.name+" loadbalancer IP").Jump(p.chains.External).Rule())
		}
	}
	pc.add(fw, (&iptables.RuleBuilder{}).Comment("other traffic to "+p.name+" will be dropped by KUBE-PROXY-FIREWALL").Rule())
}

// endpointChains writes KUBE-SVC and KUBE-SVL (the choice of an endpoint)
// and each reachable endpoint's KUBE-SEP (masquerade hairpin traffic,
// DNAT).
func (r *Renderer) endpointChains(pc *portChains, p *portPolicy) {
	sp := p.sp
	if p.usesClusterChain {
		pc.add(p.chains.Cluster, r.serviceToEndpoints(sp, p.cat.Cluster)...)
	}
	if p.usesLocalChain {
		pc.add(p.chains.Local, r.serviceToEndpoints(sp, p.cat.Local)...)
	}
	for _, ep := range p.cat.Reachable {
		sep := EndpointChainName(sp.Name, ep.String())
		first := &iptables.RuleBuilder{Src: iptables.HostPrefix(ep.IP)}
		dnat := &iptables.RuleBuilder{Proto: p.proto}
		if !r.large {
			first.Comment(p.name)
			dnat.Comment(p.name)
		}
		if sp.SessionAffinityClientIP {
			dnat.Match("-m", "recent", "--set", "--name", sep, "--mask", r.recentMask(), "--rsource")
		}
		dnat.Match("-m", p.proto)
		pc.add(sep, first.Jump(ChainMarkMasq).Rule(), dnat.Jump("DNAT", "--to-destination", ep.String()).Rule())
	}
}

// pack moves the texts of the Service port's dispatch entries, which the
// renderer keeps until the port changes, into one string.
func (sr *serviceRules) pack() {
	size := 0
	for _, es := range sr.entries {
		for _, e := range es {
			size += len(e.body.String())
		}
	}
	var b strings.Builder
	b.Grow(size)
	for _, es := range sr.entries {
		for _, e := range es {
			b.WriteString(e.body.String())
		}
	}
	text, off := b.String(), 0
	for _, es := range sr.entries {
		for i := range es {
			n := len(es[i].body.String())
			es[i].body = es[i].body.Rebase(text[off : off+n])
			off += n
		}
	}
}

// serviceToEndpoints renders a KUBE-SVC/KUBE-SVL chain: affinity checks
// first, then one statistic rule per endpoint, the last unconditional.
func (r *Renderer) serviceToEndpoints(sp *proxy.ServicePort, eps []*proxy.Endpoint) []iptables.Rule {
	name := sp.Name.String()
	var out []iptables.Rule
	if sp.SessionAffinityClientIP {
		for _, ep := range eps {
			sep := EndpointChainName(sp.Name, ep.String())
			rl := &iptables.RuleBuilder{}
			if !r.large {
				rl.Comment(name + " -> " + ep.String())
			}
			rl.Match("-m", "recent", "--rcheck", "--seconds", itoa(sp.StickyMaxAgeSeconds), "--reap", "--name", sep, "--mask", r.recentMask(), "--rsource")
			out = append(out, rl.Jump(sep).Rule())
		}
	}
	for i, ep := range eps {
		sep := EndpointChainName(sp.Name, ep.String())
		rl := &iptables.RuleBuilder{}
		if !r.large {
			rl.Comment(name + " -> " + ep.String())
		}
		if i < len(eps)-1 {
			rl.Match("-m", "statistic", "--mode", "random", "--probability", probability(len(eps)-i))
		}
		out = append(out, rl.Jump(sep).Rule())
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
	var tx iptables.Transaction
	tx.Rewrite(iptables.TableFilter, rs.Filter, nil)
	tx.Rewrite(iptables.TableNAT, rs.NAT, nil)
	return tx.Bytes()
}
