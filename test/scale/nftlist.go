package scale

import (
	"bufio"
	"strings"
)

// NFTEndpointJumps reads "nft list table ip kube-proxy" output (kube-proxy's
// nftables mode) and returns, for every Service port chain
// ("service-<hash>-<namespace>/<name>/<protocol>/<port>"), how many endpoint
// chains it jumps to, keyed by "<namespace>/<name>/<protocol>/<port>".
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
			out[cur] += strings.Count(line, "goto endpoint-")
		}
	}
	return out
}

// NFTServiceKey is the key NFTEndpointJumps uses for a Service port.
func NFTServiceKey(namespace, name, protocol, port string) string {
	return namespace + "/" + name + "/" + strings.ToLower(protocol) + "/" + port
}
