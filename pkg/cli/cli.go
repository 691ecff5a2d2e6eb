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
	"strings"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

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
	Logger         klog.Logger
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

// Run runs subcommand args[0] with args[1:] and returns the exit status.
func Run(ctx context.Context, env Env, args []string) int {
	if len(args) == 0 || !IsCommand(args[0]) {
		fmt.Fprintf(env.Stderr, "usage: iptproxy {%s} [flags]\n", strings.Join(Commands, "|"))
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
		fmt.Fprintf(env.Stderr, "iptproxy %s: %v\n", args[0], err)
		return 2
	}
	fmt.Fprintf(env.Stderr, "iptproxy %s: %v\n", args[0], err)
	return 1
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
}

func (s *sourceFlags) add(fs *pflag.FlagSet) {
	fs.StringSliceVarP(&s.files, "filename", "f", nil, "YAML or JSON files of Services, EndpointSlices and (optionally) the Node; when given, the API server is not contacted")
	fs.StringVar(&s.kubeconfig, "kubeconfig", "", "kubeconfig for read-only API access (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&s.node, "node", "", "node to render the rules for (default: this machine's hostname, or hostnameOverride from --config)")
	fs.StringVar(&s.config, "config", "", "KubeProxyConfiguration file the daemon runs with")
	fs.StringSliceVar(&s.nodeIPs, "node-ip", nil, "the node's addresses, when the Node object is not available or to override it")
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

// objects reads the objects from the files or the API.
func (s *sourceFlags) objects(ctx context.Context, nodeName string) (*explain.Objects, error) {
	if len(s.files) > 0 {
		return explain.LoadFiles(s.files, nodeName)
	}
	client, err := s.client()
	if err != nil {
		return nil, err
	}
	return explain.LoadAPI(ctx, client, nodeName)
}

func (s *sourceFlags) client() (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = s.kubeconfig
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
func configs(env Env, o *options.Options, nodeName string, node *v1.Node, nodeIPsGiven bool) []rules.Config {
	facts := app.NodeFacts{Name: nodeName, Node: node}
	if nodeIPsGiven || node != nil {
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
	objs, err := s.objects(ctx, nodeName)
	if err != nil {
		return nil, err
	}
	node, err := s.withNodeIPs(objs, nodeName)
	if err != nil {
		return nil, err
	}
	objs.Node = node
	var models []*explain.Model
	for _, cfg := range configs(env, o, nodeName, node, len(s.nodeIPs) > 0) {
		m, err := explain.Build(ctx, env.Logger, objs, cfg)
		if err != nil {
			return nil, err
		}
		models = append(models, m)
	}
	return models, nil
}

// newFlagSet returns a flag set for a subcommand.
func newFlagSet(env Env, name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("iptproxy "+name, pflag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: iptproxy %s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	return fs
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
