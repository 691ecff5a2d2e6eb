package scale

import (
	"bufio"
	"net/netip"
	"strings"
)

// splitRule splits an iptables-save rule line into its words, keeping a
// double-quoted comment (with its escaped quotes) as one word.
func splitRule(line string) []string {
	var words []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case inQuote && r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// rule is what the benchmark needs from one "-A" line.
type rule struct {
	chain, dest, jump string
}

// parseRules returns the "-A" lines of iptables-save output.
func parseRules(save string) []rule {
	var out []rule
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		w := splitRule(line)
		r := rule{chain: w[1]}
		for i := 2; i+1 < len(w); i++ {
			switch w[i] {
			case "-d":
				r.dest = w[i+1]
			case "-j":
				r.jump = w[i+1]
			}
		}
		out = append(out, r)
	}
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
