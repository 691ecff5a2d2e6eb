// Command chaindiagram draws kube-proxy's nat KUBE-SERVICES layout beside
// iptproxy's dispatch tree, from a real render: it makes N ClusterIP
// Services, renders them with "iptproxy render" (the daemon's own code),
// traces a packet to the Service that comes last in kube-proxy's list with
// "iptproxy trace", and writes a Graphviz graph with that packet's path in
// red. hack/diagram.sh (make diagram) turns it into docs/images/chains.svg
// and chains.png.
//
//	go run ./hack/chaindiagram [-services 48] > chains.dot
//
// kube-proxy's side is the same rules without the tree: iptproxy's leaves
// hold kube-proxy's KUBE-SERVICES rules unchanged (a chain of at most 16
// rules is kube-proxy's layout byte for byte), so concatenating them gives
// kube-proxy's list (in one of the orders kube-proxy's map iteration
// produces).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/cli"
	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/iptables"
)

func main() {
	n := flag.Int("services", 48, "number of ClusterIP Services (more than 16 makes a tree)")
	flag.Parse()
	if err := run(os.Stdout, *n); err != nil {
		fmt.Fprintln(os.Stderr, "chaindiagram:", err)
		os.Exit(1)
	}
}

// iptproxy runs one iptproxy subcommand in-process.
func iptproxy(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	env := cli.Env{Stdout: &out, Stderr: &errOut, Logger: klog.Logger{},
		Hostname:       func() (string, error) { return "node-a", nil },
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil }}
	if code := cli.Run(context.Background(), env, args); code != 0 {
		return "", fmt.Errorf("iptproxy %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String(), nil
}

// objects writes n Services with one endpoint each, their cluster IPs
// spread over 172.30.0.0/16 (deterministically).
func objects(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n")
	for i := range n {
		h := uint32(i+1) * 2654435761 // Knuth's multiplicative hash: spread, repeatable
		ip := fmt.Sprintf("172.30.%d.%d", (h>>8)&0xff, 1+h%254)
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {namespace: demo, name: svc-%02d}
spec: {clusterIP: %s, clusterIPs: [%s], ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: demo, name: svc-%02d-1, labels: {kubernetes.io/service-name: svc-%02d}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: [10.244.%d.%d], conditions: {ready: true}}]
`, i, ip, ip, i, i, 1+i/200, 1+i%200)
	}
	return b.String()
}

// rule is one rule of a chain in the rendered payload.
type rule struct {
	text   string
	target string
	dst    string // -d
	cmt    string // --comment
}

type payload struct {
	chains map[string][]rule
}

// parse reads the nat table of a restore payload with the daemon's save
// reader.
func parse(text string) (payload, error) {
	p := payload{chains: map[string][]rule{}}
	saved, err := iptables.ParseSave([]byte(text))
	if err != nil {
		return p, err
	}
	nat := saved.Table(iptables.TableNAT)
	if nat == nil {
		return p, fmt.Errorf("the payload holds no nat table")
	}
	for _, c := range nat.Chains {
		for _, r := range c.Rules {
			p.chains[c.Name] = append(p.chains[c.Name], rule{text: r.String(), target: r.Target(), dst: argAfter(r, "-d"), cmt: r.Comment()})
		}
	}
	return p, nil
}

// argAfter returns the argument that follows flag in r ("" if none).
func argAfter(r iptables.Rule, flag string) string {
	args := r.Args()
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

func isDispatch(c string) bool { return strings.HasPrefix(c, "KUBE-SVC-DSP-") }

// flatten lists the Service rules under chain, depth first: kube-proxy's
// KUBE-SERVICES.
func (p payload) flatten(chain string) []rule {
	var out []rule
	for _, r := range p.chains[chain] {
		if isDispatch(r.target) {
			out = append(out, p.flatten(r.target)...)
		} else {
			out = append(out, r)
		}
	}
	return out
}

func run(w io.Writer, n int) error {
	dir, err := os.MkdirTemp("", "chaindiagram")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	objs := filepath.Join(dir, "objects.yaml")
	if err := os.WriteFile(objs, []byte(objects(n)), 0o600); err != nil {
		return err
	}
	text, err := iptproxy("render", "-f", objs, "--node", "node-a", "--family", "IPv4")
	if err != nil {
		return err
	}
	p, err := parse(text)
	if err != nil {
		return err
	}
	flat := p.flatten("KUBE-SERVICES")
	var svcRules []rule
	for _, r := range flat {
		if strings.HasPrefix(r.target, "KUBE-SVC-") {
			svcRules = append(svcRules, r)
		}
	}
	if len(svcRules) == 0 {
		return fmt.Errorf("no Service rules rendered")
	}
	last := svcRules[len(svcRules)-1]
	ip := strings.TrimSuffix(last.dst, "/32")

	js, err := iptproxy("trace", "-f", objs, "--node", "node-a", "--src", "10.244.9.9", "--in-interface", "cbr0",
		"--dst", ip, "--dport", "80", "-o", "json")
	if err != nil {
		return err
	}
	var tr explain.TraceReport
	if err := json.Unmarshal([]byte(js), &tr); err != nil || len(tr.Paths) == 0 {
		return fmt.Errorf("trace -o json: %v", err)
	}
	// The rules the packet crossed in the dispatch chains, and which rule
	// of each chain matched.
	crossed := 0
	matched := map[string]int{}
	for _, st := range tr.Paths[0].Steps {
		if st.Table == "nat" && (st.Chain == "KUBE-SERVICES" || isDispatch(st.Chain)) && st.Rule > 0 {
			crossed += st.Rule
			matched[st.Chain] = st.Rule
		}
	}
	kpCrossed := 0
	for i, r := range flat {
		if r.target == last.target {
			kpCrossed = i + 1
		}
	}
	return draw(w, p, flat, last, ip, matched, crossed, kpCrossed, n)
}

const (
	red   = "#c0392b"
	grey  = "#7f8c8d"
	hdrKP = "#fdebd0"
	hdrIP = "#d6eaf8"
)

// row formats one rule of a chain box: destination and target.
func row(port string, r rule, hit bool) string {
	what := r.dst
	switch {
	case what == "" && strings.Contains(r.text, "--dst-type LOCAL"):
		what = "dst-type LOCAL"
	case what == "":
		what = "any"
	}
	color := "black"
	if hit {
		color = red
	}
	target := r.target
	if len(target) > 22 {
		target = target[:22] + "…"
	}
	return fmt.Sprintf(`<tr><td align="left"><font color="%s">-d %s</font></td><td align="left" port="%s"><font color="%s">→ %s</font></td></tr>`,
		color, html.EscapeString(what), port, color, html.EscapeString(target))
}

func gap(k int) string {
	return fmt.Sprintf(`<tr><td colspan="2"><font color="%s"><i>… %d more rules …</i></font></td></tr>`, grey, k)
}

// box renders a chain as an HTML-like table: a header, the first rules,
// the matched one, the last one; ports name the rows that get edges.
func box(title, subtitle, header string, rules []rule, hit int, ports map[int]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<<table border="1" cellborder="0" cellspacing="0" cellpadding="3"><tr><td colspan="2" bgcolor="%s"><b>%s</b><br/><font point-size="10">%s</font></td></tr>`,
		header, html.EscapeString(title), html.EscapeString(subtitle))
	show := map[int]bool{0: true, 1: true, len(rules) - 1: true}
	if hit >= 0 {
		show[hit] = true
	}
	for i := range rules {
		if _, ok := ports[i]; ok {
			show[i] = true
		}
	}
	skipped := 0
	for i, r := range rules {
		if !show[i] {
			skipped++
			continue
		}
		if skipped > 0 {
			b.WriteString(gap(skipped))
			skipped = 0
		}
		port := ports[i]
		if port == "" {
			port = fmt.Sprintf("r%d", i)
		}
		b.WriteString(row(port, r, i == hit))
	}
	b.WriteString("</table>>")
	return b.String()
}

func draw(w io.Writer, p payload, flat []rule, last rule, ip string, matched map[string]int, crossed, kpCrossed, n int) error {
	var b strings.Builder
	b.WriteString("digraph chains {\n  rankdir=LR; nodesep=0.25; ranksep=0.5; fontname=\"Helvetica\"; fontsize=16; labelloc=t;\n")
	fmt.Fprintf(&b, "  label=<nat KUBE-SERVICES for %d ClusterIP Services, rendered by iptproxy; in red a packet to %s:80 (%s)>;\n", n, ip, html.EscapeString(strings.TrimSuffix(last.cmt, " cluster IP")))
	b.WriteString("  node [shape=plaintext fontname=\"Helvetica\" fontsize=11]; edge [color=\"#555555\" arrowsize=0.7];\n")

	// iptproxy: the tree.
	b.WriteString("  subgraph cluster_ipt {\n    label=<<b>iptproxy</b>: a trie of small KUBE-SVC-DSP-* chains on the destination address>; style=rounded; color=\"#5dade2\";\n")
	id := map[string]string{}
	var order []string
	var visit func(c string)
	visit = func(c string) {
		if _, ok := id[c]; ok {
			return
		}
		id[c] = fmt.Sprintf("c%d", len(id))
		order = append(order, c)
		for _, r := range p.chains[c] {
			if isDispatch(r.target) {
				visit(r.target)
			}
		}
	}
	visit("KUBE-SERVICES")
	var edges []string
	for _, c := range order {
		rules := p.chains[c]
		hit := -1
		if m, ok := matched[c]; ok {
			hit = m - 1
		}
		ports := map[int]string{}
		for i, r := range rules {
			if isDispatch(r.target) {
				ports[i] = fmt.Sprintf("p%d", i)
				color, width := "#555555", "1"
				if i == hit {
					color, width = red, "2"
				}
				edges = append(edges, fmt.Sprintf("    %s:p%d -> %s [color=\"%s\" penwidth=%s];", id[c], i, id[r.target], color, width))
			}
		}
		kind := "internal: one rule per child prefix"
		if c == "KUBE-SERVICES" {
			kind = "root"
		} else if len(ports) == 0 {
			kind = "leaf: kube-proxy's rules for this prefix"
		}
		sub := fmt.Sprintf("%s; %d rules", kind, len(rules))
		if hit >= 0 {
			sub += fmt.Sprintf("; crosses %d", hit+1)
		}
		if hit >= 0 && !isDispatch(rules[hit].target) {
			ports[hit] = "hit"
			edges = append(edges, fmt.Sprintf("    %s:hit -> iptsvc [color=\"%s\" penwidth=2];", id[c], red))
		}
		title := c
		if len(title) > 26 {
			title = title[:26]
		}
		fmt.Fprintf(&b, "    %s [label=%s];\n", id[c], box(title, sub, hdrIP, rules, hit, ports))
	}
	fmt.Fprintf(&b, "    iptsvc [label=<<table border=\"1\" cellborder=\"0\" bgcolor=\"white\"><tr><td><font color=\"%s\">%s</font><br/><font point-size=\"10\">per-Service chain: unchanged</font></td></tr></table>>];\n", red, html.EscapeString(last.target))
	b.WriteString(strings.Join(edges, "\n") + "\n")
	fmt.Fprintf(&b, "    total [shape=note fontsize=11 label=\"this packet crosses %d rules here\\n(%d with kube-proxy's list)\"];\n  }\n", crossed, kpCrossed)
	// kube-proxy: one list.
	kpHit := kpCrossed - 1
	b.WriteString("  subgraph cluster_kp {\n    label=<<b>kube-proxy</b>: one rule per Service port, walked in order>; style=rounded; color=\"#e59866\";\n")
	fmt.Fprintf(&b, "    kp [label=%s];\n", box("KUBE-SERVICES", fmt.Sprintf("%d rules; this packet crosses %d", len(flat), kpCrossed), hdrKP, flat, kpHit, map[int]string{kpHit: "hit"}))
	fmt.Fprintf(&b, "    kpsvc [label=<<table border=\"1\" cellborder=\"0\" bgcolor=\"white\"><tr><td><font color=\"%s\">%s</font><br/><font point-size=\"10\">per-Service chain: the same on both sides</font></td></tr></table>>];\n", red, html.EscapeString(last.target))
	fmt.Fprintf(&b, "    kp:hit -> kpsvc [color=\"%s\" penwidth=2];\n  }\n", red)

	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
