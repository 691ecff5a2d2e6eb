package proxy

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestSameRulesBehaviourAsKubeProxy runs upstream kube-proxy and then
// iptproxy on the same node for the same Services, reads back what each
// left in the kernel (iptables-save, both families) and traces the same
// packets through both: every packet must go to the same places with the
// same probabilities, masqueraded alike. The packets are traced, not sent,
// so every source and destination can be tried.
func TestSameRulesBehaviourAsKubeProxy(t *testing.T) {
	kubeProxy := fw.RequireKubeProxy(t)
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 2, DualStack: true})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	families := c.IPFamilies()

	// Synthetic endpoints: no pod needs to run, only the rules matter.
	backend := func(n *fw.Node, host int, mutate func(*fw.Backend)) fw.Backend {
		b := fw.Backend{NodeName: n.Name(), Zone: n.Zone()}
		for _, p := range n.PodCIDRs() {
			b.Addresses = append(b.Addresses, nthAddr(p, host))
		}
		if mutate != nil {
			mutate(&b)
		}
		return b
	}
	a := backend(n1, 50, nil)
	b := backend(n2, 50, nil)
	bTerm := backend(n2, 51, func(b *fw.Backend) { b.Terminating = true })
	aTerm := backend(n1, 52, func(b *fw.Backend) { b.Terminating = true })
	notReady := backend(n2, 53, func(b *fw.Backend) { b.NotReady = true })

	lbIP := func(i int) string { return c.ExternalIP(v1.IPv4Protocol, i).String() }
	lbIP6 := func(i int) string { return c.ExternalIP(v1.IPv6Protocol, i).String() }
	outsideAllowed := nthAddr(netip.MustParsePrefix("198.18.0.0/24"), 151)
	outsideAllowed6 := nthAddr(netip.MustParsePrefix("fd00:198:18::/64"), 151)
	type spec struct {
		name     string
		mutate   func(*v1.Service)
		ingress  []v1.LoadBalancerIngress
		backends []fw.Backend
	}
	nodePort := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }
	lb := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }
	etpLocal := func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
	specs := []spec{
		{name: "multi", backends: []fw.Backend{a, b, bTerm, notReady}},
		{name: "np", mutate: func(s *v1.Service) {
			nodePort(s)
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
		}, backends: []fw.Backend{a, b}},
		{name: "np-local", mutate: func(s *v1.Service) { nodePort(s); etpLocal(s) }, backends: []fw.Backend{a, b}},
		{name: "np-local-remote", mutate: func(s *v1.Service) { nodePort(s); etpLocal(s) }, backends: []fw.Backend{b}},
		{name: "np-local-terminating", mutate: func(s *v1.Service) { nodePort(s); etpLocal(s) }, backends: []fw.Backend{aTerm, b}},
		{name: "lb", mutate: func(s *v1.Service) {
			lb(s)
			etpLocal(s)
			s.Spec.LoadBalancerSourceRanges = []string{outsideAllowed.String() + "/32", outsideAllowed6.String() + "/128"}
		}, ingress: []v1.LoadBalancerIngress{{IP: lbIP(1)}, {IP: lbIP6(1)}}, backends: []fw.Backend{a, b}},
		{name: "lb-cluster", mutate: func(s *v1.Service) {
			lb(s)
			s.Spec.LoadBalancerSourceRanges = []string{"198.18.0.0/24", "fd00:198:18::/64"} // holds the node IPs
		}, ingress: []v1.LoadBalancerIngress{{IP: lbIP(2)}, {IP: lbIP6(2)}, {IP: lbIP(3), IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}, backends: []fw.Backend{a, b}},
		{name: "ext", mutate: func(s *v1.Service) { s.Spec.ExternalIPs = []string{lbIP(4), lbIP6(4)} }, backends: []fw.Backend{a, b}},
		{name: "itp", mutate: func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}, backends: []fw.Backend{a, b}},
		{name: "itp-remote", mutate: func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}, backends: []fw.Backend{b}},
		{name: "empty", mutate: func(s *v1.Service) { nodePort(s); s.Spec.ExternalIPs = []string{lbIP(5)} }},
		{name: "topo", backends: []fw.Backend{
			backend(n1, 60, func(b *fw.Backend) { b.HintZones = []string{n1.Zone()} }),
			backend(n2, 60, func(b *fw.Backend) { b.HintZones = []string{n2.Zone()} }),
			backend(n2, 61, func(b *fw.Backend) { b.HintZones = []string{n1.Zone()} }),
		}},
		{name: "headless", mutate: func(s *v1.Service) { s.Spec.ClusterIP = v1.ClusterIPNone }, backends: []fw.Backend{a}},
	}
	var svcs []*v1.Service
	for _, sp := range specs {
		var ports []v1.ServicePort
		for _, p := range fw.Protocols() {
			ports = append(ports, fw.ServicePort(strings.ToLower(string(p)), p, 80, echoPort))
		}
		svc := fw.NewService("default", sp.name, ports...)
		svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
		if sp.mutate != nil {
			sp.mutate(svc)
		}
		svc = c.CreateService(t, svc)
		if len(sp.ingress) > 0 {
			svc.Status.LoadBalancer.Ingress = sp.ingress
			var err error
			svc, err = c.Client().CoreV1().Services("default").UpdateStatus(t.Context(), svc, metav1.UpdateOptions{})
			if err != nil {
				t.Fatalf("setting the load-balancer status of %s: %v", sp.name, err)
			}
		}
		c.SetEndpoints(t, svc, sp.backends...)
		svcs = append(svcs, svc)
	}

	// What each proxy leaves in node-1's kernel, once it has synced both
	// families (its log says so) and every Service shows in the rules.
	rulesOf := func(t *testing.T, binary, syncedLine string, configure func(*kpv1alpha1.KubeProxyConfiguration), update func()) map[v1.IPFamily]*ruleset.Ruleset {
		t.Helper()
		d := n1.StartDaemon(t, fw.DaemonOptions{Binary: binary, Args: []string{"--v=2"}, Configure: configure})
		d.WaitHealthy(t, 60*time.Second)
		out := map[v1.IPFamily]*ruleset.Ruleset{}
		deadline := time.Now().Add(30 * time.Second)
		for {
			missing := ""
			if strings.Count(d.Log(), syncedLine) < len(families) {
				missing = "a sync of every family"
			}
			save := n1.IPTablesSave(t, v1.IPv4Protocol, "nat") + n1.IPTablesSave(t, v1.IPv4Protocol, "filter")
			for _, sp := range specs {
				if sp.name != "headless" && !strings.Contains(save, "default/"+sp.name+":") {
					missing = "Service " + sp.name
				}
			}
			if missing == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no %s in the rules after 30s\n%s", d.Name(), missing, d.Log())
			}
			time.Sleep(200 * time.Millisecond)
		}
		// The rules alone: no "# Generated ... on <date>" lines or counters.
		saveAll := func() string {
			var b strings.Builder
			for _, fam := range families {
				for _, line := range strings.Split(n1.IPTablesSave(t, fam, "filter")+n1.IPTablesSave(t, fam, "nat"), "\n") {
					if strings.HasPrefix(line, "-A ") {
						b.WriteString(line + "\n")
					}
				}
			}
			return b.String()
		}
		if update != nil {
			// Partial syncs: change things while the daemon runs, then wait
			// for the rules to settle (both proxies' minSyncPeriod is 1s).
			update()
			time.Sleep(2500 * time.Millisecond)
			prev := saveAll()
			for settled := time.Now().Add(20 * time.Second); ; {
				time.Sleep(time.Second)
				cur := saveAll()
				if cur == prev {
					break
				}
				if time.Now().After(settled) {
					t.Fatalf("%s: rules still changing 20s after the updates", d.Name())
				}
				prev = cur
			}
		}
		for _, fam := range families {
			text := n1.IPTablesSave(t, fam, "filter") + n1.IPTablesSave(t, fam, "nat")
			rs, err := ruleset.Parse([]byte(text))
			if err != nil {
				t.Fatalf("parsing %s's %s rules: %v", d.Name(), fam, err)
			}
			out[fam] = rs
		}
		d.Stop(t)
		return out
	}
	// flush leaves node-1 as fresh as a new node: nothing in any table.
	flush := func() {
		for _, fam := range families {
			cmd := "iptables"
			if fam == v1.IPv6Protocol {
				cmd = "ip6tables"
			}
			for _, table := range []string{"filter", "nat", "mangle"} {
				n1.Exec(t, cmd, "-t", table, "-F")
				n1.Exec(t, cmd, "-t", table, "-X")
			}
		}
	}

	// Node-1's own addresses, for routing and addrtype.
	node := trace.Node{}
	for _, line := range strings.Split(n1.Exec(t, "ip", "-o", "addr", "show"), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" || f[i] == "inet6" {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil {
					node.LocalAddrs = append(node.LocalAddrs, p.Addr())
				}
			}
		}
	}

	configs := []struct {
		name      string
		configure func(*kpv1alpha1.KubeProxyConfiguration)
	}{
		{"defaults", nil},
		{"masqueradeAll, masquerade bit 5", func(cfg *kpv1alpha1.KubeProxyConfiguration) {
			cfg.IPTables.MasqueradeAll = true
			cfg.IPTables.MasqueradeBit = ptr.To[int32](5)
		}},
		{"detect-local NodeCIDR", func(cfg *kpv1alpha1.KubeProxyConfiguration) { cfg.DetectLocalMode = "NodeCIDR" }},
		{"detect-local BridgeInterface", func(cfg *kpv1alpha1.KubeProxyConfiguration) {
			cfg.DetectLocalMode = "BridgeInterface"
			cfg.DetectLocal.BridgeInterface = "cbr0"
		}},
		{"detect-local InterfaceNamePrefix", func(cfg *kpv1alpha1.KubeProxyConfiguration) {
			cfg.DetectLocalMode = "InterfaceNamePrefix"
			cfg.DetectLocal.InterfaceNamePrefix = "cb"
		}},
		{"nodePortAddresses primary", func(cfg *kpv1alpha1.KubeProxyConfiguration) { cfg.NodePortAddresses = []string{"primary"} }},
		{"nodePortAddresses CIDRs with loopback", func(cfg *kpv1alpha1.KubeProxyConfiguration) {
			cfg.NodePortAddresses = []string{"198.18.0.0/24", "127.0.0.0/8", "fd00:198:18::/64"}
		}},
		{"localhostNodePorts off", func(cfg *kpv1alpha1.KubeProxyConfiguration) { cfg.IPTables.LocalhostNodePorts = ptr.To(false) }},
	}
	for i, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			flush()
			upstream := rulesOf(t, kubeProxy, "SyncProxyRules complete", cfg.configure, nil)
			if i == 0 {
				// The operator swaps the image: iptproxy starts over
				// kube-proxy's rules.
				swapped := rulesOf(t, fw.RequireIPTProxy(t), "Synced rules", cfg.configure, nil)
				t.Run("swapped in over kube-proxy's rules", func(t *testing.T) {
					compareRules(t, n1, n2, node, svcs, upstream, swapped)
				})
			}
			flush()
			fresh := rulesOf(t, fw.RequireIPTProxy(t), "Synced rules", cfg.configure, nil)
			t.Run("fresh node", func(t *testing.T) { compareRules(t, n1, n2, node, svcs, upstream, fresh) })
		})
	}

	// Endpoint and Service changes while each proxy runs (partial syncs),
	// undone before the other proxy's turn.
	svcByName := map[string]*v1.Service{}
	for _, svc := range svcs {
		svcByName[svc.Name] = svc
	}
	setEndpoints := func(name string, backends ...fw.Backend) { c.SetEndpoints(t, svcByName[name], backends...) }
	editService := func(name string, edit func(*v1.Service)) {
		api := c.Client().CoreV1().Services("default")
		cur, err := api.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		edit(cur)
		if _, err := api.Update(t.Context(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("updating Service %s: %v", name, err)
		}
	}
	a2 := backend(n1, 54, nil)
	apply := func() {
		setEndpoints("np", a)
		setEndpoints("empty", b)
		setEndpoints("np-local-remote", a, b)
		setEndpoints("multi", a, a2, bTerm)
		editService("itp", func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyCluster) })
		editService("lb-cluster", func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = nil })
	}
	revert := func() {
		setEndpoints("np", a, b)
		setEndpoints("empty")
		setEndpoints("np-local-remote", b)
		setEndpoints("multi", a, b, bTerm, notReady)
		editService("itp", func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal) })
		editService("lb-cluster", func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"198.18.0.0/24", "fd00:198:18::/64"} })
	}
	t.Run("after updates", func(t *testing.T) {
		flush()
		upstream := rulesOf(t, kubeProxy, "SyncProxyRules complete", nil, apply)
		revert()
		flush()
		ours := rulesOf(t, fw.RequireIPTProxy(t), "Synced rules", nil, apply)
		revert()
		// The updates took: the Service that had no endpoints has one.
		emptyIP := fw.ServiceAddr(svcByName["empty"], v1.IPv4Protocol, 80)
		pkt := trace.Packet{Protocol: "tcp", Src: nthAddr(n2.PodCIDRs()[0], 77), Dst: emptyIP.Addr(), DstPort: int(emptyIP.Port()), InInterface: "eth0"}
		if r, err := trace.Trace(upstream[v1.IPv4Protocol], node, pkt); err != nil || r.AllRejected() {
			t.Fatalf("kube-proxy's rules do not show the updates (%v):\n%s", err, r)
		}
		compareRules(t, n1, n2, node, svcs, upstream, ours)
	})
}

// compareRules traces packets from every kind of source to every address
// of svcs through both rulesets and reports where they differ.
func compareRules(t *testing.T, n1, n2 *fw.Node, node trace.Node, svcs []*v1.Service, upstream, ours map[v1.IPFamily]*ruleset.Ruleset) {
	// The same per-Service chain names (kube-proxy's hashing) and the same
	// jumps from the built-in chains, so that iptables-save reads alike.
	for fam := range upstream {
		for _, table := range []string{"filter", "nat"} {
			names := func(rs *ruleset.Ruleset) []string {
				var out []string
				for _, ch := range rs.Table(table).Chains() {
					for _, prefix := range []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"} {
						if strings.HasPrefix(ch.Name, prefix) && !rules.IsDispatchChain(ch.Name) {
							out = append(out, ch.Name)
						}
					}
					if ch.Builtin {
						for _, r := range ch.Rules {
							out = append(out, ch.Name+": "+r.Text)
						}
					}
				}
				sort.Strings(out)
				return out
			}
			if w, g := names(upstream[fam]), names(ours[fam]); !slices.Equal(w, g) {
				t.Errorf("%s %s: Service chains or built-in jumps differ\nonly kube-proxy's: %q\nonly iptproxy's:   %q",
					fam, table, minus(w, g), minus(g, w))
			}
		}
	}

	compared, mismatches := 0, 0
	for fam := range upstream {
		type source struct {
			name string
			pkt  trace.Packet
		}
		podCIDR := func(n *fw.Node) netip.Prefix {
			for _, p := range n.PodCIDRs() {
				if p.Addr().Is4() == (fam == v1.IPv4Protocol) {
					return p
				}
			}
			t.Fatalf("no %s pod CIDR on %s", fam, n.Name())
			return netip.Prefix{}
		}
		nodeNet := netip.MustParsePrefix("198.18.0.0/24")
		if fam == v1.IPv6Protocol {
			nodeNet = netip.MustParsePrefix("fd00:198:18::/64")
		}
		sources := []source{
			{"local pod", trace.Packet{Src: nthAddr(podCIDR(n1), 77), InInterface: "cbr0"}},
			{"the endpoint itself", trace.Packet{Src: nthAddr(podCIDR(n1), 50), InInterface: "cbr0"}},
			{"remote pod", trace.Packet{Src: nthAddr(podCIDR(n2), 77), InInterface: "eth0"}},
			{"outside", trace.Packet{Src: nthAddr(nodeNet, 150), InInterface: "eth0"}},
			{"outside, allowed", trace.Packet{Src: nthAddr(nodeNet, 151), InInterface: "eth0"}},
			{"node", trace.Packet{Src: n1.IP(fam), Local: true}},
		}
		// A client every endpoint has seen 10 s ago: session affinity
		// decides, by the rules' order.
		known := trace.Packet{Src: nthAddr(podCIDR(n2), 78), InInterface: "eth0", RecentAge: 10}
		for _, ch := range upstream[fam].Table("nat").Chains() {
			if strings.HasPrefix(ch.Name, "KUBE-SEP-") {
				known.Recent = append(known.Recent, ch.Name)
			}
		}
		sources = append(sources, source{"known client", known})
		if fam == v1.IPv4Protocol {
			sources = append(sources, source{"loopback", trace.Packet{Src: netip.MustParseAddr("127.0.0.1"), Local: true}})
		} else {
			sources = append(sources, source{"loopback", trace.Packet{Src: netip.IPv6Loopback(), Local: true}})
		}
		sameFamily := func(s string) (netip.Addr, bool) {
			a, err := netip.ParseAddr(s)
			return a, err == nil && a.Is4() == (fam == v1.IPv4Protocol)
		}
		var dests []netip.AddrPort
		var protos []string
		for _, svc := range svcs {
			for _, port := range svc.Spec.Ports {
				var addrs []netip.Addr
				for _, s := range svc.Spec.ClusterIPs {
					if a, ok := sameFamily(s); ok {
						addrs = append(addrs, a)
					}
				}
				for _, s := range svc.Spec.ExternalIPs {
					if a, ok := sameFamily(s); ok {
						addrs = append(addrs, a)
					}
				}
				for _, ing := range svc.Status.LoadBalancer.Ingress {
					if a, ok := sameFamily(ing.IP); ok {
						addrs = append(addrs, a)
					}
				}
				for _, a := range addrs {
					dests = append(dests, netip.AddrPortFrom(a, uint16(port.Port)))
				}
				if port.NodePort != 0 {
					dests = append(dests, netip.AddrPortFrom(n1.IP(fam), uint16(port.NodePort)))
					if fam == v1.IPv4Protocol {
						dests = append(dests, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port.NodePort)))
					} else {
						dests = append(dests, netip.AddrPortFrom(netip.IPv6Loopback(), uint16(port.NodePort)))
					}
				}
			}
		}
		dests = append(dests, netip.AddrPortFrom(nthAddr(podCIDR(n2), 50), echoPort))
		if fam == v1.IPv4Protocol {
			dests = append(dests, netip.MustParseAddrPort("127.0.0.1:22"))
		}
		for _, p := range fw.Protocols() {
			protos = append(protos, strings.ToLower(string(p)))
		}
		slices.SortFunc(dests, func(x, y netip.AddrPort) int { return x.Compare(y) })
		dests = slices.Compact(dests)

		for _, src := range sources {
			for _, dst := range dests {
				for _, proto := range protos {
					pkt := src.pkt
					pkt.Protocol, pkt.Dst, pkt.DstPort, pkt.SrcPort = proto, dst.Addr(), int(dst.Port()), 40000
					if !pkt.Local && node.IsLocal(pkt.Src) {
						continue
					}
					want, werr := trace.Trace(upstream[fam], node, pkt)
					got, gerr := trace.Trace(ours[fam], node, pkt)
					if werr != nil || gerr != nil {
						t.Fatalf("%s: tracing: kube-proxy %v, iptproxy %v", pkt, werr, gerr)
					}
					compared++
					if w, g := where(want), where(got); w != g {
						mismatches++
						if mismatches <= 20 {
							t.Errorf("%s, %s: kube-proxy sends it to %s, iptproxy to %s\n--- kube-proxy:\n%s--- iptproxy:\n%s", src.name, pkt, w, g, want, got)
						}
					}
				}
			}
		}
	}
	t.Logf("compared %d packets, %d differ", compared, mismatches)
	if compared < 500 {
		t.Errorf("only %d packets compared", compared)
	}
}

// where summarizes a trace: destinations with probabilities (rounded to
// 1e-6) and masquerading, sorted.
func where(r *trace.Result) string {
	m := map[string]float64{}
	for i := range r.Outcomes {
		o := &r.Outcomes[i]
		k := o.Destination()
		if o.Verdict == trace.Accept && o.Masqueraded {
			k += " masq"
		}
		m[k] += o.Probability
	}
	var parts []string
	for k, p := range m {
		parts = append(parts, fmt.Sprintf("%s=%.6f", k, math.Round(p*1e6)/1e6))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ", ") + "}"
}

// minus returns the elements of a that are not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// nthAddr returns the address k after the start of prefix p.
func nthAddr(p netip.Prefix, k int) netip.Addr {
	a := p.Masked().Addr()
	for range k {
		a = a.Next()
	}
	return a
}
