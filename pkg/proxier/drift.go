package proxier

import (
	"context"
	"time"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// driftCostFactor bounds the cost of drift checks: after a check that took
// d, the next waits at least driftCostFactor*d (checks run at most once a
// sync period anyway), so that reading the tables back never takes more
// than a tenth of one core, however large they are.
const driftCostFactor = 10

// driftLogLimit is how many drifted chains a log line names.
const driftLogLimit = 20

// driftState is what the drift checks remember between ticks (whether
// anyone else wrote since the last check or full sync is
// Proxier.kernelMatchesRecord's business).
type driftState struct {
	// next is the earliest time of the next check (see driftCostFactor).
	next time.Time
}

// checkDrift compares the kernel's tables with what iptproxy wrote and,
// when someone else changed a chain iptproxy owns or a jump to one, logs
// the chains, counts them, and makes the next sync a full one that adopts
// the dumps just read and rewrites exactly the chains that differ.
//
// On nft a check costs one netlink round trip while nobody but iptproxy
// has written to the ruleset since the last check (the ruleset generation
// proves the tables unchanged); otherwise it reads both tables, at most
// once per sync period and never more often than driftCostFactor allows.
func (p *Proxier) checkDrift(ctx context.Context) {
	if !p.initialized() || p.lastFullSync.IsZero() || p.needFull.Load() {
		return
	}
	start := p.now()
	if p.kernelMatchesRecord() || start.Before(p.drift.next) {
		return
	}
	foreign, known := p.foreign()
	saves, drifted, err := p.compareKernel(ctx)
	elapsed := p.now().Sub(start)
	p.drift = driftState{next: start.Add(driftCostFactor * elapsed)}
	if m := p.opts.Metrics; m != nil {
		fam := string(p.family)
		m.DriftChecksTotal.WithLabelValues(fam).Inc()
		m.DriftCheckDuration.WithLabelValues(fam).Observe(elapsed.Seconds())
	}
	if err != nil {
		p.logger.Error(err, "Comparing the tables with what iptproxy wrote")
		return
	}
	p.logger.V(2).Info("Compared the tables with what iptproxy wrote", "elapsed", elapsed, "drifted", countAll(tableMap(drifted)))
	if len(drifted) == 0 {
		p.verified, p.verifiedOK = foreign, known
		return
	}
	for t, names := range drifted {
		if m := p.opts.Metrics; m != nil {
			m.DriftChainsTotal.WithLabelValues(string(t), string(p.family)).Add(float64(len(names)))
		}
		p.logger.Info("Rules changed by someone else; repairing them", "table", t, "count", len(names),
			"chains", names[:min(len(names), driftLogLimit)])
	}
	p.early = p.readySaves(saves, start, foreign, known)
	p.needFull.Store(true)
}

// compareKernel reads the filter and nat tables and returns them with,
// per table, the chains that differ from the record (see
// planner.Applied.Drifted) and the base jumps that are missing, as
// "CHAIN -> TARGET".
func (p *Proxier) compareKernel(ctx context.Context) (map[iptables.Table]*iptables.SavedTable, map[iptables.Table][]string, error) {
	saved := map[iptables.Table]*iptables.SavedTable{}
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		st, err := readTable(ctx, p.opts.IPTables, t)
		if err != nil {
			return nil, nil, err
		}
		saved[t] = st
	}
	watched := func(name string) bool { return rules.IsServiceChain(name) || rules.IsRootChain(name) }
	drifted := map[iptables.Table][]string{}
	p.syncMu.Lock()
	for t, st := range saved {
		if names := p.planner.Applied().Drifted(st, watched, rules.IsServiceChain); len(names) > 0 {
			drifted[t] = names
		}
	}
	p.syncMu.Unlock()
	for _, j := range append(jumps(), kubeletJumps()...) {
		if !jumpPresent(saved[j.table], j) {
			drifted[j.table] = append(drifted[j.table], j.from+" -> "+j.to)
		}
	}
	return saved, drifted, nil
}

// syncPeriod is the configured sync period, or kube-proxy's default.
func (p *Proxier) syncPeriod() time.Duration {
	if p.opts.SyncPeriod > 0 {
		return p.opts.SyncPeriod
	}
	return 30 * time.Second
}
