package scale

import (
	"net/netip"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// rule is what the benchmark needs from one "-A" line.
type rule struct {
	chain, dest, jump string
}

// parseRules returns the rules of iptables-save output, read with the
// daemon's save reader. Lines it cannot read end the list.
func parseRules(save string) []rule {
	var out []rule
	_ = iptables.ReadSave(strings.NewReader(save), func(it iptables.SaveItem) error {
		if !it.IsRule {
			return nil
		}
		r := rule{chain: it.Chain}
		if !it.Rule.Goto() {
			r.jump = it.Rule.Target()
		}
		args := it.Rule.Args()
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-d" {
				r.dest = args[i+1]
			}
		}
		out = append(out, r)
		return nil
	})
	return out
}

// EndpointJumps counts, per chain, the rules of iptables-save output that
// jump to a KUBE-SEP chain: for a KUBE-SVC chain, its number of endpoints.
func EndpointJumps(save string) map[string]int {
	out := map[string]int{}
	for _, r := range parseRules(save) {
		if strings.HasPrefix(r.jump, "KUBE-SEP-") {
			out[r.chain]++
		}
	}
	return out
}

// ChainDestinations returns the single-address destinations ("-d a/32" or
// "-d a/128") that the rules of chain match, in rule order, each once.
func ChainDestinations(save, chain string) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, r := range parseRules(save) {
		if r.chain != chain || r.dest == "" {
			continue
		}
		p, err := netip.ParsePrefix(r.dest)
		if err != nil || !p.IsSingleIP() || seen[p.Addr()] {
			continue
		}
		seen[p.Addr()] = true
		out = append(out, p.Addr())
	}
	return out
}
