// Package explain answers an operator's questions about the rules iptproxy
// programs: which rules implement a Service and where its traffic goes
// (show), where one packet goes (trace), what the daemon would write
// (render) and what it would change on a node (diff).
//
// It never depends on rule text or chain layout: the rules are produced by
// the daemon's own code (pkg/proxier with the in-memory iptables of
// the in-memory backend pkg/iptables/memory) and questions are answered by tracing packets
// through them with pkg/trace.
package explain

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// Objects are the API objects the rules of a node are made from.
type Objects struct {
	Services []*v1.Service
	Slices   []*discovery.EndpointSlice
	// Node is the node's own object (nil when unknown).
	Node *v1.Node
}

// Model is what the daemon would hold for one IP family on one node after
// a sync: the model, the desired rules and the node's full tables.
type Model struct {
	// Config is the renderer configuration.
	Config rules.Config
	// State is the Service and endpoint model.
	State *proxy.State
	// Desired is the renderer's output (what /debug/rules shows).
	Desired *rules.Ruleset
	// Tables are the node's filter and nat tables after the daemon's first
	// sync into empty tables: the jumps from the built-in chains plus
	// Desired.
	Tables *ruleset.Ruleset
	// Node is the node, for tracing.
	Node trace.Node
}

// Payload is the full restore payload the daemon writes on its first sync.
func (m *Model) Payload() []byte { return m.Desired.Payload() }

// Build runs the daemon's sync for one family offline: the objects go
// through the tracker and the proxier exactly as informer events would, and
// the proxier writes into an in-memory iptables.
func Build(ctx context.Context, logger klog.Logger, objs *Objects, cfg rules.Config) (*Model, error) {
	fake := memory.New(cfg.Family)
	p := proxier.New(logger, proxier.Options{Rules: cfg, IPTables: fake})
	p.OnNodeUpdate(cfg.Zone, cfg.NodeIPs)
	for _, svc := range objs.Services {
		p.OnServiceUpdate(nil, svc)
	}
	for _, s := range objs.Slices {
		p.OnEndpointSliceUpdate(s, false)
	}
	if err := p.Sync(ctx); err != nil {
		return nil, fmt.Errorf("rendering the %s rules: %w", cfg.Family, err)
	}
	return &Model{
		Config:  cfg,
		State:   p.State(),
		Desired: p.Desired(),
		Tables:  fake.Ruleset(),
		Node:    trace.Node{LocalAddrs: cfg.NodeIPs},
	}, nil
}

// BaseTables returns the tables of a node on which the daemon has synced
// no Service: its jumps from the built-in chains and its empty chains.
// Restoring a payload of our chains (from render or /debug/rules) on top
// gives the node's tables.
func BaseTables(ctx context.Context, logger klog.Logger, cfg rules.Config) (*memory.Tables, error) {
	fake := memory.New(cfg.Family)
	p := proxier.New(logger, proxier.Options{Rules: cfg, IPTables: fake})
	if err := p.Sync(ctx); err != nil {
		return nil, fmt.Errorf("installing the base chains: %w", err)
	}
	return fake, nil
}

// LoadRules turns restore or save text into tables to trace. Text that
// holds the built-in chains' jumps to our chains (iptables-save of a node)
// is taken as is; a payload of our chains only (render, /debug/rules) is
// restored on top of BaseTables, as the daemon would have it.
func LoadRules(ctx context.Context, logger klog.Logger, text []byte, cfg rules.Config) (*ruleset.Ruleset, error) {
	text = FamilySection(text, cfg.Family)
	rs, err := memory.Parse(text, cfg.Family)
	if err != nil {
		return nil, fmt.Errorf("parsing the rules: %w", err)
	}
	if hasBuiltinRules(rs) {
		return rs, nil
	}
	base, err := BaseTables(ctx, logger, cfg)
	if err != nil {
		return nil, err
	}
	if err := base.Restore(ctx, text); err != nil {
		return nil, fmt.Errorf("restoring the rules on a node's base chains: %w", err)
	}
	return base.Ruleset(), nil
}

// hasBuiltinRules reports whether nat PREROUTING or OUTPUT holds a rule.
func hasBuiltinRules(rs *ruleset.Ruleset) bool {
	for _, c := range []string{"PREROUTING", "OUTPUT"} {
		if len(rs.ChainRules("nat", c)) > 0 {
			return true
		}
	}
	return false
}

// FamilyOf returns the IP family of addr.
func FamilyOf(addr netip.Addr) v1.IPFamily { return proxy.FamilyOf(addr) }

// FamilySection returns the part of text for family when text holds
// several families in the layout of render and /debug/rules (each
// payload after a "# IPv4" or "# IPv6" line); otherwise text itself.
func FamilySection(text []byte, family v1.IPFamily) []byte {
	var out []byte
	in, sectioned := false, false
	for _, line := range bytes.SplitAfter(text, []byte("\n")) {
		switch h := string(bytes.TrimSpace(line)); h {
		case "# " + string(v1.IPv4Protocol), "# " + string(v1.IPv6Protocol):
			sectioned = true
			in = h == "# "+string(family)
			continue
		}
		if in {
			out = append(out, line...)
		}
	}
	if !sectioned {
		return text
	}
	return out
}

// Section is FamilySection for strings.
func Section(text string, family v1.IPFamily) string {
	return string(FamilySection([]byte(text), family))
}
