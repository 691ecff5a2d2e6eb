package framework

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
)

// ClusterOptions configures NewCluster.
type ClusterOptions struct {
	// Nodes is the number of nodes to create (more can be added with
	// AddNode). Nodes are named node-1, node-2, ...
	Nodes int
	// DualStack is shorthand for IPFamilies {IPv4, IPv6}.
	DualStack bool
	// IPFamilies are the cluster's IP families, primary first: they order
	// the Service CIDRs, node IPs and pod CIDRs. Empty means {IPv4}, or
	// {IPv4, IPv6} with DualStack. Interfaces always get addresses of both
	// families.
	IPFamilies []v1.IPFamily
	// Zones are assigned to nodes round-robin (topology.kubernetes.io/zone);
	// empty means zone-a, zone-b, zone-c.
	Zones []string
	// APIServerArgs are extra kube-apiserver flags.
	APIServerArgs []string
}

// Cluster is a control plane and the namespaces of one run. Its methods are
// safe for concurrent use.
type Cluster struct {
	env      Env
	runID    string
	dir      string
	families []v1.IPFamily
	zones    []string
	host     *NS
	cp       *controlPlane
	dialer   *connTracker
	echoBin  func() (string, error)

	mu         sync.Mutex
	names      map[string]bool
	nodes      []*Node
	clients    []*Client
	namespaces []*netns.NetNS // creation order, for teardown
	procs      []*netns.Process
	lastClient int
	proxySA    *ServiceAccount
}

// validName is what node, pod and client names must look like (they become
// Kubernetes object names and parts of namespace names).
var validName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$`)

// NewCluster brings up a control plane and opts.Nodes nodes, and registers a
// cleanup on t that tears all of it down. It skips the test when a
// prerequisite is missing (see RequireCluster).
func NewCluster(t T, opts ClusterOptions) *Cluster {
	t.Helper()
	env := RequireCluster(t)
	RequireCommands(t, "go")
	ctx := t.Context()

	families := opts.IPFamilies
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
		if opts.DualStack {
			families = append(families, v1.IPv6Protocol)
		}
	}
	if err := validateFamilies(families); err != nil {
		t.Fatalf("invalid ClusterOptions: %v", err)
	}
	if opts.Nodes > MaxNodes {
		t.Fatalf("invalid ClusterOptions: %d nodes, at most %d", opts.Nodes, MaxNodes)
	}
	zones := opts.Zones
	if len(zones) == 0 {
		zones = []string{"zone-a", "zone-b", "zone-c"}
	}

	if removed, err := CleanupStale(ctx, false); err != nil {
		t.Logf("cleaning up earlier runs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed namespaces left by earlier runs: %s", strings.Join(removed, " "))
	}
	runID, err := newRunID()
	if err != nil {
		t.Fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "iptproxy-e2e-"+runID+"-")
	if err != nil {
		t.Fatalf("creating work directory: %v", err)
	}
	c := &Cluster{
		env:      env,
		runID:    runID,
		dir:      dir,
		families: families,
		zones:    zones,
		names:    map[string]bool{"host": true},
	}
	c.echoBin = sync.OnceValues(c.buildEchoServer)
	if err := register(runID, dir); err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { c.teardown(t) })

	if err := c.setupHost(ctx); err != nil {
		t.Fatalf("setting up the host namespace: %v", err)
	}
	if err := c.startControlPlane(ctx, t, opts.APIServerArgs); err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	for range opts.Nodes {
		c.AddNode(t, NodeOptions{})
	}
	return c
}

func validateFamilies(f []v1.IPFamily) error {
	switch {
	case len(f) > 2:
		return fmt.Errorf("more than two IP families: %v", f)
	case len(f) == 2 && f[0] == f[1]:
		return fmt.Errorf("IP family %s given twice", f[0])
	}
	for _, x := range f {
		if x != v1.IPv4Protocol && x != v1.IPv6Protocol {
			return fmt.Errorf("unknown IP family %q", x)
		}
	}
	return nil
}

// RunID returns the random ID in the names of the run's namespaces.
func (c *Cluster) RunID() string { return c.runID }

// Dir returns the run's work directory (certificates, kubeconfigs, logs); it
// is removed at teardown.
func (c *Cluster) Dir() string { return c.dir }

// IPFamilies returns the cluster's IP families, primary first.
func (c *Cluster) IPFamilies() []v1.IPFamily { return slices.Clone(c.families) }

// Host returns the control plane's namespace.
func (c *Cluster) Host() *NS { return c.host }

// APIServerURL returns the apiserver's URL (reachable from the cluster's
// namespaces only).
func (c *Cluster) APIServerURL() string { return c.cp.url }

// AdminKubeconfig returns the path of a kubeconfig with cluster-admin
// rights (system:masters); use it from inside a namespace, for example
// "ip netns exec <host> kubectl --kubeconfig <path> get nodes".
func (c *Cluster) AdminKubeconfig() string { return c.cp.adminKubecfg }

// RESTConfig returns a copy of the admin client configuration; its Dial
// creates connections inside the host namespace.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.cp.adminConfig) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.cp.client }

// ClusterCIDRs returns the cluster (pod) CIDRs, primary family first.
func (c *Cluster) ClusterCIDRs() []netip.Prefix {
	return byFamily(c.families, netip.MustParsePrefix(ClusterCIDRIPv4), netip.MustParsePrefix(ClusterCIDRIPv6))
}

// ServiceCIDRs returns the Service CIDRs, primary family first.
func (c *Cluster) ServiceCIDRs() []netip.Prefix {
	return byFamily(c.families, netip.MustParsePrefix(ServiceCIDRIPv4), netip.MustParsePrefix(ServiceCIDRIPv6))
}

// ExternalIP returns the i-th (1..254) address of the family in the range
// reserved for external and load-balancer IPs.
func (c *Cluster) ExternalIP(family v1.IPFamily, i int) netip.Addr {
	v4, v6 := externalIPs(i)
	return byFamily([]v1.IPFamily{family}, v4, v6)[0]
}

// Nodes returns the nodes in creation order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// NetNSNames returns the names of the run's namespaces that still exist.
func (c *Cluster) NetNSNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for _, n := range c.namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", n.Name())); err == nil {
			names = append(names, n.Name())
		}
	}
	return names
}

// reserveName claims a node, pod or client name.
func (c *Cluster) reserveName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("invalid name %q: want lower-case letters, digits and '-', at most 40 characters", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names[name] {
		return fmt.Errorf("name %q is already used in this cluster", name)
	}
	c.names[name] = true
	return nil
}

func (c *Cluster) releaseName(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.names, name)
}

// newNS creates the namespace ipt-<run>-<name> with the sysctls every
// member of the cluster needs.
func (c *Cluster) newNS(ctx context.Context, name string, v4, v6 netip.Addr) (*NS, error) {
	n, err := netns.Create(ctx, NetNSPrefix+c.runID+"-"+name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.namespaces = append(c.namespaces, n)
	c.mu.Unlock()
	// No duplicate address detection: addresses are usable at once.
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := n.SetSysctl(k, "0"); err != nil {
			return nil, err
		}
	}
	return &NS{NetNS: n, name: name, cluster: c, v4: v4, v6: v6, ips: byFamily(c.families, v4, v6)}, nil
}

// setupHost creates the control plane's namespace and the node network
// bridge in it.
func (c *Cluster) setupHost(ctx context.Context) error {
	v4, v6 := hostIPs()
	host, err := c.newNS(ctx, "host", v4, v6)
	if err != nil {
		return err
	}
	c.host = host
	c.dialer = &connTracker{ns: host.NetNS, conns: map[*trackedConn]struct{}{}}
	return runIP(ctx, host.NetNS,
		[]string{"link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
		[]string{"addr", "add", netip.PrefixFrom(v4, 24).String(), "dev", "br0"},
		[]string{"addr", "add", netip.PrefixFrom(v6, 64).String(), "dev", "br0", "nodad"},
		[]string{"link", "set", "br0", "up"},
	)
}

// runIP runs several "ip -n <ns>" commands, stopping at the first error.
func runIP(ctx context.Context, ns *netns.NetNS, cmds ...[]string) error {
	for _, args := range cmds {
		if err := ns.IP(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// startProcess starts a tracked process in ns with its output in the logs
// directory.
func (c *Cluster) startProcess(ns *NS, logName string, args []string) (*netns.Process, error) {
	logs := filepath.Join(c.dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", logs, err)
	}
	c.mu.Lock()
	logPath := filepath.Join(logs, fmt.Sprintf("%s-%03d.log", logName, len(c.procs)))
	c.mu.Unlock()
	p, err := ns.Start(netns.ProcessOptions{Args: args, LogPath: logPath})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// teardown stops every process and deletes every namespace of the run.
func (c *Cluster) teardown(t T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if c.cp != nil {
		if t.Failed() {
			for _, p := range []*netns.Process{c.cp.etcd, c.cp.apiserver} {
				if p != nil {
					logTail(t, filepath.Base(p.LogPath()), p, 30)
				}
			}
		}
		if err := c.cp.stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping the control plane: %w", err))
		}
	}
	if c.dialer != nil {
		c.dialer.closeAll()
	}
	c.mu.Lock()
	namespaces := slices.Clone(c.namespaces)
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	slices.Reverse(namespaces)
	for _, n := range namespaces {
		if err := n.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting a namespace kills what runs inside; make sure every
	// process we started has been reaped.
	for _, p := range procs {
		if !p.Exited() {
			if err := p.Kill(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if left := c.NetNSNames(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces still exist after teardown: %v", left))
	}
	if err := unregister(c.runID); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("tearing down run %s: %v", c.runID, err)
	}
}

// logTail logs the last lines of a process's output.
func logTail(t T, name string, p *netns.Process, lines int) {
	t.Helper()
	out, err := p.Log()
	if err != nil {
		t.Logf("%s: %v", name, err)
		return
	}
	all := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(all) > lines {
		all = append([]string{fmt.Sprintf("... (%d earlier lines)", len(all)-lines)}, all[len(all)-lines:]...)
	}
	t.Logf("last lines of %s:\n%s", name, strings.Join(all, "\n"))
}
