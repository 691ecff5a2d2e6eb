package planner

import (
	"net/netip"
	"slices"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Planner owns the render/plan handshake of one IP family: the renderer
// and the record of what the kernel holds. It decides what a sync renders
// (only the Service ports a change touched while the record follows the
// last render; everything otherwise), plans the render against the record,
// and records a plan once it is applied. It is not safe for concurrent
// use.
type Planner struct {
	renderer *rules.Renderer
	applied  *Applied
	owned    func(string) bool
}

// NewPlanner returns a planner for cfg that knows nothing of the kernel
// yet. owned says which chains it may delete when they are no longer
// wanted.
func NewPlanner(cfg rules.Config, owned func(string) bool) *Planner {
	return &Planner{renderer: rules.NewRenderer(cfg), applied: NewApplied(), owned: owned}
}

// Config returns the renderer's configuration.
func (p *Planner) Config() rules.Config { return p.renderer.Config() }

// Generation returns the number of the last render (0 before the first).
func (p *Planner) Generation() uint64 { return p.renderer.Generation() }

// Applied returns the record of what the kernel holds.
func (p *Planner) Applied() *Applied { return p.applied }

// SetNode updates the node's zone and addresses; a change makes the next
// plan render everything. It reports whether anything changed.
func (p *Planner) SetNode(zone string, nodeIPs []netip.Addr) bool {
	cfg := p.renderer.Config()
	if cfg.Zone == zone && slices.Equal(cfg.NodeIPs, nodeIPs) {
		return false
	}
	cfg.Zone, cfg.NodeIPs = zone, nodeIPs
	p.renderer.SetConfig(cfg)
	return true
}

// Trust says whether the record is known to match the kernel now (see
// Applied.Trust): a delta plan then writes only the chains whose content
// changed.
func (p *Planner) Trust(trusted bool) { p.applied.Trust(trusted) }

// Adopt replaces the record of a table with a dump of it (see
// Applied.Adopt); the next plan renders everything.
func (p *Planner) Adopt(saved *iptables.SavedTable) { p.applied.Adopt(saved) }

// Forget drops the record of tables, so that the next plan writes all of
// their chains.
func (p *Planner) Forget(tables ...iptables.Table) {
	for _, t := range tables {
		p.applied.Forget(t)
	}
}

// Plan renders state and plans the restore that brings the kernel there.
// With full unset it renders only the Service ports change touched, when
// the record follows the last render (the renderer then returns a Delta);
// otherwise it renders everything and compares every chain with the
// record. maxLines is ComputeChunked's.
func (p *Planner) Plan(state *proxy.State, change proxy.Change, full bool, maxLines int) (*rules.Ruleset, *Plan, error) {
	var changed map[proxy.ServicePortName]bool
	if !full && p.applied.Follows(p.renderer.Generation()) {
		changed = ChangedPorts(state, change)
	}
	rs := p.renderer.Render(state, changed)
	plan, err := ComputeChunked(rs, p.applied, p.owned, maxLines)
	if err != nil {
		return nil, nil, err
	}
	return rs, plan, nil
}

// Commit records that plan, the last one Plan returned, was applied.
func (p *Planner) Commit(plan *Plan) { p.applied.Commit(plan, p.owned) }

// Desired renders state from scratch with the planner's configuration,
// leaving the planner as it was (for debugging: it costs a full render).
// The ruleset carries the generation of the planner's last render.
func (p *Planner) Desired(state *proxy.State) *rules.Ruleset {
	rs := rules.NewRenderer(p.renderer.Config()).Render(state, nil)
	rs.Generation = p.renderer.Generation()
	return rs
}

// ChangedPorts returns the Service ports a change touched: those the
// changed Services had before it and those they have now.
func ChangedPorts(state *proxy.State, change proxy.Change) map[proxy.ServicePortName]bool {
	changed := map[proxy.ServicePortName]bool{}
	for spn := range change.PreviousPorts {
		changed[spn] = true
	}
	for nn := range change.Services {
		for _, spn := range state.ServicePortNames(nn) {
			changed[spn] = true
		}
	}
	return changed
}
