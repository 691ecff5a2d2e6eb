package scale

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	"github.com/iptproxy/iptproxy/test/e2e/framework"
	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
)

// firstPacketServices is how many Services, spread over the list, the
// first-packet connects go to.
const firstPacketServices = 20

// runSpec is one proxy run: one proxy, backend and size.
type runSpec struct {
	proxy, binary, backend string
	size                   Size
	cfg                    benchConfig
}

// proxyResult holds one run's figures.
type proxyResult struct {
	cold, change, restart  Value
	rss, hwm               Value
	coldBytes, changeBytes Value
	restartBytes           Value
	firstPacket            map[string]Value // by Key*P50/P90
	baseline               Value
	notes                  []string
}

func newProxyResult(reason string) *proxyResult {
	d := Missing(UnitDuration, reason)
	b := Missing(UnitBytes, reason)
	o := Missing(UnitOverhead, reason)
	return &proxyResult{
		cold: d, change: d, restart: d,
		rss: Missing(UnitMemory, reason), hwm: Missing(UnitMemory, reason),
		coldBytes: b, changeBytes: b, restartBytes: b,
		firstPacket: map[string]Value{KeyFirstSvcP50: o, KeyFirstSvcP90: o, KeyFirstNoneP50: o, KeyFirstNoneP90: o},
		baseline:    Missing(UnitMicros, reason),
	}
}

// errPhaseTimeout is returned by poll when a phase runs out of time.
var errPhaseTimeout = errors.New("phase timed out")

// poll calls check every interval (or right away again when check took
// longer) until it returns true, the daemon exits, or limit has passed since
// start. It returns when check succeeded.
func poll(ctx context.Context, start time.Time, limit, interval time.Duration, d *framework.Daemon, check func(context.Context) (bool, error)) (time.Time, error) {
	ctx, cancel := context.WithDeadline(ctx, start.Add(limit))
	defer cancel()
	var lastErr error
	for {
		ok, err := check(ctx)
		if ok {
			return time.Now(), nil
		}
		if err != nil {
			lastErr = err
		}
		if !d.Running() {
			return time.Time{}, fmt.Errorf("the daemon exited: %v (last check error: %w)", d.Process().Err(), lastErr)
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return time.Time{}, fmt.Errorf("%w (last check error: %v)", errPhaseTimeout, lastErr)
			}
			return time.Time{}, errPhaseTimeout
		case <-time.After(interval):
		}
	}
}

// timedValue turns poll's outcome into a Value.
func timedValue(start, done time.Time, err error, limit time.Duration) Value {
	switch {
	case err == nil:
		return Duration(done.Sub(start))
	case errors.Is(err, errPhaseTimeout):
		return TimedOut(limit)
	default:
		return Missing(UnitDuration, "error (see notes)")
	}
}

// proxyNode is one proxy daemon in a fresh node namespace, with the
// restore shims in its PATH.
type proxyNode struct {
	w        *world
	spec     runSpec
	node     *framework.Node
	td       ToolDir
	wrapper  string
	args     []string
	services []*benchService
	note     func(format string, args ...any)

	d       *framework.Daemon
	changed []*benchService // Services whose endpoints close must reset
}

// newProxyNode prepares a node namespace for one proxy (the daemon is not
// started yet).
func (w *world) newProxyNode(t *testing.T, spec runSpec, note func(string, ...any)) *proxyNode {
	t.Helper()
	w.runs++
	short := map[string]string{ProxyIPTProxy: "ipt", ProxyIPTProxyBackend: "iptb", ProxyKubeProxy: "kp", ProxyKubeProxyNFT: "kpn"}[spec.proxy]
	node := w.addNode(t, fmt.Sprintf("%s-%s-%d", short, spec.backend, w.runs))
	// kubelet creates KUBE-IPTABLES-HINT in the mangle table of the backend
	// the node uses; iptproxy's and kube-proxy's image's backend
	// detection look for it first.
	hint := node.Command(t.Context(), "/usr/sbin/iptables-"+spec.backend+"-restore", "--noflush")
	hint.Stdin = strings.NewReader("*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n")
	if out, err := hint.CombinedOutput(); err != nil {
		t.Fatalf("creating KUBE-IPTABLES-HINT on %s: %v: %s", node.Name(), err, out)
	}
	dir := filepath.Join(w.c.Dir(), "bench", node.Name())
	td, err := InstallTools(filepath.Join(dir, "tools"), spec.backend, "/usr/sbin")
	if err != nil {
		t.Fatalf("%v", err)
	}
	if spec.cfg.keepPayloads {
		td.Keep = filepath.Join(spec.cfg.output, fmt.Sprintf("payloads-%s-%s", w.c.RunID(), node.Name()))
		if err := os.MkdirAll(td.Keep, 0o755); err != nil {
			t.Fatalf("%v", err)
		}
	}
	wrapper := filepath.Join(dir, spec.proxy)
	if err := WriteDaemonWrapper(wrapper, spec.binary, td); err != nil {
		t.Fatalf("%v", err)
	}
	// Every proxy runs with its default flags, but for the one row that
	// measures iptproxy's restart with the backend given.
	var args []string
	if spec.proxy == ProxyIPTProxyBackend {
		args = append(args, "--iptables-backend="+spec.backend)
	}
	return &proxyNode{w: w, spec: spec, node: node, td: td, wrapper: wrapper, args: args,
		services: w.objects.services[:spec.size.Services], note: note}
}

// close stops the daemon, puts back the endpoints the run changed, keeps the
// restore log next to the table and empties the node's tables, so that the
// kernel frees them. The namespace itself stays: later nodes route to it.
func (pn *proxyNode) close(t *testing.T) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	if pn.d != nil {
		pn.d.Stop(t)
	}
	for _, s := range pn.changed {
		if err := pn.w.objects.reset(ctx, s); err != nil {
			t.Errorf("resetting %s: %v", s.svc.Name, err)
		}
	}
	if b, err := os.ReadFile(pn.td.Log); err == nil {
		keep := filepath.Join(pn.spec.cfg.output, fmt.Sprintf("restores-%s-%s.log", pn.w.c.RunID(), pn.node.Name()))
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Logf("keeping the restore log: %v", err)
		}
	}
	// Whatever still runs there: an iptables-restore that outlived a
	// timed-out daemon.
	if err := netns.KillAll(ctx, pn.node.NetNS.Name()); err != nil {
		t.Errorf("stopping processes on %s: %v", pn.node.Name(), err)
	}
	pn.cleanTables(t, ctx)
}

// cleanTables removes what the proxy left in the node's netfilter tables,
// so that the kernel frees them before the next proxy runs: kube-proxy's
// nftables tables ("table ip kube-proxy", "table ip6 kube-proxy"), then the
// iptables tables of the run's backend (a restore without --noflush empties
// them and deletes their chains), then anything else left in nftables
// (iptables-nft's tables are nftables tables). Only this node's namespace
// is touched.
func (pn *proxyNode) cleanTables(t *testing.T, ctx context.Context) {
	t.Helper()
	nft := func(args ...string) (string, error) {
		return pn.node.Run(ctx, "/usr/sbin/nft", args...)
	}
	haveNFT := fileExists("/usr/sbin/nft")
	if haveNFT {
		for _, fam := range []string{"ip", "ip6"} {
			if out, err := nft("list", "tables", fam); err == nil && strings.Contains(out, "table "+fam+" kube-proxy") {
				if _, err := nft("delete", "table", fam, "kube-proxy"); err != nil {
					t.Errorf("deleting table %s kube-proxy on %s: %v", fam, pn.node.Name(), err)
				}
			}
		}
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		cmd := pn.node.Command(ctx, "/usr/sbin/"+fam+"-"+pn.spec.backend+"-restore")
		cmd.Stdin = strings.NewReader("*nat\nCOMMIT\n*filter\nCOMMIT\n*mangle\nCOMMIT\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("emptying the %s tables of %s: %v: %s", fam, pn.node.Name(), err, out)
		}
	}
	if haveNFT {
		if _, err := nft("flush", "ruleset"); err != nil {
			t.Errorf("flushing the nftables ruleset of %s: %v", pn.node.Name(), err)
		}
		if out, err := nft("list", "tables"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s still has nftables tables after the cleanup: %q (%v)", pn.node.Name(), out, err)
		}
	}
}

// saveHeapProfile fetches the daemon's /debug/pprof/heap into the output
// directory.
func (pn *proxyNode) saveHeapProfile(ctx context.Context) {
	code, body, err := pn.d.Get(ctx, 10249, "/debug/pprof/heap")
	if err == nil && code != 200 {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err != nil {
		pn.note("heap profile: %v", err)
		return
	}
	name := filepath.Join(pn.spec.cfg.output, fmt.Sprintf("heap-%s-%s-%s.pb.gz", pn.spec.size, pn.spec.backend, pn.spec.proxy))
	if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
		pn.note("heap profile: %v", err)
		return
	}
	pn.note("heap profile saved to %s", name)
}

// restores returns what the restore shims logged so far.
func (pn *proxyNode) restores() []Restore {
	b, err := os.ReadFile(pn.td.Log)
	if err != nil && !os.IsNotExist(err) {
		pn.note("reading the restore log: %v", err)
		return nil
	}
	rs, err := ParseRestoreLog(string(b))
	if err != nil {
		pn.note("%v", err)
	}
	return rs
}

// save returns the node's IPv4 nat table.
func (pn *proxyNode) save(ctx context.Context) (string, error) {
	return pn.node.Run(ctx, "/usr/sbin/"+pn.td.SaveTool(), "-t", "nat")
}

// swap replaces a Service's first endpoint with a fresh one.
func (pn *proxyNode) swap(t *testing.T, s *benchService) {
	t.Helper()
	if err := pn.w.objects.swapFirstEndpoint(t.Context(), s, pn.w.freshAddr(t)); err != nil {
		t.Fatalf("%v", err)
	}
	pn.changed = append(pn.changed, s)
}

// coldStart starts the daemon and waits until every Service's KUBE-SVC
// chain jumps to all its endpoints and a sample of Services answers. It
// returns the start time and when that was reached: the end of the restore
// that completed the rules, unless the sample did not answer right after
// it (then when it did).
func (pn *proxyNode) coldStart(t *testing.T, limit time.Duration) (time.Time, time.Time, error) {
	t.Helper()
	opts := framework.DaemonOptions{Binary: pn.wrapper, Args: pn.args}
	opts.Configure = func(c *kpv1alpha1.KubeProxyConfiguration) {
		if pn.spec.proxy == ProxyKubeProxyNFT {
			c.Mode = "nftables"
		}
		c.EnableProfiling = pn.spec.cfg.profile
	}
	pn.d = pn.node.StartDaemon(t, opts)
	t0 := time.Now()
	sample := spread(pn.services, 20)
	// iptables-save of a large table costs seconds of CPU that the daemon
	// would miss: read the rules again only after a new restore succeeded
	// and the restores paused.
	rulesOK, seen, probesFailed := false, 0, false
	var rulesAt time.Time
	done, err := poll(t.Context(), t0, limit, 250*time.Millisecond, pn.d, func(ctx context.Context) (bool, error) {
		if !rulesOK {
			n, last := 0, time.Time{}
			for _, r := range pn.restores() {
				if !r.IPv6() && r.Bytes > 0 && r.ExitCode == 0 {
					n++
					last = r.End
				}
			}
			if n == seen {
				return false, nil
			}
			// While a chunked cold sync is writing (a restore runs, or
			// one ended less than a second ago), reading the tables
			// would only steal its CPU: at 50,000 Services one read
			// costs tens of seconds. The time reported is the end of
			// the last restore either way.
			if pn.td.Running() || time.Since(last) < time.Second {
				return false, nil
			}
			seen = n
			if err := pn.checkRules(ctx); err != nil {
				return false, err
			}
			rulesOK, rulesAt = true, last
		}
		for _, s := range sample {
			if name, err := answeredBy(ctx, pn.node.NS, s.addr(), time.Second); err != nil || name != nameInitial {
				probesFailed = true
				return false, fmt.Errorf("%s answered by %q: %w", s.svc.Name, name, err)
			}
		}
		return true, nil
	})
	if err == nil && !probesFailed && rulesAt.After(t0) {
		done = rulesAt
	}
	if err == nil {
		// A chunked cold sync makes every Service chain complete before
		// its last transactions make them reachable: the cold start lasts
		// until that burst of restores ends.
		time.Sleep(300 * time.Millisecond) // the shim logs after the tool exits
		settle(pn.restores, pn.td.Running, 3*time.Second, 2*time.Minute)
		if end := BurstEnd(pn.restores(), false, t0, 3*time.Second); end.After(done) {
			pn.note("cold start: the rules checked complete %v after the start; the burst of restores ended %v after it",
				done.Sub(t0).Round(time.Millisecond), end.Sub(t0).Round(time.Millisecond))
			done = end
		}
	}
	return t0, done, err
}

// checkRules reads the node's rules (the nat table, or kube-proxy's
// nftables table) and checks that every Service's chain jumps to all its
// endpoints.
func (pn *proxyNode) checkRules(ctx context.Context) error {
	if pn.spec.proxy == ProxyKubeProxyNFT {
		out, err := pn.node.Run(ctx, "/usr/sbin/nft", "list", "table", "ip", "kube-proxy")
		if err != nil {
			return err
		}
		jumps := NFTEndpointJumps(out)
		for _, s := range pn.services {
			if got := jumps[s.nftKey]; got != len(s.endpoints) {
				return fmt.Errorf("service chain of %s jumps to %d endpoints, want %d", s.nftKey, got, len(s.endpoints))
			}
		}
		return nil
	}
	out, err := pn.save(ctx)
	if err != nil {
		return err
	}
	jumps := EndpointJumps(out)
	for _, s := range pn.services {
		if got := jumps[s.chain]; got != len(s.endpoints) {
			return fmt.Errorf("%s (%s) jumps to %d endpoints, want %d", s.chain, s.svc.Name, got, len(s.endpoints))
		}
	}
	return nil
}

// run benchmarks one proxy in a fresh node namespace. The API objects are
// back to their initial state when it returns.
func (w *world) run(t *testing.T, spec runSpec) *proxyResult {
	t.Helper()
	ctx := t.Context()
	cfg := spec.cfg
	limit := cfg.phaseTimeout
	res := newProxyResult("not measured")
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.notes = append(res.notes, msg)
		t.Logf("%s %s %s: %s", spec.size, spec.backend, spec.proxy, msg)
	}
	pn := w.newProxyNode(t, spec, note)
	defer pn.close(t)
	node, services, restores := pn.node, pn.services, pn.restores

	// 1. Cold start.
	t0, coldDone, err := pn.coldStart(t, limit)
	d := pn.d
	res.cold = timedValue(t0, coldDone, err, limit)
	if err != nil {
		note("cold start: %v", err)
		for _, v := range []*Value{&res.change, &res.restart} {
			*v = Missing(UnitDuration, "skipped (cold start)")
		}
		res.rss, res.hwm = readMemory(d)
		return res
	}
	b, n := Written(restores(), false, t0, coldDone)
	res.coldBytes = Bytes(b)
	note("cold start wrote %d bytes in %d restores", b, n)
	// Memory after the cold sync (coldStart waited for the restores to
	// settle).
	res.rss, _ = readMemory(d)

	if spec.proxy == ProxyIPTProxyBackend {
		// Only the restart is reported for iptproxy with the backend
		// given.
		pn.restart(t, res)
		return res
	}

	// 2. Endpoint changes.
	var took []time.Duration
	var bytesPer []float64
	for k := range cfg.changes {
		s := services[(2*k+1)*len(services)/(2*cfg.changes)]
		time.Sleep(2 * time.Second) // past any minimum sync period
		start := time.Now()
		pn.swap(t, s)
		done, err := poll(ctx, start, limit, 5*time.Millisecond, d, answersFresh(node, s))
		if err != nil {
			res.change = timedValue(start, done, err, limit)
			note("endpoint change %d: %v", k+1, err)
			break
		}
		took = append(took, done.Sub(start))
		waitLogged(restores, start, time.Minute)
		b, n := Written(restores(), false, start, done)
		bytesPer = append(bytesPer, float64(b))
		if n != 1 {
			note("endpoint change %d: %d restores between the update and the answer", k+1, n)
		}
	}
	if len(took) == cfg.changes {
		res.change = Duration(DurationPercentile(took, 50))
		res.changeBytes = Bytes(int64(Median(bytesPer)))
		note("endpoint changes took %v", took)
	}

	// 3. Peak memory after settling.
	settle(restores, pn.td.Running, 3*time.Second, time.Minute)
	_, res.hwm = readMemory(d)
	if cfg.profile {
		pn.saveHeapProfile(ctx)
	}

	// 4. First packet.
	w.firstPacket(t, node, services, spec, res, pn.save, note)

	// 5. Restart with one change made while down.
	pn.restart(t, res)
	return res
}

// restart stops the daemon, swaps one endpoint while it is down, starts it
// and measures how long until the change answers.
func (pn *proxyNode) restart(t *testing.T, res *proxyResult) {
	t.Helper()
	ctx := t.Context()
	d, note, restores, limit := pn.d, pn.note, pn.restores, pn.spec.cfg.phaseTimeout
	d.Stop(t)
	s := pn.services[len(pn.services)/3]
	pn.swap(t, s)
	time.Sleep(time.Second) // the apiserver has the change before the daemon lists
	start := time.Now()
	d.Start(t)
	done, err := poll(ctx, start, limit, 5*time.Millisecond, d, answersFresh(pn.node, s))
	res.restart = timedValue(start, done, err, limit)
	if err != nil {
		note("restart: %v", err)
		return
	}
	waitLogged(restores, start, time.Minute)
	settle(restores, pn.td.Running, 3*time.Second, time.Minute)
	if pn.spec.proxy == ProxyIPTProxy || pn.spec.proxy == ProxyIPTProxyBackend {
		if began, took, ok := FirstFullSync(d.Log(), start.Year(), time.Local); ok {
			note("restart: the first sync began %v after the start (flags, backend detection, client, RBAC check, the lists of Services and EndpointSlices) and took %v",
				began.Sub(start).Round(time.Millisecond), took.Round(time.Millisecond))
		}
	}
	b, n := Written(restores(), false, start, time.Now())
	res.restartBytes = Bytes(b)
	note("restart wrote %d bytes in %d restores until settled", b, n)
}

// answersFresh returns a check that a new connection to the Service from the
// node reaches the fresh backend namespace. Each call tries a few
// connections: the fresh endpoint is one of several.
func answersFresh(node *framework.Node, s *benchService) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		var lastErr error
		for range 8 {
			name, err := answeredBy(ctx, node.NS, s.addr(), 500*time.Millisecond)
			if name == nameFresh {
				return true, nil
			}
			if err != nil {
				lastErr = err
			}
		}
		return false, lastErr
	}
}

// waitLogged waits until the shim has logged an IPv4 restore that started
// at or after since, for at most max. A probe can see new rules before the
// restore that wrote them exits (the tool still frees its parse of the
// payload) and so before the shim logs it.
func waitLogged(restores func() []Restore, since time.Time, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if _, n := Written(restores(), false, since, time.Now()); n > 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settle waits until no restore runs and none has ended for quiet, or max
// has passed.
func settle(restores func() []Restore, running func() bool, quiet, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if running() {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		rs := restores()
		last := time.Time{}
		for _, r := range rs {
			if r.End.After(last) {
				last = r.End
			}
		}
		if time.Since(last) >= quiet {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// spread returns up to n Services evenly spread over the list.
func spread(services []*benchService, n int) []*benchService {
	if len(services) <= n {
		return services
	}
	out := make([]*benchService, n)
	for i := range n {
		out[i] = services[i*(len(services)-1)/(n-1)]
	}
	return out
}

// readMemory returns the daemon's VmRSS and VmHWM.
func readMemory(d *framework.Daemon) (rss, hwm Value) {
	rss, hwm = Missing(UnitMemory, "n/a"), Missing(UnitMemory, "n/a")
	p := d.Process()
	if p == nil || p.Exited() {
		return rss, hwm
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return rss, hwm
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = Memory(kb << 10)
		case "VmHWM":
			hwm = Memory(kb << 10)
		}
	}
	return rss, hwm
}

// firstPacket measures connect times from the node to 20 Services spread
// over KUBE-SERVICES (or over the cluster IP order when KUBE-SERVICES is not
// a list of Services, as with the dispatch tree and nftables mode) and to a
// non-Service address, and the same connects from the no-rules namespace to
// the endpoint addresses directly; it reports p50 and p90 of each, less the
// no-rules p50 and p90.
func (w *world) firstPacket(t *testing.T, node *framework.Node, services []*benchService, spec runSpec, res *proxyResult,
	save func(context.Context) (string, error), note func(string, ...any)) {
	t.Helper()
	var order []*benchService
	if spec.proxy != ProxyKubeProxyNFT {
		out, err := save(t.Context())
		if err != nil {
			note("first packet: iptables-save: %v", err)
			return
		}
		byIP := map[netip.Addr]*benchService{}
		for _, s := range services {
			byIP[s.clusterIP] = s
		}
		for _, a := range ChainDestinations(out, "KUBE-SERVICES") {
			if s := byIP[a]; s != nil {
				order = append(order, s)
			}
		}
	}
	how := "spread over KUBE-SERVICES"
	if len(order) < len(services)/2 {
		order = slices.Clone(services)
		slices.SortFunc(order, func(a, b *benchService) int { return a.clusterIP.Compare(b.clusterIP) })
		how = "spread over the cluster IP order (KUBE-SERVICES is not a list of Services)"
	}
	nonService, err := NthAddr(netipPrefix(EndpointRange), len(w.objects.services)*spec.size.Endpoints+1000)
	if err != nil {
		t.Fatalf("%v", err)
	}
	type target struct {
		node, baseline netip.AddrPort
		services       bool
	}
	picked := spread(order, firstPacketServices)
	var targets []target
	for _, s := range picked {
		// The baseline is a connect to one of the Service's endpoints
		// from a namespace without rules.
		targets = append(targets, target{s.addr(), netip.AddrPortFrom(s.endpoints[len(s.endpoints)-1], targetPort), true})
	}
	none := netip.AddrPortFrom(nonService, targetPort)
	targets = append(targets, target{none, none, false})
	note("first packet: %d Services %s (first %s, last %s), non-Service %s", len(picked), how,
		picked[0].svc.Name, picked[len(picked)-1].svc.Name, nonService)

	// connects per Service target, so that each group has about
	// spec.cfg.connects.
	perService := max(1, spec.cfg.connects/len(picked))
	var nodeSvc, baseSvc, nodeNone, baseNone []time.Duration
	failures := 0
	const batch = 25
	for done := 0; done < spec.cfg.connects; done += batch {
		for _, tg := range targets {
			n := min(batch, spec.cfg.connects-done)
			nodeOut, baseOut := &nodeNone, &baseNone
			if tg.services {
				if done >= perService {
					continue
				}
				n = min(batch, perService-done)
				nodeOut, baseOut = &nodeSvc, &baseSvc
			}
			for _, side := range []struct {
				ns   *framework.NS
				addr netip.AddrPort
				out  *[]time.Duration
			}{{node.NS, tg.node, nodeOut}, {w.bare.NS, tg.baseline, baseOut}} {
				ts, fails, err := connectTimes(side.ns.NetNS, side.addr, n)
				if err != nil {
					note("first packet: %v", err)
					return
				}
				failures += fails
				*side.out = append(*side.out, ts...)
			}
		}
	}
	if failures > 0 {
		note("first packet: %d connects failed (left out)", failures)
	}
	over := func(nodeTimes, baseTimes []time.Duration, p float64) Value {
		if len(nodeTimes) == 0 || len(baseTimes) == 0 {
			return Missing(UnitOverhead, "no connects")
		}
		return Overhead(DurationPercentile(nodeTimes, p) - DurationPercentile(baseTimes, p))
	}
	res.firstPacket[KeyFirstSvcP50] = over(nodeSvc, baseSvc, 50)
	res.firstPacket[KeyFirstSvcP90] = over(nodeSvc, baseSvc, 90)
	res.firstPacket[KeyFirstNoneP50] = over(nodeNone, baseNone, 50)
	res.firstPacket[KeyFirstNoneP90] = over(nodeNone, baseNone, 90)
	if all := append(slices.Clone(baseSvc), baseNone...); len(all) > 0 {
		res.baseline = Micros(DurationPercentile(all, 50))
	}
}

// connectTimes runs ConnectTimes inside the namespace.
func connectTimes(ns *netns.NetNS, addr netip.AddrPort, n int) ([]time.Duration, int, error) {
	var ts []time.Duration
	var failed int
	err := ns.Do(func() error {
		var err error
		ts, failed, err = ConnectTimes(addr, n, time.Second)
		return err
	})
	return ts, failed, err
}
