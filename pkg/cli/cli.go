// Package cli implements iptproxy's operator subcommands: show, trace,
// render and diff. main dispatches to Run when the first argument names
// one of them; without a subcommand the binary is the kube-proxy drop-in.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/iptproxy/iptproxy/pkg/app"
	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Commands are the subcommand names Run accepts.
var Commands = []string{"show", "trace", "render", "diff"}

// IsCommand reports whether arg names a subcommand.
func IsCommand(arg string) bool { return slices.Contains(Commands, arg) }

// Env is what a command reads and writes besides its arguments.
type Env struct {
	Stdout, Stderr io.Writer
	// Logger receives the log lines of the daemon code the commands run
	// (backend detection, the proxier's sync). It should discard them:
	// operator commands print their answer, not logs. With -v N a command
	// replaces it with a logger writing to Stderr at verbosity N.
	Logger klog.Logger
	// Hostname returns the default node name.
	Hostname func() (string, error)
	// InterfaceAddrs lists the machine's addresses (live traces, and
	// nodePortAddresses CIDRs when no --node-ip is given).
	InterfaceAddrs func() ([]net.Addr, error)
}

// DefaultEnv is the process's environment. The daemon code the commands
// run (the proxier's sync) logs; commands print their answer instead, so
// the logger discards.
func DefaultEnv() Env {
	return Env{Stdout: os.Stdout, Stderr: os.Stderr, Logger: klog.Background().V(100), Hostname: os.Hostname, InterfaceAddrs: net.InterfaceAddrs}
}

// Run runs subcommand args[0] with args[1:] and returns the exit status:
// 0 on success (and for --help, printed on Stdout), 2 for a bad command
// line, 1 when the command failed.
func Run(ctx context.Context, env Env, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, "Error: missing command\n\n"+CommandsHelp+"\nRun 'iptproxy --help' for usage.\n")
		return 2
	}
	if args[0] == "help" {
		if len(args) == 1 {
			fmt.Fprint(env.Stdout, CommandsHelp)
			return 0
		}
		return Run(ctx, env, []string{args[1], "--help"})
	}
	if !IsCommand(args[0]) {
		fmt.Fprint(env.Stderr, UnknownCommand(args[0]))
		return 2
	}
	var err error
	switch args[0] {
	case "show":
		err = runShow(ctx, env, args[1:])
	case "trace":
		err = runTrace(ctx, env, args[1:])
	case "render":
		err = runRender(ctx, env, args[1:])
	case "diff":
		err = runDiff(ctx, env, args[1:])
	}
	var u usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.As(err, &u):
		fmt.Fprintf(env.Stderr, "iptproxy %s: %v\nRun 'iptproxy %s --help' for usage.\n", args[0], err, args[0])
		return 2
	}
	fmt.Fprintf(env.Stderr, "iptproxy %s: %v\n", args[0], err)
	return 1
}

// CommandsHelp lists the subcommands, for the main command's --help.
const CommandsHelp = `Commands (each takes --help):
  show      show service NAMESPACE/NAME: addresses, chains, each endpoint's chance, who is left out and why
  trace     where one packet goes, rule by rule (live rules, a rules file, or rendered from objects)
  render    the restore payload the daemon would write for a node (no kernel needed)
  diff      what the daemon would change in this node's tables now
  help      help about a command
`

// UnknownCommand is the message for an argument that names no command,
// worded as cobra (kubectl) words it, with suggestions.
func UnknownCommand(arg string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Error: unknown command %q for \"iptproxy\"\n", arg)
	if s := suggestions(arg); len(s) > 0 {
		b.WriteString("\nDid you mean this?\n")
		for _, c := range s {
			fmt.Fprintf(&b, "\t%s\n", c)
		}
	}
	b.WriteString("\nRun 'iptproxy --help' for usage.\n")
	return b.String()
}

// suggestions are the commands within a Levenshtein distance of 2 of typed,
// or that it is a prefix of, as cobra suggests them.
func suggestions(typed string) []string {
	typed = strings.ToLower(typed)
	var out []string
	for _, c := range append(slices.Clone(Commands), "help") {
		if levenshtein(typed, c) <= 2 || (typed != "" && strings.HasPrefix(c, typed)) {
			out = append(out, c)
		}
	}
	return out
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// usageError marks a bad command line.
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// sourceFlags choose where the objects and configuration come from and
// which node the rules are for.
type sourceFlags struct {
	files      []string
	kubeconfig string
	node       string
	config     string
	nodeIPs    []string
	output     string

	// onNode is set by commands that run on the node itself (diff): its
	// interfaces are the node's, even when the objects come from files.
	onNode bool

	// objs are the objects models read.
	objs *explain.Objects
}

func (s *sourceFlags) add(fs *pflag.FlagSet) {
	fs.StringSliceVarP(&s.files, "filename", "f", nil, "YAML or JSON files of Services, EndpointSlices and (optionally) the Node; when given, the API server is not contacted")
	fs.StringVar(&s.kubeconfig, "kubeconfig", "", "kubeconfig for read-only API access (default: clientConnection.kubeconfig of --config, then $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&s.node, "node", "", "node to render the rules for (default: this machine's hostname, or hostnameOverride from --config)")
	fs.StringVar(&s.config, "config", "", "KubeProxyConfiguration file the daemon runs with (its hostnameOverride, clientConnection.kubeconfig, clusterCIDR, nodePortAddresses, ... are used)")
	fs.StringSliceVar(&s.nodeIPs, "node-ip", nil, "the node's addresses, when the Node object is not available or to override it (needed offline for NodePorts when -f holds no Node)")
	addOutput(fs, &s.output)
}

func addOutput(fs *pflag.FlagSet, out *string) {
	fs.StringVarP(out, "output", "o", "text", "output format: text or json")
}

func checkOutput(out string) error {
	if out != "text" && out != "json" {
		return usagef("unknown output format %q (want text or json)", out)
	}
	return nil
}

// options loads the KubeProxyConfiguration as the daemon does (defaults
// without --config), completed and validated.
func (s *sourceFlags) options(env Env) (*options.Options, error) {
	o := options.NewOptions()
	o.Logger = env.Logger
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	o.ConfigFile = s.config
	if err := o.Complete(fs); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	return o, nil
}

// nodeName is --node, else hostnameOverride, else the hostname.
func (s *sourceFlags) nodeName(env Env, o *options.Options) (string, error) {
	if s.node != "" {
		return strings.ToLower(s.node), nil
	}
	if o.Config.HostnameOverride != "" {
		return o.NodeName()
	}
	h, err := env.Hostname()
	if err != nil {
		return "", fmt.Errorf("no --node given and no hostname: %w", err)
	}
	return strings.ToLower(strings.TrimSpace(h)), nil
}

// objects reads the objects from the files or the API. A file that holds
// no Service is worth a warning: the answer will be "not found" or "not a
// Service" for everything.
func (s *sourceFlags) objects(ctx context.Context, env Env, o *options.Options, nodeName string) (*explain.Objects, error) {
	if len(s.files) > 0 {
		all := &explain.Objects{}
		for _, f := range s.files {
			objs, err := explain.LoadFiles([]string{f}, nodeName)
			if err != nil {
				return nil, err
			}
			if len(objs.Services) == 0 {
				fmt.Fprintf(env.Stderr, "warning: %s holds no Services (iptproxy reads Services, EndpointSlices and Nodes, also inside Lists; other kinds are skipped)\n", f)
			}
			all.Services = append(all.Services, objs.Services...)
			all.Slices = append(all.Slices, objs.Slices...)
			if objs.Node != nil {
				all.Node = objs.Node
			}
		}
		return all, nil
	}
	client, err := s.client(o)
	if err != nil {
		return nil, err
	}
	return explain.LoadAPI(ctx, client, nodeName)
}

// kubeconfigPath is --kubeconfig, else the kubeconfig the daemon's
// configuration names (clientConnection.kubeconfig in --config), else ""
// for client-go's defaults ($KUBECONFIG, ~/.kube/config, in-cluster).
func (s *sourceFlags) kubeconfigPath(o *options.Options) string {
	if s.kubeconfig != "" {
		return s.kubeconfig
	}
	return o.Config.ClientConnection.Kubeconfig
}

func (s *sourceFlags) client(o *options.Options) (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = s.kubeconfigPath(o)
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("building API client configuration: %w", err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating API client: %w", err)
	}
	return c, nil
}

// node applies --node-ip to the Node object (creating one when missing).
func (s *sourceFlags) withNodeIPs(objs *explain.Objects, nodeName string) (*v1.Node, error) {
	node := objs.Node
	if len(s.nodeIPs) == 0 {
		return node, nil
	}
	if node == nil {
		node = &v1.Node{}
		node.Name = nodeName
	} else {
		node = node.DeepCopy()
	}
	node.Status.Addresses = nil
	for _, a := range s.nodeIPs {
		ip, err := netip.ParseAddr(strings.TrimSpace(a))
		if err != nil {
			return nil, usagef("--node-ip %q: %w", a, err)
		}
		node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.String()})
	}
	return node, nil
}

// configs returns the renderer configuration of each family, primary
// first, as the daemon would derive it for node.
//
// offline (objects or rules from files) never uses this machine's
// interfaces: the node is another machine, whose addresses are known only
// from its Node object or --node-ip.
func configs(env Env, o *options.Options, nodeName string, node *v1.Node, offline bool) []rules.Config {
	facts := app.NodeFacts{Name: nodeName, Node: node}
	if offline || node != nil {
		// Offline: the node's own addresses stand for its interfaces.
		facts.InterfaceAddrs = func() ([]net.Addr, error) { return nodeAddrs(node), nil }
	} else {
		facts.InterfaceAddrs = env.InterfaceAddrs
	}
	primary, cfgs := app.RulesConfigs(env.Logger, o, facts)
	out := []rules.Config{cfgs[primary]}
	for fam, c := range cfgs {
		if fam != primary {
			out = append(out, c)
		}
	}
	return out
}

func nodeAddrs(node *v1.Node) []net.Addr {
	if node == nil {
		return nil
	}
	var out []net.Addr
	for _, a := range node.Status.Addresses {
		if ip := net.ParseIP(a.Address); ip != nil {
			bits := 32
			if ip.To4() == nil {
				bits = 128
			}
			out = append(out, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
		}
	}
	return out
}

// models renders the rules of every family for the node, as the daemon
// would after a sync.
func (s *sourceFlags) models(ctx context.Context, env Env) ([]*explain.Model, error) {
	o, err := s.options(env)
	if err != nil {
		return nil, err
	}
	nodeName, err := s.nodeName(env, o)
	if err != nil {
		return nil, err
	}
	objs, err := s.objects(ctx, env, o, nodeName)
	if err != nil {
		return nil, err
	}
	node, err := s.withNodeIPs(objs, nodeName)
	if err != nil {
		return nil, err
	}
	objs.Node = node
	var models []*explain.Model
	for _, cfg := range configs(env, o, nodeName, node, len(s.nodeIPs) > 0 || (len(s.files) > 0 && !s.onNode)) {
		m, err := explain.Build(ctx, env.Logger, objs, cfg)
		if err != nil {
			return nil, err
		}
		models = append(models, m)
	}
	s.objs = objs
	return models, nil
}

// nodeIPsUnknown reports whether the models were rendered offline for a
// node whose addresses nothing told us: no Node object in the files and no
// --node-ip. NodePorts then match no address.
func (s *sourceFlags) nodeIPsUnknown(models []*explain.Model) bool {
	if len(s.files) == 0 || s.onNode {
		return false
	}
	for _, m := range models {
		if len(m.Config.NodeIPs) > 0 {
			return false
		}
	}
	return true
}

// nodePortOf returns the Service ("ns/name") whose NodePort is port/proto,
// or "".
func (s *sourceFlags) nodePortOf(port int, proto string) string {
	if s.objs == nil {
		return ""
	}
	for _, svc := range s.objs.Services {
		for _, p := range svc.Spec.Ports {
			pp := strings.ToLower(string(p.Protocol))
			if pp == "" {
				pp = "tcp"
			}
			if int(p.NodePort) == port && pp == proto {
				return svc.Namespace + "/" + svc.Name
			}
		}
	}
	return ""
}

// noNodeIPs explains why the node's addresses are unknown.
func (s *sourceFlags) noNodeIPs(nodeName string) string {
	return fmt.Sprintf("the addresses of node %q are unknown (no Node %q in the -f files and no --node-ip)", nodeName, nodeName)
}

// newFlagSet returns a flag set for a subcommand. --help prints on Stdout
// (and the command exits 0), as kubectl's do. -v N makes env's logger
// write the daemon code's log lines to Stderr at verbosity N.
func newFlagSet(env *Env, name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("iptproxy "+name, pflag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stdout, "Usage: iptproxy %s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	fs.VarP(&verbosity{env: env}, "v", "v", "log level of the log lines of the daemon code the command runs (backend detection, syncs), on stderr; none without -v")
	return fs
}

// verbosity is the -v flag.
type verbosity struct {
	env   *Env
	level int
	set   bool
}

func (v *verbosity) String() string {
	if !v.set {
		return ""
	}
	return strconv.Itoa(v.level)
}
func (v *verbosity) Type() string { return "int" }
func (v *verbosity) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a log level (0 or more)", s)
	}
	v.level, v.set = n, true
	v.env.Logger = textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(n), textlogger.Output(v.env.Stderr)))
	return nil
}

func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}
