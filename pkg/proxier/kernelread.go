package proxier

import (
	"context"
	"fmt"
	"time"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// unverifiedSavesMaxAge bounds how old a dump may be when a full sync
// adopts it and nothing can prove that the tables did not change since it
// was read (the legacy backend has no ruleset generation): an older one
// is read again.
const unverifiedSavesMaxAge = time.Second

// foreignCounter is implemented by an iptables.Interface that can tell its
// own writes from everyone else's (iptables.Runner with a Journal on the
// nft backend).
type foreignCounter interface {
	Foreign() (count uint64, ok bool)
}

// foreign returns the backend's count of writes made by someone else;
// ok is false when it cannot tell.
func (p *Proxier) foreign() (uint64, bool) {
	if f, ok := p.opts.IPTables.(foreignCounter); ok {
		return f.Foreign()
	}
	return 0, false
}

// kernelMatchesRecord reports whether nobody but iptproxy has written to
// the tables since the record was last known to match them, so that the
// record is what the kernel holds (only the nft backend can tell).
func (p *Proxier) kernelMatchesRecord() bool {
	n, ok := p.foreign()
	return ok && p.verifiedOK && n == p.verified
}

// earlySaves are iptables-save dumps read ahead of the full sync that
// adopts them: at start, while the informers are still listing (at 10,000
// Services a dump takes seconds, 3 s for nat on iptables-nft, and the
// first sync would otherwise wait for it after the lists), or by a drift
// check that found something to repair.
type earlySaves struct {
	done  chan struct{}
	at    time.Time
	saves map[iptables.Table]*iptables.SavedTable
	errs  map[iptables.Table]error
	// foreign is the backend's count of foreign writes before the dumps
	// were read; known is false when the backend cannot tell.
	foreign uint64
	known   bool
}

// readEarlySaves starts reading the tables in the background.
func (p *Proxier) readEarlySaves(ctx context.Context) *earlySaves {
	e := &earlySaves{done: make(chan struct{}), at: p.now(),
		saves: map[iptables.Table]*iptables.SavedTable{}, errs: map[iptables.Table]error{}}
	e.foreign, e.known = p.foreign()
	go func() {
		defer close(e.done)
		for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
			e.saves[t], e.errs[t] = readTable(ctx, p.opts.IPTables, t)
		}
	}()
	return e
}

// readySaves returns dumps already read, for a full sync to adopt.
func (p *Proxier) readySaves(saves map[iptables.Table]*iptables.SavedTable, at time.Time, foreign uint64, known bool) *earlySaves {
	e := &earlySaves{done: make(chan struct{}), at: at, saves: saves, errs: map[iptables.Table]error{},
		foreign: foreign, known: known}
	close(e.done)
	return e
}

// takeEarlySaves returns the dumps read ahead, once, if they still show
// what the kernel holds: on nft, when nobody but iptproxy committed since
// they were read (iptproxy itself writes nothing to this family's tables
// between the read and the sync that takes them); elsewhere, when they are
// less than unverifiedSavesMaxAge old. It returns nil otherwise, and the
// sync reads the tables again.
func (p *Proxier) takeEarlySaves(ctx context.Context) *earlySaves {
	e := p.early
	p.early = nil
	if e == nil {
		return nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return nil
	}
	age := p.now().Sub(e.at)
	if e.known {
		if n, ok := p.foreign(); ok && n == e.foreign {
			return e
		}
		p.logger.Info("The tables changed since they were read; reading them again", "age", age)
		return nil
	}
	if age > unverifiedSavesMaxAge {
		p.logger.V(2).Info("The tables read earlier may be stale and the backend cannot tell; reading them again", "age", age)
		return nil
	}
	return e
}

// get returns the early dump of table, or reads it now.
func (e *earlySaves) get(ctx context.Context, ipt iptables.Interface, t iptables.Table) (*iptables.SavedTable, error) {
	if e != nil && e.errs[t] == nil && e.saves[t] != nil {
		return e.saves[t], nil
	}
	return readTable(ctx, ipt, t)
}

// readTable reads table with iptables-save.
func readTable(ctx context.Context, ipt iptables.Interface, t iptables.Table) (*iptables.SavedTable, error) {
	save, err := ipt.Save(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("reading the %s table: %w", t, err)
	}
	st, err := iptables.ParseSaveTable(t, save)
	if err != nil {
		return nil, fmt.Errorf("reading the %s table: %w", t, err)
	}
	return st, nil
}
