package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/trace"
	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// runIn runs the iptproxy binary in ns, printing the command line first
// (as an operator would type it on the node) and returning its stdout.
func runIn(s *framework.Session, ns *framework.NS, bin string, args ...string) (string, bool) {
	fmt.Printf("    $ ip netns exec %s iptproxy %s\n", ns.NetNS.Name(), strings.Join(args, " "))
	out, err := ns.Run(s.Context(), bin, args...)
	if err != nil {
		s.Errorf("iptproxy %s: %v", strings.Join(args, " "), err)
		return out, false
	}
	return out, true
}

func indent(text string) {
	for l := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		fmt.Println("    " + l)
	}
}

// showService prints "iptproxy show service demo/web" as run on node, with
// notes on how to read it.
func showService(s *framework.Session, node *framework.Node, bin, config string) {
	step("reading the Service the way an operator would: iptproxy show")
	fmt.Println("    show asks the API server (with the kubeconfig named in the daemon's --config file) and traces")
	fmt.Println("    a typical packet through each way into the Service: each endpoint's chance is computed from")
	fmt.Println("    the rules, not assumed.")
	out, ok := runIn(s, node.NS, bin, "show", "service", "demo/web", "--config", config, "--node", node.Name())
	if !ok {
		return
	}
	indent(out)
	fmt.Println(`
    How to read it: "Chains" are the iptables chains this Service owns on this node (KUBE-SVC-* picks an
    endpoint, one KUBE-SEP-* per endpoint rewrites the destination, KUBE-EXT-* handles traffic from
    outside). "Entries" are the ways in (ClusterIP, NodePort) with the packet that was traced. Each
    endpoint gets 33.3%: the first KUBE-SEP rule matches with probability 1/3, the second with 1/2 of
    what is left, the third takes the rest.`)
}

// traceOne prints "iptproxy trace" for one packet from pod client to the
// Service on node, then draws the path of that packet through the chains.
func traceOne(s *framework.Session, node *framework.Node, bin string, client *framework.Pod, dst netip.AddrPort) {
	step("following one packet: iptproxy trace")
	fmt.Println("    trace reads this node's live rules (iptables-save) and follows a packet rule by rule,")
	fmt.Println("    through every random branch. The pod's packet arrives on the node's pod bridge cbr0.")
	family := v1.IPv4Protocol
	if dst.Addr().Is6() {
		family = v1.IPv6Protocol
	}
	src := client.IP(family).String()
	args := []string{"trace", "--src", src, "--in-interface", "cbr0", "--dst", dst.Addr().String(), "--dport", fmt.Sprint(dst.Port())}
	out, ok := runIn(s, node.NS, bin, args...)
	if !ok {
		return
	}
	// The summary; the full text then lists every path rule by rule.
	summary, _, _ := strings.Cut(out, "\nPath 1")
	indent(summary)
	fmt.Printf("    (then every path rule by rule; add -o json for scripts)\n")

	js, err := node.NS.Run(s.Context(), bin, append(args, "-o", "json")...)
	if err != nil {
		s.Errorf("iptproxy trace -o json: %v", err)
		return
	}
	var r explain.TraceReport
	if err := json.Unmarshal([]byte(js), &r); err != nil || len(r.Paths) == 0 {
		s.Errorf("iptproxy trace -o json: %v (%d paths)", err, len(r.Paths))
		return
	}
	step("the path of that packet through the chains (path 1 of %d)", len(r.Paths))
	drawPath(r.Paths[0], fmt.Sprintf("pod client %s -> %s", src, dst))
}

// drawPath draws one traced path as a column of boxes, one per chain that
// did something to the packet, each with the rule that matched and a note.
func drawPath(p explain.Path, what string) {
	fmt.Printf("\n      %s\n", what)
	for _, st := range interesting(p.Steps) {
		fmt.Println("        |")
		fmt.Println("        v")
		if st.Table == "" { // the routing decision
			fmt.Printf("    routing: %s\n", st.Detail)
			continue
		}
		title := st.Table + " " + st.Chain
		rule := describe(st)
		width := max(len(title), len(rule)) + 2
		fmt.Printf("    +%s+   %s\n", strings.Repeat("-", width), note(st.Chain))
		fmt.Printf("    | %-*s |\n", width-2, title)
		fmt.Printf("    | %-*s |\n", width-2, rule)
		fmt.Printf("    +%s+\n", strings.Repeat("-", width))
	}
	fmt.Println("        |")
	fmt.Println("        v")
	masq := "not masqueraded: the pod sees the client's own address"
	if p.Masqueraded {
		masq = "masqueraded: the pod sees the node's address as the source"
	}
	fmt.Printf("    out to %s (%s, p=%.1f%%)\n", p.Destination, masq, 100*p.Probability)
}

// interesting keeps the steps an operator needs to follow the packet: the
// rule of each chain that matched (jump, DNAT, mark, masquerade, verdict)
// and the routing decision, without chains the packet only passed through.
func interesting(steps []trace.Step) []trace.Step {
	var out []trace.Step
	for i, st := range steps {
		switch st.Action {
		case trace.ActionSkip, trace.ActionMatch, trace.ActionPolicy:
			continue
		case trace.ActionReturn:
			// "return" at the end of a chain: nothing happened there.
			continue
		case trace.ActionJump, trace.ActionGoto:
			// A jump into a chain that returns without doing anything.
			if i+1 < len(steps) && steps[i+1].Chain == st.Detail && steps[i+1].Action == trace.ActionReturn {
				continue
			}
		}
		out = append(out, st)
	}
	return out
}

// describe is the matched rule in a few words.
func describe(st trace.Step) string {
	rule := fmt.Sprintf("rule %d: ", st.Rule)
	switch st.Action {
	case trace.ActionJump, trace.ActionGoto:
		var cond []string
		for _, m := range []string{"-p ", "-d ", "--dport "} {
			if v, ok := field(st.Text, m); ok {
				cond = append(cond, strings.TrimSpace(m)+" "+v)
			}
		}
		if v, ok := field(st.Text, "--probability "); ok {
			if p, err := strconv.ParseFloat(v, 64); err == nil {
				cond = append(cond, fmt.Sprintf("random, taken with p=%.3f", p))
			}
		} else if strings.HasPrefix(st.Detail, "KUBE-SEP-") {
			cond = append(cond, "the last endpoint: whatever is left")
		}
		if len(cond) == 0 {
			cond = append(cond, "every packet")
		}
		return rule + strings.Join(cond, " ") + " -> " + st.Detail
	case trace.ActionDNAT:
		return rule + "DNAT " + st.Detail
	}
	return rule + string(st.Action) + " " + st.Detail
}

// field returns the word after flag in an iptables rule.
func field(text, flag string) (string, bool) {
	_, after, ok := strings.Cut(text, flag)
	if !ok {
		return "", false
	}
	word, _, _ := strings.Cut(after, " ")
	return word, true
}

// note explains what a chain is for, in one line.
func note(chain string) string {
	switch {
	case chain == "PREROUTING":
		return "built-in hook: every packet arriving on the node passes here"
	case chain == "OUTPUT":
		return "built-in hook: every packet the node itself sends passes here"
	case chain == "POSTROUTING":
		return "built-in hook: every packet leaving the node passes here"
	case chain == "FORWARD":
		return "built-in hook: packets routed through the node"
	case chain == "KUBE-SERVICES":
		return "\"which Service?\": matches destination IP and port"
	case strings.HasPrefix(chain, "KUBE-SVC-DSP-"):
		return "iptproxy's dispatch tree: narrows the destination in a few rules"
	case strings.HasPrefix(chain, "KUBE-SVC-") || strings.HasPrefix(chain, "KUBE-SVL-"):
		return "\"which endpoint?\": one rule per endpoint, picked at random"
	case strings.HasPrefix(chain, "KUBE-SEP-"):
		return "one endpoint: rewrites the destination to the pod (DNAT)"
	case strings.HasPrefix(chain, "KUBE-EXT-"):
		return "traffic from outside: mark for masquerade, then the Service"
	case chain == "KUBE-NODEPORTS":
		return "\"which NodePort?\": matches the destination port"
	case chain == "KUBE-MARK-MASQ":
		return "marks the packet to be masqueraded on the way out"
	case chain == "KUBE-POSTROUTING":
		return "masquerades (SNAT) the packets marked on the way in"
	case chain == "KUBE-FORWARD":
		return "lets marked and established Service traffic through"
	}
	return ""
}

// spread prints how many of n answers each backend gave, with the
// percentages and the range a fair spread falls in.
func spread(counts map[string]int, backends []string, n int) {
	fmt.Printf("    %d requests:\n", n)
	for _, b := range slices.Concat(backends, []string{"(error)"}) {
		c, ok := counts[b]
		if !ok && b == "(error)" {
			continue
		}
		pct := 100 * float64(c) / float64(n)
		fmt.Printf("      %-8s %4d  %5.1f%%  %s\n", b, c, pct, strings.Repeat("#", int(math.Round(pct/2))))
	}
	p := 1 / float64(len(backends))
	margin := 200 * math.Sqrt(p*(1-p)/float64(n))
	fmt.Printf("    expected %.1f%% each; with %d requests a fair spread lands within about +-%.0f points of it\n", 100*p, n, margin)
	fmt.Println("    19 times in 20 (two standard deviations: each new connection is one independent random pick)")
}
