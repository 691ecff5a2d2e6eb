// Package proxier runs iptproxy's sync loop for one IP family: it takes the
// changes the tracker accumulated, renders the rules, plans the smallest
// restore and applies it, then updates health, metrics and the per-Service
// health checks.
package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/conntrack"
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/planner"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// fullSyncPeriod is how often a full sync (re-reading the kernel) happens
// even when nothing asks for one, as kube-proxy's FullSyncPeriod.
const fullSyncPeriod = time.Hour

// HealthReporter receives sync progress for /healthz.
type HealthReporter interface {
	// Started is called once when the sync loop starts.
	Started(family v1.IPFamily)
	QueuedUpdate(family v1.IPFamily)
	Updated(family v1.IPFamily)
}

// ServiceHealth serves the per-Service health-check node ports.
type ServiceHealth interface {
	SyncServices(ports map[types.NamespacedName]int) error
	SyncEndpoints(localEndpoints map[types.NamespacedName]int) error
}

// Options configures a Proxier.
type Options struct {
	Rules         rules.Config
	SyncPeriod    time.Duration
	MinSyncPeriod time.Duration
	IPTables      iptables.Interface
	Metrics       *metrics.Metrics
	Health        HealthReporter
	ServiceHealth ServiceHealth
	// Conntrack deletes stale UDP/SCTP flows after endpoint changes; nil
	// disables it.
	Conntrack conntrack.Interface
	// Clock returns the time; time.Now when nil.
	Clock func() time.Time
	// MaxRestoreLines is the plan size, in restore lines, above which a
	// sync is split into several iptables-restore transactions; 0 means
	// planner.DefaultMaxLines, or legacyMaxRestoreLines on the legacy
	// backend (where every transaction rewrites the whole table, so fewer
	// is faster); negative means never split.
	MaxRestoreLines int
}

// legacyMaxRestoreLines is the default transaction size on the legacy
// backend: it restores 435,000 lines in one transaction in ~6 s, while each
// extra transaction into a table that size costs ~1.5 s.
const legacyMaxRestoreLines = 500000

// SyncReport describes one sync, for logs and /debug/last-sync.
type SyncReport struct {
	Family        v1.IPFamily         `json:"ipFamily"`
	Start         time.Time           `json:"start"`
	Duration      time.Duration       `json:"durationNanos"`
	Full          bool                `json:"full"`
	Services      int                 `json:"changedServices"`
	Rendered      int                 `json:"renderedServicePorts"`
	ChainsWritten map[string][]string `json:"chainsWritten,omitempty"`
	ChainsDeleted map[string][]string `json:"chainsDeleted,omitempty"`
	RulesWritten  int                 `json:"rulesWritten"`
	BytesWritten  int                 `json:"bytesWritten"`
	// Transactions is the number of iptables-restore runs the sync made
	// (large syncs are split; see planner.Plan.Transactions).
	Transactions int `json:"transactions"`
	// Incremental is true when the sync was planned from what changed
	// since the last one alone (see rules.Delta), without comparing every
	// chain.
	Incremental bool `json:"incremental"`
	// LargeClusterMode is true when the rules left per-endpoint comments
	// out (more than 1,000 endpoints, as kube-proxy).
	LargeClusterMode bool   `json:"largeClusterMode"`
	Error            string `json:"error,omitempty"`
}

// Proxier programs one IP family. Create it with New, feed it events with
// the On* methods, and run its loop with Run.
type Proxier struct {
	family  v1.IPFamily
	logger  klog.Logger
	tracker *proxy.Tracker
	opts    Options
	now     func() time.Time

	trigger chan struct{}

	mu             sync.Mutex // guards the fields below
	servicesSynced bool
	slicesSynced   bool
	lastReport     SyncReport

	// syncMu is held by Sync, and by Desired while it renders from the
	// state of the last sync.
	syncMu sync.Mutex
	state  *proxy.State
	// generation is the renderer's generation after the last sync.
	generation atomic.Uint64

	// Owned by the sync loop.
	planner      *planner.Planner
	needFull     atomic.Bool
	lastFullSync time.Time
	early        *earlySaves
	drift        driftState
	// verified is the backend's count of foreign writes when the record
	// was last known to match the kernel (after a full sync or a drift
	// check that found nothing); verifiedOK is false when that is not
	// known. See kernelMatchesRecord.
	verified     uint64
	verifiedOK   bool
	topologyZone string
	nodeIPs      []netip.Addr
}

// New returns a proxier for opts.Rules.Family. It starts nothing; call Run.
func New(logger klog.Logger, opts Options) *Proxier {
	fam := opts.Rules.Family
	now := opts.Clock
	if now == nil {
		now = time.Now
	}
	p := &Proxier{
		family:  fam,
		logger:  klog.LoggerWithValues(logger, "ipFamily", fam),
		tracker: proxy.NewTracker(logger, fam, opts.Rules.NodeName),
		opts:    opts,
		now:     now,
		trigger: make(chan struct{}, 1),
		planner: planner.NewPlanner(opts.Rules, rules.IsServiceChain),
	}
	p.needFull.Store(true)
	return p
}

// Family is the IP family this proxier programs.
func (p *Proxier) Family() v1.IPFamily { return p.family }

func (p *Proxier) initialized() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.servicesSynced && p.slicesSynced
}

// queue asks the loop for a sync soon.
func (p *Proxier) queue() {
	if p.opts.Health != nil {
		p.opts.Health.QueuedUpdate(p.family)
	}
	if p.opts.Metrics != nil {
		p.opts.Metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(p.family)).SetToCurrentTime()
	}
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// OnServiceUpdate records a Service change (old nil: added; svc nil:
// deleted).
func (p *Proxier) OnServiceUpdate(old, svc *v1.Service) {
	if p.tracker.OnServiceUpdate(old, svc) && p.initialized() {
		p.queue()
	}
}

// OnEndpointSliceUpdate records an EndpointSlice change.
func (p *Proxier) OnEndpointSliceUpdate(slice *discovery.EndpointSlice, removed bool) {
	if p.tracker.OnEndpointSliceUpdate(slice, removed) && p.initialized() {
		p.queue()
	}
}

// OnServicesSynced is called once the Service informer has synced.
func (p *Proxier) OnServicesSynced() {
	p.mu.Lock()
	p.servicesSynced = true
	p.mu.Unlock()
	p.queue()
}

// OnEndpointSlicesSynced is called once the EndpointSlice informer has
// synced.
func (p *Proxier) OnEndpointSlicesSynced() {
	p.mu.Lock()
	p.slicesSynced = true
	p.mu.Unlock()
	p.queue()
}

// OnNodeUpdate passes the node's zone label and addresses; a change forces
// a full sync (topology hints and source-range rules depend on them).
func (p *Proxier) OnNodeUpdate(zone string, nodeIPs []netip.Addr) {
	p.mu.Lock()
	changed := p.topologyZone != zone || !slices.Equal(p.nodeIPs, nodeIPs)
	p.topologyZone, p.nodeIPs = zone, nodeIPs
	p.mu.Unlock()
	if changed {
		p.queue()
	}
}

// LastSync returns the report of the most recent sync.
func (p *Proxier) LastSync() SyncReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastReport
}

// Desired returns every chain the most recent sync wanted (nil before the
// first). The sync loop keeps only what the next sync needs (chain names,
// hashes), so this renders the whole ruleset afresh from the state of that
// sync: about a second of CPU at 10,000 Services, for debugging only. The
// ruleset's Generation is the sync's render generation.
func (p *Proxier) Desired() *rules.Ruleset {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if p.state == nil {
		return nil
	}
	return p.planner.Desired(p.state)
}

// State returns the Service and endpoint model of the most recent sync
// (nil before the first). It is a snapshot: later syncs do not change it.
func (p *Proxier) State() *proxy.State {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	return p.state
}

// Generation returns the render generation of the last sync (0 before the
// first): Desired's result changes only when it does.
func (p *Proxier) Generation() uint64 { return p.generation.Load() }

// ForceFullSync makes the next sync re-read the kernel and repair it.
func (p *Proxier) ForceFullSync() {
	p.needFull.Store(true)
	p.queue()
}

// Run is the sync loop: it syncs when asked (at most once per
// MinSyncPeriod) and at least every SyncPeriod, as kube-proxy; every
// SyncPeriod it also checks the canaries (a missing canary forces a full
// sync) and the tables for drift (see checkDrift); it retries failed syncs
// after SyncPeriod, and does a full sync at least hourly. It returns when
// ctx ends.
func (p *Proxier) Run(ctx context.Context) {
	ctx = klog.NewContext(ctx, p.logger)
	if p.opts.Health != nil {
		p.opts.Health.Started(p.family) // start the clock even if syncs fail
	}
	period := p.syncPeriod()
	if p.needFull.Load() {
		p.early = p.readEarlySaves(ctx)
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	var retry <-chan time.Time
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.trigger:
		case <-retry:
			retry = nil
		case <-ticker.C:
			// As kube-proxy, sync at least every period: the sync
			// rewrites the top-level chains. Between syncs, look for
			// anything else someone changed.
			p.checkCanary(ctx)
			p.checkDrift(ctx)
			if p.now().Sub(p.lastFullSync) > fullSyncPeriod && p.initialized() {
				p.needFull.Store(true)
			}
		}
		if wait := p.opts.MinSyncPeriod - p.now().Sub(last); wait > 0 && !last.IsZero() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		if !p.initialized() {
			p.logger.V(2).Info("Not syncing iptables until Services and EndpointSlices have been received")
			continue
		}
		last = p.now()
		if err := p.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				// Shutting down: the sync was cut short, nothing will
				// retry it (restores are atomic per table).
				p.logger.Info("Sync interrupted: shutting down", "err", err)
				return
			}
			// As kube-proxy's BoundedFrequencyRunner, whose retry
			// interval is the sync period; a new event syncs sooner.
			p.logger.Error(err, "Sync failed; retrying", "after", period)
			retry = time.After(period)
		}
	}
}

// checkCanary forces a full sync if someone flushed our tables. Unlike
// kube-proxy's monitor, which only notices a flush of mangle, every table's
// canary is checked, so flushing only nat (or deleting one canary) is
// repaired too.
func (p *Proxier) checkCanary(ctx context.Context) {
	if !p.initialized() || p.lastFullSync.IsZero() {
		return
	}
	for _, table := range iptables.CanaryTables() {
		missing, err := iptables.CanaryMissing(ctx, p.opts.IPTables, rules.ChainCanary, []iptables.Table{table})
		if err != nil {
			p.logger.Error(err, "Checking the canary chain", "table", table)
			continue
		}
		if missing {
			p.logger.Info("Canary chain is gone: the tables were flushed by someone else; repairing with a full sync", "table", table)
			p.needFull.Store(true)
			return
		}
	}
}

// bigSyncRendered and bigSyncBytes make a sync "big": one that rendered or
// wrote enough to leave a large amount of garbage behind.
const (
	bigSyncRendered = 1000
	bigSyncBytes    = 4 << 20
)

// bigSync reports whether a sync rendered or wrote enough that returning
// its garbage to the OS at once is worth a forced GC.
func bigSync(r SyncReport) bool {
	return r.Rendered >= bigSyncRendered || r.BytesWritten >= bigSyncBytes
}

// Sync brings the kernel in line with the model once: it reads the kernel
// (on a full sync), renders and plans, applies the plan, then does what
// follows a sync (metrics, health, conntrack, health-check node ports). It
// is called by Run; tests call it directly.
func (p *Proxier) Sync(ctx context.Context) (err error) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	s := p.beginSync()
	defer func() { p.endSync(s, err) }()
	if s.full {
		if err := p.readKernel(ctx, s); err != nil {
			return err
		}
	}
	p.planner.Trust(!s.full && p.kernelMatchesRecord())
	rs, plan, err := p.planner.Plan(s.state, s.change, s.full, p.maxRestoreLines())
	if err != nil {
		return err
	}
	p.state = s.state
	p.generation.Store(rs.Generation)
	s.reportPlan(rs, plan)
	if err := p.apply(ctx, s, plan); err != nil {
		return err
	}
	p.afterSync(ctx, s, rs, plan)
	return nil
}

// syncRun is one sync in progress.
type syncRun struct {
	start  time.Time
	full   bool
	state  *proxy.State
	change proxy.Change
	report SyncReport
	// read is set once a full sync has read the kernel; readAt and readOK
	// are the backend's count of foreign writes when the dumps were read
	// (readOK false when it cannot tell, or a table could not be read).
	read   bool
	readAt uint64
	readOK bool
}

// beginSync takes the tracker's changes and the node's latest zone and
// addresses, and counts the changes.
func (p *Proxier) beginSync() *syncRun {
	s := &syncRun{start: p.now(), full: p.needFull.Load()}
	s.state, s.change = p.tracker.Checkout()
	s.report = SyncReport{Family: p.family, Start: s.start, Full: s.full, Services: len(s.change.Services)}
	if m := p.opts.Metrics; m != nil {
		m.ServiceChangesTotal.Add(float64(s.change.ServiceEvents))
		m.EndpointChangesTotal.Add(float64(s.change.SliceEvents))
		svcs, slices := p.tracker.Pending()
		m.ServiceChangesPending.Set(float64(svcs))
		m.EndpointChangesPending.Set(float64(slices))
	}
	p.mu.Lock()
	zone, nodeIPs := p.topologyZone, p.nodeIPs
	p.mu.Unlock()
	p.planner.SetNode(zone, nodeIPs)
	return s
}

// reportPlan fills the report from the render and the plan.
func (s *syncRun) reportPlan(rs *rules.Ruleset, plan *planner.Plan) {
	s.report.Rendered = rs.Stats.Rendered
	s.report.LargeClusterMode = rs.Stats.LargeClusterMode
	s.report.RulesWritten = plan.Rules
	s.report.Incremental = plan.Incremental
	s.report.BytesWritten = plan.Size()
	s.report.ChainsWritten = tableMap(plan.Written)
	s.report.ChainsDeleted = tableMap(plan.Deleted)
}

// endSync records the report and the latency, and logs the sync. A failed
// sync makes the next one full: the tracker's changes are folded in, and
// only a full sync can be sure to get everything right now.
func (p *Proxier) endSync(s *syncRun, err error) {
	report := &s.report
	report.Duration = p.now().Sub(s.start)
	if err != nil {
		p.verifiedOK = false
		report.Error = err.Error()
		p.needFull.Store(true)
	} else if s.read {
		// The record matches what was read plus iptproxy's own writes;
		// the drift check has nothing to read until someone else writes.
		p.verified, p.verifiedOK = s.readAt, s.readOK
	}
	p.mu.Lock()
	p.lastReport = *report
	p.mu.Unlock()
	if m := p.opts.Metrics; m != nil {
		fam, sec := string(p.family), report.Duration.Seconds()
		m.SyncProxyRulesLatency.WithLabelValues(fam).Observe(sec)
		if s.full {
			m.SyncFullProxyRulesLatency.WithLabelValues(fam).Observe(sec)
		} else {
			m.SyncPartialProxyRulesLatency.WithLabelValues(fam).Observe(sec)
		}
	}
	if bigSync(*report) {
		// A full render at scale allocates hundreds of MB that are
		// garbage once the restore is done; the runtime would hand them
		// back to the OS only slowly, and the node's memory accounting
		// (and OOM ranking) sees RSS. Give them back now: one forced GC
		// per big sync, which is rare.
		debug.FreeOSMemory()
	}
	p.logger.Info("Synced rules", "full", s.full, "elapsed", report.Duration, "changedServices", report.Services,
		"renderedServicePorts", report.Rendered, "chainsWritten", countAll(report.ChainsWritten),
		"chainsDeleted", countAll(report.ChainsDeleted), "rulesWritten", report.RulesWritten,
		"bytes", report.BytesWritten, "transactions", report.Transactions, "err", err)
}

// readKernel reads the filter and nat tables (or takes the dumps read
// ahead), adopts them as the record, and installs the base jumps and
// canaries they lack. The dumps also tell which base jumps and canaries
// exist, which saves an iptables run per jump (each costs a whole-table
// cache fetch on iptables-nft at scale). A table that cannot be read is
// forgotten: every chain of it is written.
func (p *Proxier) readKernel(ctx context.Context, s *syncRun) error {
	saved := map[iptables.Table]*iptables.SavedTable{}
	early := p.takeEarlySaves(ctx)
	s.read = true
	if early != nil {
		s.readAt, s.readOK = early.foreign, early.known
	} else {
		s.readAt, s.readOK = p.foreign()
	}
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		st, err := early.get(ctx, p.opts.IPTables, t)
		if err != nil {
			p.logger.Error(err, "Reading the current rules failed; rewriting every chain", "table", t)
			p.planner.Forget(t)
			s.readOK = false
			continue
		}
		saved[t] = st
		p.planner.Adopt(st)
	}
	return p.ensureBase(ctx, saved)
}

// apply runs the plan's transactions in order. A failure is logged with
// the failing lines and counted, and the record is forgotten: what the
// kernel holds is no longer known for sure.
func (p *Proxier) apply(ctx context.Context, s *syncRun, plan *planner.Plan) error {
	fam := string(p.family)
	for i, tx := range plan.Transactions {
		s.report.Transactions++
		err := p.opts.IPTables.Restore(ctx, tx)
		if err == nil {
			continue
		}
		var rerr *iptables.RestoreError
		if errors.As(err, &rerr) {
			p.logger.Error(err, "iptables-restore failed", "transaction", i+1, "transactions", len(plan.Transactions),
				"failingLines", rerr.FailingLines(tx, 3))
		}
		if m := p.opts.Metrics; m != nil {
			m.IPTablesRestoreFailuresTotal.WithLabelValues(fam).Inc()
			if !s.full {
				m.IPTablesPartialRestoreFailuresTotal.WithLabelValues(fam).Inc()
			}
		}
		p.planner.Forget(iptables.TableFilter, iptables.TableNAT)
		return fmt.Errorf("applying %d rules (transaction %d of %d): %w", plan.Rules, i+1, len(plan.Transactions), err)
	}
	p.planner.Commit(plan)
	if s.full {
		p.needFull.Store(false)
		p.lastFullSync = s.start
	}
	return nil
}

// afterSync records metrics and health, cleans stale conntrack entries
// and updates the health-check node ports.
func (p *Proxier) afterSync(ctx context.Context, s *syncRun, rs *rules.Ruleset, plan *planner.Plan) {
	if p.opts.Metrics != nil {
		p.recordMetrics(rs, plan, s.change)
	}
	if p.opts.Health != nil {
		p.opts.Health.Updated(p.family)
	}
	if p.opts.Conntrack != nil && needsConntrackCleanup(s.state, s.change) {
		p.cleanConntrack(ctx, s.state)
	}
	if p.opts.ServiceHealth != nil {
		if err := p.syncServiceHealth(s.state); err != nil {
			p.logger.Error(err, "Syncing health-check node ports")
		}
	}
}

// maxRestoreLines returns the transaction size limit for the planner.
func (p *Proxier) maxRestoreLines() int {
	switch n := p.opts.MaxRestoreLines; {
	case n < 0:
		return 0
	case n > 0:
		return n
	}
	if b, ok := p.opts.IPTables.(interface{ Backend() iptables.Backend }); ok && b.Backend() == iptables.BackendLegacy {
		return legacyMaxRestoreLines
	}
	return planner.DefaultMaxLines
}

// ensureBase creates our top-level chains, the jumps to them from the
// built-in chains, and the canaries, skipping those that saves (iptables-save
// ensureBase creates our top-level chains, the jumps to them from the
// built-in chains, and the canaries, skipping those that saved (dumps of
// some tables) shows to exist already.
func (p *Proxier) ensureBase(ctx context.Context, saved map[iptables.Table]*iptables.SavedTable) error {
	ipt := p.opts.IPTables
	// As kube-proxy: the jumps to kubelet's KUBE-FIREWALL in both families,
	// whether or not the anti-martian rule is ours to write.
	for _, j := range append(jumps(), kubeletJumps()...) {
		if jumpPresent(saved[j.table], j) {
			continue
		}
		if _, err := ipt.EnsureChain(ctx, j.table, j.to); err != nil {
			return fmt.Errorf("creating chain %s in %s: %w", j.to, j.table, err)
		}
		if _, err := ipt.EnsureRulePrepended(ctx, j.table, j.from, j.args()...); err != nil {
			return fmt.Errorf("installing jump %s -> %s in %s: %w", j.from, j.to, j.table, err)
		}
	}
	var canaries []iptables.Table
	for _, t := range iptables.CanaryTables() {
		if st, ok := saved[t]; !ok || st.Chain(rules.ChainCanary) == nil {
			canaries = append(canaries, t)
		}
	}
	return iptables.EnsureCanaries(ctx, ipt, rules.ChainCanary, canaries)
}

// jumpPresent reports whether a built-in chain of saved holds jump j
// exactly, as kube-proxy checks it with "iptables -C": a rule with the same
// comment and target but another match (a narrowed copy) is not it.
func jumpPresent(saved *iptables.SavedTable, j jump) bool {
	c := saved.Chain(j.from)
	if c == nil || !c.Builtin() {
		return false
	}
	want := j.rule().String()
	return slices.ContainsFunc(c.Rules, func(r iptables.Rule) bool { return r.String() == want })
}

func (p *Proxier) recordMetrics(rs *rules.Ruleset, plan *planner.Plan, change proxy.Change) {
	m, fam := p.opts.Metrics, string(p.family)
	m.IPTablesRulesTotal.WithLabelValues(string(iptables.TableFilter), fam).Set(float64(rs.Stats.FilterRules))
	m.IPTablesRulesTotal.WithLabelValues(string(iptables.TableNAT), fam).Set(float64(rs.Stats.NATRules))
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		m.IPTablesRulesLastSync.WithLabelValues(string(t), fam).Set(float64(plan.TableRules[t]))
		m.SyncChainsWrittenTotal.WithLabelValues(string(t), fam).Add(float64(len(plan.Written[t])))
		m.SyncChainsDeletedTotal.WithLabelValues(string(t), fam).Add(float64(len(plan.Deleted[t])))
	}
	m.SyncBytesWrittenTotal.WithLabelValues(fam).Add(float64(plan.Size()))
	m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(metrics.TrafficPolicyInternal, fam).Set(float64(rs.Stats.NoLocalEndpointsInternal))
	m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(metrics.TrafficPolicyExternal, fam).Set(float64(rs.Stats.NoLocalEndpointsExternal))
	m.SyncProxyRulesLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
	now := p.now()
	for _, times := range change.TriggerTimes {
		for _, t := range times {
			m.NetworkProgrammingLatency.WithLabelValues(fam).Observe(now.Sub(t).Seconds())
		}
	}
}

// syncServiceHealth updates the health-check node ports: one per Service
// with a Local external policy, answering with its local endpoint count.
func (p *Proxier) syncServiceHealth(state *proxy.State) error {
	ports := map[types.NamespacedName]int{}
	local := map[types.NamespacedName]int{}
	for spn, sp := range state.ServicePorts {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		ports[spn.NamespacedName] = sp.HealthCheckNodePort
	}
	for spn, eps := range state.Endpoints {
		if _, ok := ports[spn.NamespacedName]; !ok {
			continue
		}
		n := 0
		for _, e := range eps {
			if e.IsLocal && e.Ready {
				n++
			}
		}
		// kube-proxy counts the local ready endpoints of the Service.
		if n > local[spn.NamespacedName] {
			local[spn.NamespacedName] = n
		}
	}
	if err := p.opts.ServiceHealth.SyncServices(ports); err != nil {
		return err
	}
	return p.opts.ServiceHealth.SyncEndpoints(local)
}

func tableMap(in map[iptables.Table][]string) map[string][]string {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string][]string, len(in))
	for t, v := range in {
		if len(v) > 0 {
			out[string(t)] = v
		}
	}
	return out
}

func countAll(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// needsConntrackCleanup reports whether a UDP or SCTP Service port changed
// in this sync (its endpoints or its addresses).
func needsConntrackCleanup(state *proxy.State, change proxy.Change) bool {
	datagram := func(p v1.Protocol) bool { return p == v1.ProtocolUDP || p == v1.ProtocolSCTP }
	for spn := range change.PreviousPorts {
		if datagram(spn.Protocol) {
			return true
		}
	}
	for spn := range change.PreviousEndpoints {
		if datagram(spn.Protocol) {
			return true
		}
	}
	for nn := range change.Services {
		for _, spn := range state.ServicePortNames(nn) {
			if datagram(spn.Protocol) {
				return true
			}
		}
	}
	return false
}

// cleanConntrack deletes UDP/SCTP flows whose endpoint is gone. It runs
// after the new rules are in place, so new packets of a deleted flow are
// DNATed to a live endpoint.
func (p *Proxier) cleanConntrack(ctx context.Context, state *proxy.State) {
	start := p.now()
	logger := klog.FromContext(ctx)
	flows, err := p.opts.Conntrack.List(p.family)
	if err != nil && flows == nil {
		logger.Error(err, "Listing conntrack entries; stale UDP/SCTP flows are not cleaned")
		return
	}
	stale := conntrack.Stale(state, flows)
	n, err := p.opts.Conntrack.Delete(p.family, stale)
	if err != nil {
		logger.Error(err, "Deleting stale conntrack entries", "deleted", n, "stale", len(stale))
	} else if n > 0 {
		logger.Info("Deleted stale conntrack entries", "deleted", n)
	}
	if m := p.opts.Metrics; m != nil {
		fam := string(p.family)
		m.ReconcileConntrackFlowsLatency.WithLabelValues(fam).Observe(p.now().Sub(start).Seconds())
		m.ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues(fam).Add(float64(n))
	}
}
