package scale

import (
	"bufio"
	"strconv"
	"strings"
)

// NFTEndpointJumps reads "nft list table ip kube-proxy" output (kube-proxy's
// nftables mode) and returns, for every Service port chain
// ("service-<hash>-<namespace>/<name>/<protocol>/<port>"), how many endpoints
// it picks from, keyed by "<namespace>/<name>/<protocol>/<port>": the N of
// its "numgen random mod N" rule, whether that rule DNATs through a map of
// addresses (v1.37: "dnat ip to numgen random mod 10 map { 0 : 10.64.0.1 .
// 8080, ... }") or jumps through a vmap of endpoint chains (earlier
// releases).
func NFTEndpointJumps(list string) map[string]int {
	out := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(list))
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	cur := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "chain ") && strings.HasSuffix(line, "{"):
			name := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(line, "chain "), "{"))
			cur = ""
			if rest, ok := strings.CutPrefix(name, "service-"); ok {
				if _, key, ok := strings.Cut(rest, "-"); ok {
					cur = key
					out[cur] += 0
				}
			}
		case line == "}":
			cur = ""
		case cur != "":
			if _, rest, ok := strings.Cut(line, "numgen random mod "); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					if n, err := strconv.Atoi(f[0]); err == nil && n > out[cur] {
						out[cur] = n
					}
				}
			}
		}
	}
	return out
}

// NFTServiceKey is the key NFTEndpointJumps uses for a Service port.
func NFTServiceKey(namespace, name, protocol, port string) string {
	return namespace + "/" + name + "/" + strings.ToLower(protocol) + "/" + port
}
