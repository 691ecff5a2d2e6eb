package rules_test

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// fuzzBytes hands out values decoded from the fuzzer's input; once the
// input is used up every value is the zero choice.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) byte() byte {
	if len(f.b) == 0 {
		return 0
	}
	c := f.b[0]
	f.b = f.b[1:]
	return c
}

func (f *fuzzBytes) n(max int) int { return int(f.byte()) % max }

func (f *fuzzBytes) bool() bool { return f.byte()&1 == 1 }

func pick[T any](f *fuzzBytes, from []T) T { return from[f.n(len(from))] }

// port returns mostly valid ports, with the edges and out-of-range values.
func (f *fuzzBytes) port() int32 {
	switch f.n(8) {
	case 0:
		return pick(f, []int32{0, -1, 1, 65535, 65536, 1 << 30})
	default:
		return int32(f.byte())<<8 | int32(f.byte())
	}
}

// The pools values are drawn from: valid ones of both families and the
// hostile ones the corpus test covers.
var (
	fuzzNamespaces = []string{"ns", "kube-system", strings.Repeat("n", 63)}
	fuzzNames      = []string{"a", "b", "c", strings.Repeat("s", 63), "dns"}
	fuzzPortNames  = []string{"", "p", "q", "http", "pört-☃", "a\"b", "x y", strings.Repeat("x", 15), "--jump", "-j"}
	fuzzProtocols  = []v1.Protocol{"TCP", "UDP", "SCTP", "tcp", "uDp", "ICMP", ""}
	fuzzClusterIPs = []string{"172.30.0.1", "172.30.0.2", "172.30.0.3", "fd00:30::1", "fd00:30::2", "::ffff:172.30.0.9",
		"not-an-ip", "", "None", "0.0.0.0", "172.030.000.004", "172.30.0.1 "}
	fuzzAddrs = []string{"203.0.113.1", "203.0.113.2", "2001:db8::1", "::ffff:203.0.113.3", "bogus", "203.0.113.300",
		"192.0.2.10", "127.0.0.1", "::1", "0.0.0.0", "255.255.255.255"}
	fuzzRanges = []string{"198.51.100.0/24", "0.0.0.0/0", "::/0", "2001:db8::/32", "1.2.3.4/33", "junk", "10.0.0.1/32", ""}
	fuzzEPs    = []string{"10.1.0.1", "10.1.0.2", "10.1.1.3", "10.1.1.4", "fd00:1::1", "fd00:1::2", "::ffff:10.1.0.5",
		"10.1.0.999", "", "0.0.0.0", "224.0.0.1", "127.0.0.1", "fe80::1", "10.01.0.1"}
	fuzzZones = []string{"", "zone-a", "zone-b"}
	fuzzNodes = []string{"", "node-a", "node-b"}
)

func fuzzService(f *fuzzBytes) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: pick(f, fuzzNamespaces), Name: pick(f, fuzzNames)}}
	s.Spec.Type = pick(f, []v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName, "Odd"})
	s.Spec.ClusterIP = pick(f, fuzzClusterIPs)
	s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	if f.bool() {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, pick(f, fuzzClusterIPs))
	}
	for range f.n(3) {
		s.Spec.ExternalIPs = append(s.Spec.ExternalIPs, pick(f, fuzzAddrs))
	}
	for range f.n(3) {
		ing := v1.LoadBalancerIngress{IP: pick(f, fuzzAddrs)}
		switch f.n(4) {
		case 0:
			ing = v1.LoadBalancerIngress{Hostname: "lb.example.com"}
		case 1:
			ing.IPMode = ptr.To(v1.LoadBalancerIPModeProxy)
		}
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, ing)
	}
	for range f.n(3) {
		s.Spec.LoadBalancerSourceRanges = append(s.Spec.LoadBalancerSourceRanges, pick(f, fuzzRanges))
	}
	if f.bool() {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = f.port()
	}
	if f.bool() {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
	if f.bool() {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(f.port())}}
	}
	for range 1 + f.n(4) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{
			Name: pick(f, fuzzPortNames), Protocol: pick(f, fuzzProtocols), Port: f.port(), NodePort: f.port(),
		})
	}
	return s
}

func fuzzSlice(f *fuzzBytes, i int) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: pick(f, fuzzNamespaces), Name: fmt.Sprintf("slice-%d", i%4),
			Labels: map[string]string{discovery.LabelServiceName: pick(f, fuzzNames)}},
		AddressType: pick(f, []discovery.AddressType{discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN}),
	}
	if f.n(8) == 0 {
		s.Labels = nil
	}
	for range f.n(4) {
		p := discovery.EndpointPort{Name: ptr.To(pick(f, fuzzPortNames)), Protocol: ptr.To(pick(f, fuzzProtocols)), Port: ptr.To(f.port())}
		if f.n(8) == 0 {
			p.Port = nil
		}
		s.Ports = append(s.Ports, p)
	}
	for range f.n(6) {
		e := discovery.Endpoint{Addresses: []string{pick(f, fuzzEPs)}}
		if f.n(8) == 0 {
			e.Addresses = nil
		}
		c := f.byte()
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(c&1 == 0), Serving: ptr.To(c&2 == 0), Terminating: ptr.To(c&4 != 0)}
		if n := pick(f, fuzzNodes); n != "" {
			e.NodeName = ptr.To(n)
		}
		if z := pick(f, fuzzZones); z != "" {
			e.Zone = ptr.To(z)
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: pick(f, fuzzZones)}}}
			if f.bool() {
				e.Hints.ForNodes = []discovery.ForNode{{Name: pick(f, fuzzNodes)}}
			}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

// feed applies up to n random events (adds, updates, deletes) to tr.
func feed(f *fuzzBytes, tr *proxy.Tracker, n int) {
	for i := range n {
		if len(f.b) == 0 {
			return
		}
		switch f.n(5) {
		case 0, 1:
			tr.OnServiceUpdate(nil, fuzzService(f))
		case 2:
			tr.OnServiceUpdate(fuzzService(f), nil)
		case 3:
			tr.OnEndpointSliceUpdate(fuzzSlice(f, i), false)
		case 4:
			tr.OnEndpointSliceUpdate(fuzzSlice(f, i), true)
		}
	}
}

func fuzzConfig(fam v1.IPFamily, f *fuzzBytes) rules.Config {
	cfg := rules.Config{
		Family:        fam,
		NodeName:      "node-a",
		Zone:          pick(f, fuzzZones),
		NodeIPs:       []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		MasqueradeBit: f.n(32),
		MasqueradeAll: f.bool(),
	}
	if fam == v1.IPv6Protocol {
		cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("fd00::10")}
	}
	if f.bool() {
		cfg.LocalTraffic = rules.LocalTraffic{IfLocal: []string{"-s", "10.1.0.0/16"}, IfNotLocal: []string{"!", "-s", "10.1.0.0/16"}}
		if fam == v1.IPv6Protocol {
			cfg.LocalTraffic = rules.LocalTraffic{IfLocal: []string{"-s", "fd00:1::/64"}, IfNotLocal: []string{"!", "-s", "fd00:1::/64"}}
		}
	}
	cfg.LocalhostNodePorts = fam == v1.IPv4Protocol && f.bool()
	if f.bool() {
		cfg.NodePortAddresses = cfg.NodeIPs
	}
	cfg.ConntrackTCPLiberal = f.bool()
	return cfg
}

// builtinTargets are the targets a rendered rule may use that are not
// chains of the payload.
var builtinTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "MARK": true, "": true,
}

// checkPayload parses a rendered payload with restore semantics into empty
// tables of family fam (strict: unknown options, missing jump targets and
// addresses of the other family are errors) and checks every jump target
// is a chain of the payload or a built-in target.
func checkPayload(t *testing.T, fam v1.IPFamily, payload []byte) {
	t.Helper()
	opts := ruleset.Options{Strict: true, Family: ruleset.FamilyIPv4}
	if fam == v1.IPv6Protocol {
		opts.Family = ruleset.FamilyIPv6
	}
	rs := ruleset.New(opts)
	for _, tbl := range []string{"filter", "nat"} {
		if err := rs.AddTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs.Restore(payload, true); err != nil {
		t.Fatalf("rendered payload does not restore: %v\n%s", err, payload)
	}
	for _, tbl := range []string{"filter", "nat"} {
		for _, c := range rs.Chains(tbl) {
			for _, r := range rs.ChainRules(tbl, c) {
				if tgt := r.Target(); !builtinTargets[tgt] && rs.Chain(tbl, tgt) == nil {
					t.Fatalf("%s %s: rule %q jumps to %q, which is not a chain", tbl, c, r.Text, tgt)
				}
			}
		}
	}
}

// FuzzRender builds random Services and EndpointSlices (valid, hostile and
// in between) from the input, feeds them to the tracker, renders, and
// checks that the payload restores (every jump target exists, no option
// iptables would refuse); then applies more random changes and checks that
// the incremental render the sync loop does equals a render from scratch.
// It must never panic.
func FuzzRender(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add(bytes.Repeat([]byte{0x01, 0x01, 0x03, 0x02}, 64))
	f.Add(bytes.Repeat([]byte("iptproxy renders hostile input"), 8))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzBytes{b: data}
		fam := pick(in, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol})
		cfg := fuzzConfig(fam, in)
		tr := proxy.NewTracker(logr.Discard(), fam, cfg.NodeName)
		feed(in, tr, 24)
		state, _ := tr.Checkout()
		r := rules.NewRenderer(cfg)
		first := r.Render(state, nil)
		checkPayload(t, fam, first.Payload())

		feed(in, tr, 8)
		state, change := tr.Checkout()
		changed := map[proxy.ServicePortName]bool{}
		for spn := range change.PreviousPorts {
			changed[spn] = true
		}
		for nn := range change.Services {
			for _, spn := range state.ServicePortNames(nn) {
				changed[spn] = true
			}
		}
		delta := r.Render(state, changed)
		fresh := rules.NewRenderer(cfg).Render(state, nil)
		checkPayload(t, fam, fresh.Payload())
		if delta.Delta == nil {
			t.Fatalf("a render of the changed Service ports carries no delta")
		}
		if delta.Stats != fresh.Stats {
			// Rendered differs by design; the rest must not.
			d, f := delta.Stats, fresh.Stats
			d.Rendered, f.Rendered = 0, 0
			if d != f {
				t.Fatalf("incremental render's stats %+v, from scratch %+v", d, f)
			}
		}
		for _, tc := range []struct {
			table          string
			first, changed []*rules.Chain
			gone           []string
			fresh          []*rules.Chain
		}{
			{"filter", first.Filter, delta.Filter, delta.Delta.GoneFilter, fresh.Filter},
			{"nat", first.NAT, delta.NAT, delta.Delta.GoneNAT, fresh.NAT},
		} {
			got := chainMap(tc.first)
			for _, name := range tc.gone {
				delete(got, name)
			}
			maps.Copy(got, chainMap(tc.changed))
			if want := chainMap(tc.fresh); !maps.EqualFunc(got, want, slices.Equal) {
				t.Fatalf("%s: the first render with the delta applied differs from a render from scratch:\n%v\nvs\n%v", tc.table, got, want)
			}
		}
	})
}

// chainMap returns the rules of chains by name.
func chainMap(chains []*rules.Chain) map[string][]iptables.Rule {
	m := make(map[string][]iptables.Rule, len(chains))
	for _, c := range chains {
		m[c.Name] = c.Rules
	}
	return m
}
