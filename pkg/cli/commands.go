package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

func runShow(ctx context.Context, env Env, args []string) error {
	var src sourceFlags
	var live bool
	var backendFlag string
	fs := newFlagSet(&env, "show", "show service NAMESPACE/NAME [flags]")
	src.add(fs)
	fs.BoolVar(&live, "live", false, "trace through this node's kernel rules instead of the rendered ones (run on the node)")
	fs.StringVar(&backendFlag, "backend", "", "iptables backend of the live rules: nft or legacy (default: detected)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkOutput(src.output); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) != 2 || (rest[0] != "service" && rest[0] != "svc") {
		return usagef("want \"show service NAMESPACE/NAME\", got %q", rest)
	}
	ns, name, ok := strings.Cut(rest[1], "/")
	if !ok || ns == "" || name == "" {
		return usagef("want NAMESPACE/NAME, got %q", rest[1])
	}
	models, err := src.models(ctx, env)
	if err != nil {
		return err
	}
	if live {
		for _, m := range models {
			rs, node, err := liveRules(ctx, env, backendFlag, m.Config.Family)
			if err != nil {
				return err
			}
			m.Tables, m.Node = rs, node
		}
	}
	r, err := explain.ShowService(models, types.NamespacedName{Namespace: ns, Name: name})
	if err != nil {
		return err
	}
	if !live && src.nodeIPsUnknown(models) {
		for _, p := range r.Ports {
			if p.NodePort != 0 {
				fmt.Fprintf(env.Stderr, "warning: %s: NodePort %d is not shown: give --node-ip (or put the Node in -f)\n", src.noNodeIPs(r.Node), p.NodePort)
				break
			}
		}
	}
	if src.output == "json" {
		return explain.WriteJSON(env.Stdout, r)
	}
	return explain.WriteService(env.Stdout, r)
}

// renderedFamily is one family of render's JSON output.
type renderedFamily struct {
	Family  v1.IPFamily `json:"ipFamily"`
	Payload string      `json:"payload"`
}

func runRender(ctx context.Context, env Env, args []string) error {
	var src sourceFlags
	var family string
	fs := newFlagSet(&env, "render", "render [flags]")
	src.add(fs)
	fs.StringVar(&family, "family", "", "render only this IP family (IPv4 or IPv6); default both, primary first")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkOutput(src.output); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("render takes no arguments, got %q", fs.Args())
	}
	if family != "" && family != string(v1.IPv4Protocol) && family != string(v1.IPv6Protocol) {
		return usagef("unknown --family %q (want IPv4 or IPv6)", family)
	}
	models, err := src.models(ctx, env)
	if err != nil {
		return err
	}
	var out []renderedFamily
	for _, m := range models {
		if family == "" || string(m.Config.Family) == family {
			out = append(out, renderedFamily{Family: m.Config.Family, Payload: string(m.Payload())})
		}
	}
	if src.output == "json" {
		return explain.WriteJSON(env.Stdout, out)
	}
	// The same layout as the daemon's /debug/rules: a comment line per
	// family (iptables-restore skips it), then the payload.
	for _, f := range out {
		if _, err := fmt.Fprintf(env.Stdout, "# %s\n%s", f.Family, f.Payload); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
	}
	return nil
}

// diffFamily is one family of diff's output.
type diffFamily struct {
	Family v1.IPFamily `json:"ipFamily"`
	*explain.DiffReport
}

func runDiff(ctx context.Context, env Env, args []string) error {
	var src sourceFlags
	var backendFlag string
	fs := newFlagSet(&env, "diff", "diff [flags]")
	src.add(fs)
	src.onNode = true
	fs.StringVar(&backendFlag, "backend", "", "iptables backend to read: nft or legacy (default: detected)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkOutput(src.output); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("diff takes no arguments, got %q", fs.Args())
	}
	backend, err := chooseBackend(ctx, env, backendFlag)
	if err != nil {
		return err
	}
	models, err := src.models(ctx, env)
	if err != nil {
		return err
	}
	var out []diffFamily
	for _, m := range models {
		if err := iptables.Present(ctx, m.Config.Family, backend); err != nil {
			env.Logger.V(2).Info("Skipping IP family without iptables support", "ipFamily", m.Config.Family, "err", err.Error())
			continue
		}
		ipt, err := iptables.New(m.Config.Family, backend, iptables.WithLogger(env.Logger))
		if err != nil {
			return err
		}
		saves := map[iptables.Table][]byte{}
		var all []byte
		for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
			if saves[t], err = ipt.Save(ctx, t); err != nil {
				return fmt.Errorf("reading the %s %s table: %w", m.Config.Family, t, err)
			}
			all = append(all, saves[t]...)
		}
		d := explain.Diff(m.Desired, saves)
		kernel, err := memory.Parse(all, m.Config.Family)
		if err != nil {
			return fmt.Errorf("parsing the kernel's %s rules: %w", m.Config.Family, err)
		}
		base, err := explain.BaseTables(ctx, env.Logger, m.Config)
		if err != nil {
			return err
		}
		if err := d.CheckJumps(base.Ruleset(), kernel); err != nil {
			return err
		}
		out = append(out, diffFamily{Family: m.Config.Family, DiffReport: d})
	}
	if src.output == "json" {
		return explain.WriteJSON(env.Stdout, out)
	}
	for _, d := range out {
		fmt.Fprintf(env.Stdout, "%s:\n", d.Family)
		if err := explain.WriteDiff(env.Stdout, d.DiffReport); err != nil {
			return err
		}
	}
	return nil
}

// chooseBackend is iptables.ChooseBackend with the command's errors.
// Detection logs its reason through env's logger: quiet unless -v.
func chooseBackend(ctx context.Context, env Env, flag string) (iptables.Backend, error) {
	b, err := iptables.ChooseBackend(klog.NewContext(ctx, env.Logger), flag)
	switch {
	case errors.Is(err, iptables.ErrUnknownBackend):
		return "", usageError{err}
	case err != nil:
		return "", fmt.Errorf("detecting the iptables backend (give --backend): %w", err)
	}
	return b, nil
}

// traceFlags are trace's own flags.
type traceFlags struct {
	src, dst, proto, inIface string
	sport, dport             int
	rulesFile                string
	fromAPI                  bool
	backend                  string
	misses                   bool
}

func runTrace(ctx context.Context, env Env, args []string) error {
	var src sourceFlags
	var tf traceFlags
	fs := newFlagSet(&env, "trace", "trace --src IP --dst IP --dport PORT [--proto tcp|udp|sctp] [--in-interface IF] [flags]\n\n"+
		"Rules: the live kernel's (default), --rules FILE (iptables-save or restore text, e.g. from render),\n"+
		"or rendered from objects: -f FILE... or --from-api.")
	src.add(fs)
	fs.StringVar(&tf.src, "src", "", "source address (a local address without --in-interface: a packet from the node itself)")
	fs.StringVar(&tf.dst, "dst", "", "destination address")
	fs.IntVar(&tf.dport, "dport", 0, "destination port")
	fs.IntVar(&tf.sport, "sport", 0, "source port")
	fs.StringVar(&tf.proto, "proto", "tcp", "protocol: tcp, udp or sctp")
	fs.StringVar(&tf.inIface, "in-interface", "", "interface the packet arrives on (empty: from the node itself if --src is local)")
	fs.StringVar(&tf.rulesFile, "rules", "", "trace through the rules in this file instead of the kernel's")
	fs.BoolVar(&tf.fromAPI, "from-api", false, "trace through the rules rendered from the API server's objects")
	fs.StringVar(&tf.backend, "backend", "", "iptables backend of the live rules: nft or legacy (default: detected)")
	fs.BoolVar(&tf.misses, "misses", false, "also list every rule that did not match, with the condition that failed")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkOutput(src.output); err != nil {
		return err
	}
	pkt, err := tf.packet(fs)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("trace takes no arguments, got %q", fs.Args())
	}
	family := proxy.FamilyOf(pkt.Dst)
	var (
		rs   *ruleset.Ruleset
		node trace.Node
	)
	switch {
	case len(src.files) > 0 || tf.fromAPI:
		if tf.rulesFile != "" {
			return usagef("--rules and -f/--from-api exclude each other")
		}
		models, err := src.models(ctx, env)
		if err != nil {
			return err
		}
		if src.nodeIPsUnknown(models) {
			if svc := src.nodePortOf(pkt.DstPort, pkt.Protocol); svc != "" {
				return usagef("--dport %d is the NodePort of %s, but %s: give --node-ip", pkt.DstPort, svc, src.noNodeIPs(models[0].Config.NodeName))
			}
		}
		for _, m := range models {
			if m.Config.Family == family {
				rs, node = m.Tables, m.Node
			}
		}
	case tf.rulesFile != "":
		rs, node, err = rulesFromFile(ctx, env, &src, tf.rulesFile, family)
	default:
		rs, node, err = liveRules(ctx, env, tf.backend, family)
	}
	if err != nil {
		return err
	}
	if rs == nil {
		return fmt.Errorf("no %s rules to trace", family)
	}
	if tf.inIface == "" && node.IsLocal(pkt.Src) {
		pkt.Local = true
	}
	r, err := explain.TraceWithOptions(rs, node, pkt, trace.Options{Misses: tf.misses})
	if err != nil {
		return err
	}
	if tf.rulesFile != "" && len(src.nodeIPs) == 0 && r.Verdict == explain.VerdictNotService && len(rs.ChainRules("nat", "KUBE-NODEPORTS")) > 0 {
		fmt.Fprintf(env.Stderr, "warning: no --node-ip: the node's addresses are unknown, so a packet to a NodePort on the node is traced as not a Service\n")
	}
	if src.output == "json" {
		return explain.WriteJSON(env.Stdout, r)
	}
	return explain.WriteTrace(env.Stdout, r)
}

func (tf *traceFlags) packet(fs *pflag.FlagSet) (trace.Packet, error) {
	var pkt trace.Packet
	// Worded as cobra words it for kubectl's required flags.
	var missing []string
	for _, f := range []string{"dport", "dst", "src"} {
		if !fs.Changed(f) {
			missing = append(missing, strconv.Quote(f))
		}
	}
	if len(missing) > 0 {
		return pkt, usagef("required flag(s) %s not set", strings.Join(missing, ", "))
	}
	s, err := netip.ParseAddr(tf.src)
	if err != nil {
		return pkt, usagef("--src: %w", err)
	}
	d, err := netip.ParseAddr(tf.dst)
	if err != nil {
		return pkt, usagef("--dst: %w", err)
	}
	s, d = s.Unmap(), d.Unmap()
	if s.Is4() != d.Is4() {
		return pkt, usagef("--src %s and --dst %s are of different IP families", s, d)
	}
	if tf.dport <= 0 || tf.dport > 65535 || tf.sport < 0 || tf.sport > 65535 {
		return pkt, usagef("--dport must be 1-65535 and --sport 0-65535")
	}
	proto := strings.ToLower(tf.proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return pkt, usagef("--proto %q: want tcp, udp or sctp", tf.proto)
	}
	return trace.Packet{Protocol: proto, Src: s, Dst: d, SrcPort: tf.sport, DstPort: tf.dport, InInterface: tf.inIface}, nil
}

// rulesFromFile loads restore or save text; the node's addresses come from
// --node-ip (or the Node in -f files).
func rulesFromFile(ctx context.Context, env Env, src *sourceFlags, path string, family v1.IPFamily) (*ruleset.Ruleset, trace.Node, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, trace.Node{}, fmt.Errorf("reading rules: %w", err)
	}
	o, err := src.options(env)
	if err != nil {
		return nil, trace.Node{}, err
	}
	nodeName, err := src.nodeName(env, o)
	if err != nil {
		return nil, trace.Node{}, err
	}
	node, err := src.withNodeIPs(&explain.Objects{}, nodeName)
	if err != nil {
		return nil, trace.Node{}, err
	}
	for _, cfg := range configs(env, o, nodeName, node, true) {
		if cfg.Family != family {
			continue
		}
		rs, err := explain.LoadRules(ctx, env.Logger, text, cfg)
		if err != nil {
			return nil, trace.Node{}, err
		}
		return rs, trace.Node{LocalAddrs: cfg.NodeIPs}, nil
	}
	return nil, trace.Node{}, fmt.Errorf("no configuration for %s", family)
}

// liveRules reads the kernel's filter and nat tables; the node's addresses
// are the machine's.
func liveRules(ctx context.Context, env Env, backendFlag string, family v1.IPFamily) (*ruleset.Ruleset, trace.Node, error) {
	backend, err := chooseBackend(ctx, env, backendFlag)
	if err != nil {
		return nil, trace.Node{}, err
	}
	ipt, err := iptables.New(family, backend, iptables.WithLogger(env.Logger))
	if err != nil {
		return nil, trace.Node{}, err
	}
	var text []byte
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		save, err := ipt.Save(ctx, t)
		if err != nil {
			return nil, trace.Node{}, fmt.Errorf("reading the %s %s table: %w", family, t, err)
		}
		text = append(text, save...)
	}
	rs, err := memory.Parse(text, family)
	if err != nil {
		return nil, trace.Node{}, fmt.Errorf("parsing the kernel's rules: %w", err)
	}
	addrs, err := env.InterfaceAddrs()
	if err != nil {
		return nil, trace.Node{}, fmt.Errorf("listing local addresses: %w", err)
	}
	var node trace.Node
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				node.LocalAddrs = append(node.LocalAddrs, ip.Unmap())
			}
		}
	}
	return rs, node, nil
}
