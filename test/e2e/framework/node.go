package framework

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known node labels the harness sets.
const (
	LabelHostname = "kubernetes.io/hostname"
	LabelZone     = "topology.kubernetes.io/zone"
)

// NodeOptions configures AddNode.
type NodeOptions struct {
	// Name defaults to node-<index>.
	Name string
	// Zone defaults to the cluster's zones, round-robin.
	Zone string
	// Labels are added to the Node object's labels.
	Labels map[string]string
}

// Node is a cluster node: a namespace on the node network with a bridge
// (cbr0) for its pods, and a Node object in the apiserver.
type Node struct {
	*NS
	index    int
	zone     string
	podCIDRs []netip.Prefix

	lastPod int // guarded by cluster.mu
}

// Zone returns the node's topology zone.
func (n *Node) Zone() string { return n.zone }

// PodCIDRs returns the node's pod CIDRs, primary family first.
func (n *Node) PodCIDRs() []netip.Prefix { return slices.Clone(n.podCIDRs) }

// AddNode creates a node: its namespace (forwarding on, br_netfilter on for
// its pod bridge), its link to the node network, routes between its pod CIDR
// and every other node's, and its Node object with status.addresses. Nodes
// live as long as the cluster.
func (c *Cluster) AddNode(t T, opts NodeOptions) *Node {
	t.Helper()
	ctx := t.Context()
	c.mu.Lock()
	index := len(c.nodes) + 1
	c.mu.Unlock()
	if index > MaxNodes {
		t.Fatalf("at most %d nodes", MaxNodes)
	}
	name := opts.Name
	if name == "" {
		name = "node-" + strconv.Itoa(index)
	}
	zone := opts.Zone
	if zone == "" {
		zone = c.zones[(index-1)%len(c.zones)]
	}
	if err := c.reserveName(name); err != nil {
		t.Fatalf("adding node: %v", err)
	}
	v4, v6 := nodeIPs(index)
	ns, err := c.newNS(ctx, name, v4, v6)
	if err != nil {
		t.Fatalf("adding node %s: %v", name, err)
	}
	cidr4, cidr6 := podCIDRs(index)
	n := &Node{NS: ns, index: index, zone: zone, podCIDRs: byFamily(c.families, cidr4, cidr6)}
	if err := c.setupNode(ctx, n); err != nil {
		t.Fatalf("adding node %s: %v", name, err)
	}
	if err := c.createNodeObject(ctx, n, opts.Labels); err != nil {
		t.Fatalf("adding node %s: %v", name, err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n
}

func (c *Cluster) setupNode(ctx context.Context, n *Node) error {
	// A new namespace copies the host's IPv4 "all" and "default" settings;
	// start from a fresh kernel's route_localnet, whatever a proxy on the
	// host set there.
	for _, k := range []string{"net.ipv4.conf.all.route_localnet", "net.ipv4.conf.default.route_localnet"} {
		if err := n.SetSysctl(k, "0"); err != nil {
			return err
		}
	}
	for _, k := range []string{
		"net.ipv4.ip_forward",
		"net.ipv6.conf.all.forwarding",
		"net.bridge.bridge-nf-call-iptables",
		"net.bridge.bridge-nf-call-ip6tables",
	} {
		if err := n.SetSysctl(k, "1"); err != nil {
			return err
		}
	}
	hostPort := fmt.Sprintf("vn%d", n.index)
	gw4, gw6 := podGateways(n.index)
	cidr4, cidr6 := podCIDRs(n.index)
	if err := runIP(ctx, c.host.NetNS,
		[]string{"link", "add", hostPort, "type", "veth", "peer", "name", "eth0", "netns", n.NetNS.Name()},
		[]string{"link", "set", hostPort, "master", "br0", "up"},
		// The control plane answers pods through their node.
		[]string{"route", "add", cidr4.String(), "via", n.v4.String()},
		[]string{"route", "add", cidr6.String(), "via", n.v6.String()},
	); err != nil {
		return err
	}
	if err := runIP(ctx, n.NetNS,
		[]string{"addr", "add", netip.PrefixFrom(n.v4, 24).String(), "dev", "eth0"},
		[]string{"addr", "add", netip.PrefixFrom(n.v6, 64).String(), "dev", "eth0", "nodad"},
		[]string{"link", "set", "eth0", "up"},
		[]string{"link", "add", "cbr0", "type", "bridge", "mcast_snooping", "0"},
		[]string{"addr", "add", netip.PrefixFrom(gw4, 24).String(), "dev", "cbr0"},
		[]string{"addr", "add", netip.PrefixFrom(gw6, 64).String(), "dev", "cbr0", "nodad"},
		[]string{"link", "set", "cbr0", "up"},
	); err != nil {
		return err
	}
	for _, other := range c.Nodes() {
		o4, o6 := podCIDRs(other.index)
		if err := runIP(ctx, n.NetNS,
			[]string{"route", "add", o4.String(), "via", other.v4.String()},
			[]string{"route", "add", o6.String(), "via", other.v6.String()},
		); err != nil {
			return err
		}
		if err := runIP(ctx, other.NetNS,
			[]string{"route", "add", cidr4.String(), "via", n.v4.String()},
			[]string{"route", "add", cidr6.String(), "via", n.v6.String()},
		); err != nil {
			return err
		}
	}
	return nil
}

// createNodeObject creates the Node object and writes its status.
func (c *Cluster) createNodeObject(ctx context.Context, n *Node, labels map[string]string) error {
	obj := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.name,
			Labels: map[string]string{
				LabelHostname:      n.name,
				LabelZone:          n.zone,
				"kubernetes.io/os": "linux",
			},
		},
	}
	for k, v := range labels {
		obj.Labels[k] = v
	}
	for _, p := range n.podCIDRs {
		obj.Spec.PodCIDRs = append(obj.Spec.PodCIDRs, p.String())
	}
	obj.Spec.PodCIDR = obj.Spec.PodCIDRs[0]
	created, err := c.Client().CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Node object: %w", err)
	}
	for _, ip := range n.ips {
		created.Status.Addresses = append(created.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.String()})
	}
	created.Status.Addresses = append(created.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: n.name})
	now := metav1.Now()
	created.Status.Conditions = []v1.NodeCondition{{
		Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "E2EHarness",
		Message: "namespace node", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := c.Client().CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing Node status: %w", err)
	}
	return nil
}

// Pod is a pod: a namespace attached to its node's pod bridge, with a
// default route through the node.
type Pod struct {
	*NS
	node *Node
}

// Node returns the pod's node.
func (p *Pod) Node() *Node { return p.node }

// AddPod creates a pod on the node. Its namespace is deleted when t's test
// ends (or with Delete), which frees the name; pod addresses are never
// reused within a cluster.
func (n *Node) AddPod(t T, name string) *Pod {
	t.Helper()
	ctx := t.Context()
	c := n.cluster
	if err := c.reserveName(name); err != nil {
		t.Fatalf("adding pod: %v", err)
	}
	c.mu.Lock()
	n.lastPod++
	k := n.lastPod
	c.mu.Unlock()
	if k > MaxPodsPerNode {
		t.Fatalf("adding pod %s: node %s has had %d pods, at most %d", name, n.name, k-1, MaxPodsPerNode)
	}
	v4, v6 := podIPs(n.index, k)
	ns, err := c.newNS(ctx, name, v4, v6)
	if err != nil {
		t.Fatalf("adding pod %s: %v", name, err)
	}
	p := &Pod{NS: ns, node: n}
	t.Cleanup(func() { p.delete(t) })
	port := fmt.Sprintf("vp%d", k)
	gw4, gw6 := podGateways(n.index)
	if err := runIP(ctx, n.NetNS,
		[]string{"link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.NetNS.Name()},
		[]string{"link", "set", port, "master", "cbr0"},
		// As the bridge CNI plugin does: a pod reaching itself through a
		// Service goes out and back in on the same bridge port.
		[]string{"link", "set", "dev", port, "type", "bridge_slave", "hairpin", "on"},
		[]string{"link", "set", port, "up"},
	); err != nil {
		t.Fatalf("adding pod %s: %v", name, err)
	}
	if err := runIP(ctx, ns.NetNS,
		[]string{"addr", "add", netip.PrefixFrom(v4, 24).String(), "dev", "eth0"},
		[]string{"addr", "add", netip.PrefixFrom(v6, 64).String(), "dev", "eth0", "nodad"},
		[]string{"link", "set", "eth0", "up"},
		[]string{"route", "add", "default", "via", gw4.String()},
		[]string{"-6", "route", "add", "default", "via", gw6.String()},
	); err != nil {
		t.Fatalf("adding pod %s: %v", name, err)
	}
	return p
}

// Delete deletes the pod's namespace now (it is otherwise deleted when the
// test that added it ends).
func (p *Pod) Delete(t T) {
	t.Helper()
	p.delete(t)
}

func (p *Pod) delete(t T) {
	t.Helper()
	if err := p.NetNS.Delete(context.Background()); err != nil {
		t.Errorf("deleting pod %s: %v", p.name, err)
		return
	}
	p.cluster.releaseName(p.name)
}

// Client is an outside client: a namespace on the node network that is not a
// cluster node (it has no routes to pods or Services unless a test adds
// them).
type Client struct {
	*NS
}

// AddClient creates an outside client. Its namespace is deleted when t's
// test ends.
func (c *Cluster) AddClient(t T, name string) *Client {
	t.Helper()
	ctx := t.Context()
	if err := c.reserveName(name); err != nil {
		t.Fatalf("adding client: %v", err)
	}
	c.mu.Lock()
	c.lastClient++
	j := c.lastClient
	c.mu.Unlock()
	if j > MaxClients {
		t.Fatalf("adding client %s: at most %d clients", name, MaxClients)
	}
	v4, v6 := clientIPs(j)
	ns, err := c.newNS(ctx, name, v4, v6)
	if err != nil {
		t.Fatalf("adding client %s: %v", name, err)
	}
	cl := &Client{NS: ns}
	t.Cleanup(func() {
		if err := ns.NetNS.Delete(context.Background()); err != nil {
			t.Errorf("deleting client %s: %v", name, err)
		}
	})
	hostPort := fmt.Sprintf("vc%d", j)
	if err := runIP(ctx, c.host.NetNS,
		[]string{"link", "add", hostPort, "type", "veth", "peer", "name", "eth0", "netns", ns.NetNS.Name()},
		[]string{"link", "set", hostPort, "master", "br0", "up"},
	); err != nil {
		t.Fatalf("adding client %s: %v", name, err)
	}
	if err := runIP(ctx, ns.NetNS,
		[]string{"addr", "add", netip.PrefixFrom(v4, 24).String(), "dev", "eth0"},
		[]string{"addr", "add", netip.PrefixFrom(v6, 64).String(), "dev", "eth0", "nodad"},
		[]string{"link", "set", "eth0", "up"},
	); err != nil {
		t.Fatalf("adding client %s: %v", name, err)
	}
	return cl
}
