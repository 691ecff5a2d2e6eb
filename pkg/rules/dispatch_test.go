package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// buildDispatch returns the rules of the shared chain root (of table, for
// family) and the dispatch chains below it, built from scratch.
func buildDispatch(family, table, root string, entries []dispatchEntry) ([]iptables.Rule, []*Chain) {
	d := &dispatchState{family: family, table: table, root: root}
	for _, e := range entries {
		d.insert(e)
	}
	top, chains, _, _ := d.build(false)
	return top, chains
}

func addrEntries(addrs ...string) []dispatchEntry {
	var out []dispatchEntry
	for i, a := range addrs {
		ip := netip.MustParseAddr(a)
		out = append(out, dispatchEntry{key: addrKey(ip), kind: keyAddr, seq: int32(i), body: iptables.MustParseRule("-d " + iptables.HostPrefix(ip) + " -j X" + fmt.Sprint(i))})
	}
	return out
}

// TestDispatchJumps checks the matches of internal dispatch rules: address
// prefixes of 2-bit digits and port ranges.
func TestDispatchJumps(t *testing.T) {
	for _, tc := range []struct {
		family string
		kind   keyKind
		key    []byte
		want   string
	}{
		{"IPv4", keyAddr, addrKey(netip.MustParseAddr("172.30.64.1"))[:9], "-d 172.30.64.0/18 -j C"},
		{"IPv4", keyAddr, addrKey(netip.MustParseAddr("10.0.0.1"))[:1], "-d 0.0.0.0/2 -j C"},
		{"IPv6", keyAddr, addrKey(netip.MustParseAddr("fd00:30::1"))[:16], "-d fd00:30::/32 -j C"},
		{"IPv4", keyPort, portKey("tcp", 30720)[:1], "-p tcp -j C"},
		{"IPv4", keyPort, portKey("udp", 30720)[:4], "-p udp -m udp --dport 30720:31743 -j C"},
		{"IPv4", keyPort, portKey("tcp", 30721), "-p tcp -m tcp --dport 30721 -j C"},
	} {
		tree := &dispatchTree{family: tc.family, kind: tc.kind}
		if got := tree.jumpTo(tc.key, "C").String(); got != tc.want {
			t.Errorf("%s key %v: got %q, want %q", tc.family, tc.key, got, tc.want)
		}
	}
}

// TestBuildDispatch checks that a small chain stays flat in kube-proxy's
// order, that a big one becomes a tree whose leaves hold every rule once,
// in order, with at most LeafMax rules and internal chains of at most
// Fanout jumps, and that a chain's content depends only on the rules under
// its prefix (adding one address elsewhere leaves it unchanged).
func TestBuildDispatch(t *testing.T) {
	small := addrEntries("10.0.0.3", "10.0.0.1", "10.0.0.2")
	top, chains := buildDispatch("IPv4", "nat", ChainServices, small)
	if len(chains) != 0 || !slices.Equal(top, leafRules(small)) {
		t.Errorf("small chain: %v %v; want flat", top, chains)
	}

	var addrs []string
	for i := 0; i < 500; i++ {
		addrs = append(addrs, fmt.Sprintf("172.30.%d.%d", (i*37)%256, (i*101)%256))
	}
	entries := addrEntries(addrs...)
	top, chains = buildDispatch("IPv4", "nat", ChainServices, entries)
	byName := map[string]*Chain{}
	for _, c := range chains {
		byName[c.Name] = c
		if len(c.Name) > 28 || !IsServiceChain(c.Name) {
			t.Errorf("chain name %q: too long or not owned", c.Name)
		}
	}
	seen := 0
	var walk func(rules []iptables.Rule, depth int)
	walk = func(rules []iptables.Rule, depth int) {
		if depth > 17 {
			t.Fatal("tree too deep")
		}
		last := -1
		for _, r := range rules {
			target := r.String()[strings.LastIndex(r.String(), " -j ")+4:]
			if c, ok := byName[target]; ok {
				if len(c.Rules) > max(LeafMax, Fanout) {
					t.Errorf("%s has %d rules", c.Name, len(c.Rules))
				}
				walk(c.Rules, depth+1)
				continue
			}
			var i int
			fmt.Sscanf(target, "X%d", &i)
			if i <= last {
				t.Errorf("leaf rules out of order: X%d after X%d", i, last)
			}
			last = i
			seen++
		}
	}
	walk(top, 0)
	if seen != len(entries) {
		t.Errorf("tree holds %d rules, want %d", seen, len(entries))
	}

	more := addrEntries(append(slices.Clone(addrs), "172.30.250.250")...)
	_, chains2 := buildDispatch("IPv4", "nat", ChainServices, more)
	changed := 0
	for _, c := range chains2 {
		if old, ok := byName[c.Name]; !ok || !slices.Equal(old.Rules, c.Rules) {
			changed++
		}
	}
	if changed == 0 || changed > 2+Fanout {
		t.Errorf("one more address changed %d dispatch chains; want 1..%d", changed, 2+Fanout)
	}
}
