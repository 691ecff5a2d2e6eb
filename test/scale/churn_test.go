package scale

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// Environment variables of TestChurn (besides BENCH_BACKENDS,
// BENCH_PROXIES, BENCH_PHASE_TIMEOUT and BENCH_OUTPUT).
const (
	// envChurn must be "1" for TestChurn to run (make bench-churn).
	envChurn = "IPTPROXY_BENCH_CHURN"
	// envChurnSize is the cluster size, "<services>x<endpoints>".
	envChurnSize = "BENCH_CHURN_SIZE"
	// envChurnRate is EndpointSlice updates per second.
	envChurnRate = "BENCH_CHURN_RATE"
	// envChurnDuration is how long the churn lasts (a Go duration).
	envChurnDuration = "BENCH_CHURN_DURATION"
)

// Metric names read from the daemons' /metrics (port 10249).
const (
	metricProgramming = "kubeproxy_network_programming_duration_seconds"
	churnWorkers      = 16
	rssEvery          = 10 * time.Second
)

// churnResult is one proxy's churn figures.
type churnResult struct {
	sent, dropped    Value
	p50, p99         Value
	syncs            Value
	rssStart, rssEnd Value
	rssMax           Value
	notes            []string
	rssSamples       []string
}

// TestChurn runs the sustained-churn benchmark (issue 7, Load): a proxy
// with N Services receives a steady stream of EndpointSlice updates, and the
// table reports network programming latency (from each daemon's
// kubeproxy_network_programming_duration_seconds, fed by the slices'
// last-change-trigger-time annotations), how many syncs (restores) it ran,
// and its resident memory over time.
func TestChurn(t *testing.T) {
	if os.Getenv(envChurn) != "1" {
		t.Skipf("the churn benchmark runs only with %s=1 (make bench-churn)", envChurn)
	}
	env := framework.RequireCluster(t)
	t.Setenv(envSizes, envOr(envChurnSize, "10000x10"))
	cfg := loadConfig(t, env.Root)
	size := cfg.sizes[0]
	rate, err := strconv.Atoi(envOr(envChurnRate, "100"))
	if err != nil || rate < 1 || rate > 1000 {
		t.Fatalf("%s: want 1..1000 updates per second", envChurnRate)
	}
	dur, err := time.ParseDuration(envOr(envChurnDuration, "10m"))
	if err != nil || dur <= 0 {
		t.Fatalf("%s: want a positive duration such as 10m", envChurnDuration)
	}
	// iptproxy with an explicit backend is a restart figure of TestBench.
	cfg.proxies = slices.DeleteFunc(cfg.proxies, func(p string) bool { return p == ProxyIPTProxyBackend })
	bins := requireBinaries(t, cfg.proxies)
	started := time.Now().UTC()
	c := framework.NewCluster(t, framework.ClusterOptions{APIServerArgs: cfg.apiserverArgs})
	w := newWorld(t, c, cfg)
	summary, err := w.objects.ensure(t.Context(), size, t.Logf)
	if err != nil {
		t.Fatalf("creating %s objects: %v", size, err)
	}
	t.Logf("%s: %s", size, summary)
	table := Table{Proxies: cfg.proxies}
	var notes []string
	for _, backend := range cfg.backends {
		res := map[string]*churnResult{}
		for _, p := range cfg.proxies {
			r := w.churn(t, runSpec{proxy: p, binary: bins[p], backend: backend, size: size, cfg: cfg}, rate, dur)
			res[p] = r
			for _, n := range r.notes {
				notes = append(notes, fmt.Sprintf("%s, %s, %s: %s", size, backend, p, n))
			}
		}
		get := func(p string, f func(*churnResult) Value) Value {
			if r := res[p]; r != nil {
				return f(r)
			}
			return Missing(UnitDuration, "not run")
		}
		row := func(metric string, f func(*churnResult) Value) Row {
			r := Row{Size: size.String(), Backend: backend, Metric: metric, Values: map[string]Value{}}
			for _, p := range cfg.proxies {
				r.Values[p] = get(p, f)
			}
			return r
		}
		table.Rows = append(table.Rows,
			row(fmt.Sprintf("EndpointSlice updates sent (%d/s for %v)", rate, dur), func(r *churnResult) Value { return r.sent }),
			row("updates dropped (client behind)", func(r *churnResult) Value { return r.dropped }),
			row("network programming latency p50", func(r *churnResult) Value { return r.p50 }),
			row("network programming latency p99", func(r *churnResult) Value { return r.p99 }),
			row("syncs (IPv4 restores) during churn", func(r *churnResult) Value { return r.syncs }),
			row("VmRSS at churn start", func(r *churnResult) Value { return r.rssStart }),
			row("VmRSS at churn end", func(r *churnResult) Value { return r.rssEnd }),
			row("VmRSS max during churn", func(r *churnResult) Value { return r.rssMax }),
		)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Endpoint churn, iptproxy vs kube-proxy, %s\n\n", started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s\n- iptproxy commit: %s\n- kube-proxy: %s\n\n", machine(), gitCommit(env.Root), kubeProxyVersion())
	b.WriteString(table.Markdown())
	if len(notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	fmt.Printf("\n%s", b.String())
	if err := os.MkdirAll(cfg.output, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	path := filepath.Join(cfg.output, "churn-"+started.Format("20060102-150405")+".md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("writing %s: %v", path, err)
	}
}

func envOr(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

// churn runs one proxy through the churn.
func (w *world) churn(t *testing.T, spec runSpec, rate int, dur time.Duration) *churnResult {
	t.Helper()
	ctx := t.Context()
	res := &churnResult{}
	for _, v := range []*Value{&res.sent, &res.dropped, &res.syncs} {
		*v = Missing(UnitCount, "not measured")
	}
	res.p50, res.p99 = Missing(UnitDuration, "not measured"), Missing(UnitDuration, "not measured")
	for _, v := range []*Value{&res.rssStart, &res.rssEnd, &res.rssMax} {
		*v = Missing(UnitMemory, "not measured")
	}
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.notes = append(res.notes, msg)
		t.Logf("churn %s %s %s: %s", spec.size, spec.backend, spec.proxy, msg)
	}
	pn := w.newProxyNode(t, spec, note)
	defer pn.close(t)
	t0, done, err := pn.coldStart(t, spec.cfg.phaseTimeout)
	if err != nil {
		note("cold start: %v", err)
		return res
	}
	note("cold start took %v", done.Sub(t0).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	settle(pn.restores, pn.td.Running, 3*time.Second, 2*time.Minute)

	before, err := programming(ctx, pn.d)
	if err != nil {
		note("metrics before: %v", err)
		return res
	}
	churnStart := time.Now()
	rss0, _ := readMemory(pn.d)
	res.rssStart = rss0
	maxRSS := rss0

	// Toggle one Service's first endpoint per update, round robin, so that
	// every update is a real change; Services left toggled are reset at
	// the end.
	toggled := make([]bool, len(pn.services))
	var mu sync.Mutex
	jobs := make(chan int, churnWorkers)
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	for range churnWorkers {
		wg.Go(func() {
			for idx := range jobs {
				s := pn.services[idx]
				mu.Lock()
				toggled[idx] = !toggled[idx]
				on := toggled[idx]
				mu.Unlock()
				eps := s.endpoints
				if on {
					fresh, err := NthAddr(netip.MustParsePrefix(FreshRange), 20000+idx%40000)
					if err != nil {
						failed.Add(1)
						continue
					}
					eps = append([]netip.Addr{fresh}, s.endpoints[1:]...)
				}
				if err := w.objects.writeSliceAt(ctx, s, eps, false, time.Now()); err != nil {
					failed.Add(1)
					continue
				}
				sent.Add(1)
			}
		})
	}
	dropped := 0
	tick := time.NewTicker(time.Second / time.Duration(rate))
	sample := time.NewTicker(rssEvery)
	end := time.After(dur)
	k := 0
loop:
	for {
		select {
		case <-tick.C:
			select {
			case jobs <- k % len(pn.services):
			default:
				dropped++
			}
			k++
		case <-sample.C:
			if v, _ := readMemory(pn.d); v.Valid {
				res.rssSamples = append(res.rssSamples, fmt.Sprintf("%s %.0fMiB", time.Since(churnStart).Round(time.Second), v.X/(1<<20)))
				if !maxRSS.Valid || v.X > maxRSS.X {
					maxRSS = v
				}
			}
		case <-end:
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	tick.Stop()
	sample.Stop()
	close(jobs)
	wg.Wait()
	churnEnd := time.Now()
	for idx, on := range toggled {
		if on {
			pn.changed = append(pn.changed, pn.services[idx])
		}
	}
	res.sent, res.dropped = Count(int(sent.Load())), Count(dropped+int(failed.Load()))
	if !pn.d.Running() {
		note("the daemon exited during the churn: %v", pn.d.Process().Err())
		return res
	}
	time.Sleep(time.Second)
	settle(pn.restores, pn.td.Running, 3*time.Second, spec.cfg.phaseTimeout)
	after, err := programming(ctx, pn.d)
	if err != nil {
		note("metrics after: %v", err)
		return res
	}
	h := after.Sub(before)
	if p := h.Quantile(0.5); !math.IsNaN(p) {
		res.p50 = Duration(time.Duration(p * float64(time.Second)))
		res.p99 = Duration(time.Duration(h.Quantile(0.99) * float64(time.Second)))
	} else {
		note("no network programming latency observed (%v)", h.Count)
	}
	_, syncs := Written(pn.restores(), false, churnStart, churnEnd)
	res.syncs = Count(syncs)
	rss1, _ := readMemory(pn.d)
	res.rssEnd = rss1
	if rss1.Valid && rss1.X > maxRSS.X {
		maxRSS = rss1
	}
	res.rssMax = maxRSS
	note("%d latency observations; RSS every %v: %s", int(h.Count), rssEvery, strings.Join(res.rssSamples, ", "))
	return res
}

// programming reads the daemon's network programming latency histogram.
func programming(ctx context.Context, d *framework.Daemon) (Histogram, error) {
	code, body, err := d.Get(ctx, 10249, "/metrics")
	if err != nil {
		return Histogram{}, fmt.Errorf("reading /metrics: %w", err)
	}
	if code != 200 {
		return Histogram{}, fmt.Errorf("/metrics: HTTP %d", code)
	}
	return ParseHistogram(body, metricProgramming)
}
