// Package proxiertest runs Services and EndpointSlices through iptproxy's
// sync path (pkg/proxy's tracker, pkg/rules' renderer, pkg/planner, the
// jumps from the built-in chains) into the in-memory iptables of
// pkg/iptables/memory, and traces packets through the result with
// pkg/trace. Tests assert where packets go, never the rule text.
package proxiertest

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// The node the default configurations describe.
const (
	// NodeName is this node's name; endpoints on it are local.
	NodeName = "node-a"
	// NodeIP is this node's primary IPv4 address; NodeIP2 is a second
	// local address that is not a node IP (for nodePortAddresses).
	NodeIP  = "192.168.0.10"
	NodeIP2 = "192.168.1.10"
	// ClusterCIDR holds every pod IPv4 address; pods on this node are in
	// NodeCIDR.
	ClusterCIDR = "10.244.0.0/16"
	NodeCIDR    = "10.244.1.0/24"
	// NodeIP6, ClusterCIDR6 and NodeIP6b are the IPv6 counterparts.
	NodeIP6      = "fd00::10"
	NodeIP6b     = "fd00:1::10"
	ClusterCIDR6 = "fd00:10:244::/48"
)

// DefaultConfig is the renderer configuration of a kubeadm-like node:
// masquerade bit 14, local traffic detected by ClusterCIDR, localhost
// NodePorts on (IPv4), NodePorts on every local address.
func DefaultConfig(family v1.IPFamily) rules.Config {
	cfg := rules.Config{
		Family:             family,
		NodeName:           NodeName,
		MasqueradeBit:      14,
		LocalhostNodePorts: family == v1.IPv4Protocol,
	}
	cidr := ClusterCIDR
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(NodeIP)}
	if family == v1.IPv6Protocol {
		cidr = ClusterCIDR6
		cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(NodeIP6)}
	}
	cfg.LocalTraffic = rules.LocalTraffic{IfLocal: []string{"-s", cidr}, IfNotLocal: []string{"!", "-s", cidr}}
	return cfg
}

// Cluster is one node's rules for one IP family, kept in a fake iptables.
type Cluster struct {
	t       testing.TB
	ctx     context.Context
	cfg     rules.Config
	fake    *memory.Tables
	proxier *proxier.Proxier
	// node is what the tracer treats as local.
	node trace.Node
}

// NewCluster syncs objs (Services and EndpointSlices) with cfg into a
// fake iptables. The node's local addresses are cfg.NodeIPs plus extra.
func NewCluster(t testing.TB, cfg rules.Config, extraLocal []string, objs ...runtime.Object) *Cluster {
	t.Helper()
	logger, ctx := ktesting.NewTestContext(t)
	fake := memory.New(cfg.Family)
	c := &Cluster{
		t: t, ctx: ctx, cfg: cfg, fake: fake,
		proxier: proxier.New(logger, proxier.Options{Rules: cfg, IPTables: fake}),
	}
	c.node.LocalAddrs = slices.Clone(cfg.NodeIPs)
	for _, a := range extraLocal {
		c.node.LocalAddrs = append(c.node.LocalAddrs, netip.MustParseAddr(a))
	}
	c.proxier.OnNodeUpdate(cfg.Zone, cfg.NodeIPs)
	c.Apply(objs...)
	c.proxier.OnServicesSynced()
	c.proxier.OnEndpointSlicesSynced()
	c.Sync()
	return c
}

// Apply adds or updates Services and EndpointSlices (without syncing).
func (c *Cluster) Apply(objs ...runtime.Object) {
	c.t.Helper()
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			c.proxier.OnServiceUpdate(nil, o)
		case *discovery.EndpointSlice:
			c.proxier.OnEndpointSliceUpdate(o, false)
		default:
			c.t.Fatalf("proxiertest: cannot apply %T", o)
		}
	}
}

// Delete removes Services and EndpointSlices (without syncing).
func (c *Cluster) Delete(objs ...runtime.Object) {
	c.t.Helper()
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			c.proxier.OnServiceUpdate(o, nil)
		case *discovery.EndpointSlice:
			c.proxier.OnEndpointSliceUpdate(o, true)
		default:
			c.t.Fatalf("proxiertest: cannot delete %T", o)
		}
	}
}

// Sync writes the rules into the fake, failing the test on error.
func (c *Cluster) Sync() {
	c.t.Helper()
	if err := c.proxier.Sync(c.ctx); err != nil {
		c.t.Fatalf("sync: %v", err)
	}
}

// Proxier returns the proxier that syncs the rules, e.g. to feed it from
// informers.
func (c *Cluster) Proxier() *proxier.Proxier { return c.proxier }

// Fake returns the in-memory tables holding the rules.
func (c *Cluster) Fake() *memory.Tables { return c.fake }

// Trace traces pkt, failing the test if the tracer cannot.
func (c *Cluster) Trace(pkt trace.Packet) *trace.Result {
	c.t.Helper()
	r, err := c.fake.Trace(c.node, pkt)
	if err != nil {
		c.t.Fatalf("trace %s: %v", pkt, err)
	}
	return r
}

// Where traces pkt and returns where it goes: probability by
// destination. A destination is "DROP", "REJECT", or the address the
// packet is delivered to ("ip:port"; the original destination when it was
// not translated), followed by " masq" when it is masqueraded.
func (c *Cluster) Where(pkt trace.Packet) Where {
	c.t.Helper()
	return WhereOf(c.Trace(pkt))
}

// Where maps destinations to probabilities (see Cluster.Where).
type Where map[string]float64

// WhereOf summarizes a trace result.
func WhereOf(r *trace.Result) Where {
	w := Where{}
	for i := range r.Outcomes {
		o := &r.Outcomes[i]
		k := o.Destination()
		if o.Verdict == trace.Accept && o.Masqueraded {
			k += " masq"
		}
		w[k] += o.Probability
	}
	return w
}

// Equal reports whether w and o name the same destinations with the same
// probabilities (within 1e-6).
func (w Where) Equal(o Where) bool {
	if len(w) != len(o) {
		return false
	}
	for k, p := range w {
		q, ok := o[k]
		if !ok || math.Abs(p-q) > 1e-6 {
			return false
		}
	}
	return true
}

// String renders w sorted by destination.
func (w Where) String() string {
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%.4g", k, w[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// Even returns a Where that spreads probability evenly over dests.
func Even(dests ...string) Where {
	w := Where{}
	for _, d := range dests {
		w[d] += 1 / float64(len(dests))
	}
	return w
}

// Packets for tables. Addresses are "ip" and destinations "ip:port" (or
// "[ip6]:port").

// In is a packet arriving on interface iface.
func In(iface, proto, src, dst string) trace.Packet {
	d := netip.MustParseAddrPort(dst)
	return trace.Packet{Protocol: proto, Src: netip.MustParseAddr(src), Dst: d.Addr(), DstPort: int(d.Port()), SrcPort: 40000, InInterface: iface}
}

// Local is a packet originated on the node.
func Local(proto, src, dst string) trace.Packet {
	d := netip.MustParseAddrPort(dst)
	return trace.Packet{Protocol: proto, Src: netip.MustParseAddr(src), Dst: d.Addr(), DstPort: int(d.Port()), SrcPort: 40000, Local: true}
}

// Check traces each case against c and reports mismatches, with the full
// trace of the failing packet.
func Check(t *testing.T, c *Cluster, cases []Case) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			r := c.Trace(tc.Packet)
			got := WhereOf(r)
			if !got.Equal(tc.Want) {
				t.Errorf("%s:\n got %s\nwant %s\n%s", tc.Packet, got, tc.Want, r)
			}
		})
	}
}

// Case is one packet and where it must go.
type Case struct {
	Name   string
	Packet trace.Packet
	Want   Where
}
