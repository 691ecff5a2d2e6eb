package scale

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// Environment variables that configure TestBench.
const (
	// envBench must be "1" for TestBench to run (make bench sets it).
	envBench = "IPTPROXY_BENCH"
	// envSizes lists the sizes, "<services>x<endpoints>,...".
	envSizes = "BENCH_SIZES"
	// envBackends lists the iptables backends, "nft,legacy".
	envBackends = "BENCH_BACKENDS"
	// envProxies lists the proxies (see allProxies).
	envProxies = "BENCH_PROXIES"
	// envPhaseTimeout bounds every phase (a Go duration).
	envPhaseTimeout = "BENCH_PHASE_TIMEOUT"
	// envConnects is the number of connects per first-packet group (the
	// Services, spread over 20 of them; the non-Service address).
	envConnects = "BENCH_CONNECTS"
	// envChanges is the number of endpoint changes whose median is
	// reported.
	envChanges = "BENCH_CHANGES"
	// envOutput is the directory the table is written to.
	envOutput = "BENCH_OUTPUT"
	// envProfile, when "1", turns on enableProfiling in the proxies and
	// saves each one's heap profile, taken after the memory reading, to
	// the output directory as heap-<size>-<backend>-<proxy>.pb.gz.
	envProfile = "BENCH_PROFILE"
	// envLoadWorkers is how many object creates run at once.
	envLoadWorkers = "BENCH_LOAD_WORKERS"
	// envLoadOnly, when "1", only creates the objects of every size and
	// reports how long that took (no proxy runs).
	envLoadOnly = "BENCH_LOAD_ONLY"
	// envAPIServerArgs are extra kube-apiserver flags, space-separated.
	envAPIServerArgs = "BENCH_APISERVER_ARGS"
	// envKeepPayloads, when "1", keeps every restore or nft payload of
	// 1 MB or more under the output directory (payloads-<node>/), to
	// replay them (test/scale/restorecost).
	envKeepPayloads = "BENCH_KEEP_PAYLOADS"
)

// allProxies are the proxies BENCH_PROXIES may list, in table order; all of
// them run by default. Every proxy runs with its default flags, except
// ProxyIPTProxyBackend, which is iptproxy with --iptables-backend given and
// is measured for its restart only (issue 12: the cost of backend
// detection). kube-proxy-nft (kube-proxy with mode: nftables) does not use
// iptables: it runs once per size, and its figures stand in every
// backend's rows.
var allProxies = []string{ProxyIPTProxy, ProxyIPTProxyBackend, ProxyKubeProxy, ProxyKubeProxyNFT}

// benchConfig is TestBench's configuration, from the environment.
type benchConfig struct {
	sizes         []Size
	backends      []string
	proxies       []string
	phaseTimeout  time.Duration
	connects      int
	changes       int
	output        string
	profile       bool
	loadWorkers   int
	loadOnly      bool
	keepPayloads  bool
	apiserverArgs []string
}

func loadConfig(t *testing.T, root string) benchConfig {
	t.Helper()
	get := func(k, def string) string {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return v
		}
		return def
	}
	var err error
	cfg := benchConfig{output: get(envOutput, filepath.Join(root, "_output", "bench"))}
	if cfg.sizes, err = ParseSizes(get(envSizes, "1000x10,10000x10")); err != nil {
		t.Fatalf("%s: %v", envSizes, err)
	}
	// Objects are only ever added: run the sizes smallest first.
	slices.SortStableFunc(cfg.sizes, func(a, b Size) int { return a.Services - b.Services })
	if cfg.backends, err = ParseList(get(envBackends, "nft,legacy"), "nft", "legacy"); err != nil {
		t.Fatalf("%s: %v", envBackends, err)
	}
	if cfg.proxies, err = ParseList(get(envProxies, strings.Join(allProxies, ",")), allProxies...); err != nil {
		t.Fatalf("%s: %v", envProxies, err)
	}
	// Table order, whatever the order given.
	slices.SortStableFunc(cfg.proxies, func(a, b string) int { return slices.Index(allProxies, a) - slices.Index(allProxies, b) })
	if cfg.phaseTimeout, err = time.ParseDuration(get(envPhaseTimeout, "15m")); err != nil || cfg.phaseTimeout <= 0 {
		t.Fatalf("%s: want a positive duration such as 15m", envPhaseTimeout)
	}
	if cfg.connects, err = strconv.Atoi(get(envConnects, "2000")); err != nil || cfg.connects < 20 {
		t.Fatalf("%s: want a number >= 20", envConnects)
	}
	if cfg.changes, err = strconv.Atoi(get(envChanges, "5")); err != nil || cfg.changes < 1 {
		t.Fatalf("%s: want a number >= 1", envChanges)
	}
	if cfg.loadWorkers, err = strconv.Atoi(get(envLoadWorkers, strconv.Itoa(defaultLoadWorkers))); err != nil || cfg.loadWorkers < 1 {
		t.Fatalf("%s: want a number >= 1", envLoadWorkers)
	}
	cfg.profile = get(envProfile, "0") == "1"
	cfg.loadOnly = get(envLoadOnly, "0") == "1"
	cfg.keepPayloads = get(envKeepPayloads, "0") == "1"
	cfg.apiserverArgs = strings.Fields(os.Getenv(envAPIServerArgs))
	return cfg
}

// requireBinaries returns each proxy's binary, skipping the test when one
// is missing.
func requireBinaries(t *testing.T, proxies []string) map[string]string {
	t.Helper()
	bins := map[string]string{}
	for _, p := range proxies {
		if Upstream(p) {
			bins[p] = framework.RequireKubeProxy(t)
		} else {
			bins[p] = framework.RequireIPTProxy(t)
		}
		if p == ProxyKubeProxyNFT {
			framework.RequireCommands(t, "nft")
		}
	}
	return bins
}

// TestBench runs the benchmark: for every size and backend, every proxy in
// a fresh node namespace against the same apiserver, then prints one table
// and writes it to the output directory. It is not a pass/fail test: a
// phase that runs out of time is reported as such; the test fails only when
// the harness itself cannot work.
func TestBench(t *testing.T) {
	if os.Getenv(envBench) != "1" {
		t.Skipf("the benchmark runs only with %s=1 (make bench)", envBench)
	}
	env := framework.RequireCluster(t)
	cfg := loadConfig(t, env.Root)
	var bins map[string]string
	if !cfg.loadOnly {
		bins = requireBinaries(t, cfg.proxies)
	}
	for _, b := range cfg.backends {
		framework.RequireCommands(t, "iptables-"+b+"-restore", "iptables-"+b+"-save")
	}
	started := time.Now().UTC()
	c := framework.NewCluster(t, framework.ClusterOptions{APIServerArgs: cfg.apiserverArgs})
	w := newWorld(t, c, cfg)

	table := Table{Proxies: tableColumns(cfg.proxies)}
	var notes []string
	for _, size := range cfg.sizes {
		summary, err := w.objects.ensure(t.Context(), size, t.Logf)
		if err != nil {
			t.Fatalf("creating %s objects: %v", size, err)
		}
		t.Logf("%s: %d Services with %d endpoints each in the apiserver: %s", size, size.Services, size.Endpoints, summary)
		notes = append(notes, fmt.Sprintf("%s: loading the objects: %s", size, summary))
		if cfg.loadOnly {
			writeReport(t, cfg, env.Root, started, table, notes)
			continue
		}
		var nftMode *proxyResult // kube-proxy-nft's run at this size, for every backend
		for _, backend := range cfg.backends {
			results := map[string]*proxyResult{}
			for _, p := range cfg.proxies {
				if p == ProxyKubeProxyNFT && nftMode != nil {
					results[p] = nftMode
					continue
				}
				r := w.run(t, runSpec{proxy: p, binary: bins[p], backend: backend, size: size, cfg: cfg})
				results[p] = r
				if p == ProxyKubeProxyNFT {
					nftMode = r
				}
				for _, n := range r.notes {
					notes = append(notes, fmt.Sprintf("%s, %s, %s: %s", size, backend, p, n))
				}
			}
			table.Rows = append(table.Rows, rowsFor(size, backend, results, cfg)...)
			writeReport(t, cfg, env.Root, started, table, notes)
		}
	}
	fmt.Printf("\n%s\n", table.Markdown())
	for _, n := range notes {
		fmt.Printf("- %s\n", n)
	}
}

// tableColumns returns the table's columns: the proxies run, except
// iptproxy with an explicit backend, whose one figure goes in iptproxy's
// column of its own row.
func tableColumns(proxies []string) []string {
	var cols []string
	for _, p := range proxies {
		if p == ProxyIPTProxyBackend {
			if !slices.Contains(proxies, ProxyIPTProxy) {
				cols = append(cols, ProxyIPTProxy)
			}
			continue
		}
		cols = append(cols, p)
	}
	return cols
}

// rowsFor turns the proxies' results into table rows; a proxy without a
// result shows as "not run".
func rowsFor(size Size, backend string, results map[string]*proxyResult, cfg benchConfig) []Row {
	row := func(key, metric string, get func(*proxyResult) Value) Row {
		r := Row{Size: size.String(), Backend: backend, Key: key, Metric: metric, Values: map[string]Value{}}
		for _, p := range cfg.proxies {
			if p == ProxyIPTProxyBackend {
				continue
			}
			if res := results[p]; res != nil {
				r.Values[p] = get(res)
			} else {
				r.Values[p] = Missing(UnitDuration, "not run")
			}
		}
		return r
	}
	rows := []Row{
		row(KeyCold, "cold start → all Services reachable", func(r *proxyResult) Value { return r.cold }),
		row(KeyChange, fmt.Sprintf("endpoint change → new endpoint answers (median of %d)", cfg.changes), func(r *proxyResult) Value { return r.change }),
		row(KeyRestart, "restart, one change made while down → change answers", func(r *proxyResult) Value { return r.restart }),
	}
	if res := results[ProxyIPTProxyBackend]; res != nil {
		r := row(KeyRestartBackend, fmt.Sprintf("restart as above, iptproxy given --iptables-backend=%s", backend), func(r *proxyResult) Value { return r.restart })
		r.Values[ProxyIPTProxy] = res.restart
		rows = append(rows, r)
	}
	return append(rows,
		row(KeyRSS, "memory VmRSS after the cold sync", func(r *proxyResult) Value { return r.rss }),
		row(KeyHWM, "memory VmHWM (peak) after the endpoint changes", func(r *proxyResult) Value { return r.hwm }),
		row(KeyColdBytes, "bytes written: cold start", func(r *proxyResult) Value { return r.coldBytes }),
		row(KeyChangeBytes, "bytes written per endpoint-change sync (median)", func(r *proxyResult) Value { return r.changeBytes }),
		row(KeyRestartBytes, "bytes written: restart", func(r *proxyResult) Value { return r.restartBytes }),
		row(KeyFirstSvcP50, fmt.Sprintf("first packet − no-rules, 20 Services, p50 (%d connects)", cfg.connects), func(r *proxyResult) Value { return r.firstPacket[KeyFirstSvcP50] }),
		row(KeyFirstSvcP90, "first packet − no-rules, 20 Services, p90", func(r *proxyResult) Value { return r.firstPacket[KeyFirstSvcP90] }),
		row(KeyFirstNoneP50, fmt.Sprintf("first packet − no-rules, non-Service address, p50 (%d connects)", cfg.connects), func(r *proxyResult) Value { return r.firstPacket[KeyFirstNoneP50] }),
		row(KeyFirstNoneP90, "first packet − no-rules, non-Service address, p90", func(r *proxyResult) Value { return r.firstPacket[KeyFirstNoneP90] }),
		row(KeyBaseline, "no-rules connect p50 (the baseline subtracted above)", func(r *proxyResult) Value { return r.baseline }),
	)
}

// writeReport writes the table so far, with the run's context, to the
// output directory (a run cut short still leaves its figures).
func writeReport(t *testing.T, cfg benchConfig, root string, started time.Time, table Table, notes []string) {
	t.Helper()
	if err := os.MkdirAll(cfg.output, 0o755); err != nil {
		t.Errorf("creating %s: %v", cfg.output, err)
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# iptproxy vs kube-proxy (iptables and nftables modes), %s\n\n", started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s\n", machine())
	fmt.Fprintf(&b, "- iptproxy commit: %s\n", gitCommit(root))
	fmt.Fprintf(&b, "- kube-proxy: %s\n", kubeProxyVersion())
	fmt.Fprintf(&b, "- every proxy with its default flags (iptproxy: no --iptables-backend); phase timeout %v, %d connects per first-packet group, %d endpoint changes\n\n", cfg.phaseTimeout, cfg.connects, cfg.changes)
	b.WriteString(table.Markdown())
	if len(notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	path := filepath.Join(cfg.output, "bench-"+started.Format("20060102-150405")+".md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("writing %s: %v", path, err)
		return
	}
	rep := Report{Started: started, Machine: machine(), Commit: gitCommit(root), KubeProxy: kubeProxyVersion(),
		PhaseTimeoutSeconds: cfg.phaseTimeout.Seconds(), Connects: cfg.connects, Changes: cfg.changes,
		Proxies: table.Proxies, Rows: table.ReportRows()}
	if err := WriteReport(strings.TrimSuffix(path, ".md")+".json", rep); err != nil {
		t.Errorf("%v", err)
	}
	t.Logf("table written to %s (and .json)", path)
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	ipt := "iptables ?"
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		ipt = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d CPUs (%s), kernel %s, %s", runtime.NumCPU(), model, kernel, ipt)
}

func gitCommit(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// kubeProxyVersion returns what hack/build-tools.sh recorded next to the
// kube-proxy binary.
func kubeProxyVersion() string {
	env, err := framework.LoadEnv()
	if err != nil {
		return "unknown"
	}
	if b, err := os.ReadFile(env.KubeProxy() + ".version"); err == nil {
		return strings.TrimSpace(string(b))
	}
	return "unknown"
}

// world is what every run shares: the cluster, the backend namespaces, the
// no-rules namespace and the API objects.
type world struct {
	c       *framework.Cluster
	bare    *framework.Node
	routes  map[netip.Prefix]netip.Addr
	objects *objectSet
	runs    int
	fresh   int // fresh endpoint addresses handed out so far
}

// Names the backend namespaces answer with.
const (
	nameInitial = "backend"
	nameFresh   = "fresh"
	servicePort = 80
	targetPort  = 8080
)

func newWorld(t *testing.T, c *framework.Cluster, bc benchConfig) *world {
	t.Helper()
	w := &world{c: c, routes: map[netip.Prefix]netip.Addr{}}
	for _, b := range []struct{ name, prefix string }{{nameInitial, EndpointRange}, {nameFresh, FreshRange}} {
		cl := c.AddClient(t, b.name)
		// AnyIP: every address of the range is local, one listener answers
		// on all of them.
		cl.Exec(t, "ip", "route", "add", "local", b.prefix, "dev", "lo")
		cl.StartEcho(t, framework.EchoOptions{Name: b.name, TCP: []int{targetPort}})
		w.routes[netip.MustParsePrefix(b.prefix)] = cl.IP(v1.IPv4Protocol)
	}
	w.bare = w.addNode(t, "bare")
	// The no-rules namespace reaches both ranges, on any address.
	for _, b := range []struct{ name, prefix string }{{nameInitial, EndpointRange}, {nameFresh, FreshRange}} {
		a, err := NthAddr(netip.MustParsePrefix(b.prefix), 12345)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := answeredBy(t.Context(), w.bare.NS, netip.AddrPortFrom(a, targetPort), 2*time.Second); err != nil || got != b.name {
			t.Fatalf("AnyIP check: %s:%d answered by %q (%v), want %q", a, targetPort, got, err, b.name)
		}
	}
	cfg := c.RESTConfig()
	cfg.QPS, cfg.Burst = 5000, 10000
	// Protobuf costs the apiserver less than JSON to decode and encode.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("creating a fast client: %v", err)
	}
	c.CreateNamespace(t, benchNamespace)
	w.objects = &objectSet{client: client, workers: bc.loadWorkers}
	return w
}

// addNode adds a node namespace with routes to the backend ranges.
func (w *world) addNode(t *testing.T, name string) *framework.Node {
	t.Helper()
	n := w.c.AddNode(t, framework.NodeOptions{Name: name})
	for p, gw := range w.routes {
		n.AddRoute(t, p, gw)
	}
	// Harness nodes have no default route, and a node's own connect to
	// a cluster IP needs a route before the nat OUTPUT chain rewrites
	// its destination; a real node has a default route.
	n.AddRoute(t, netip.MustParsePrefix("0.0.0.0/0"), w.routes[netip.MustParsePrefix(EndpointRange)])
	return n
}

// freshAddr returns a new address in FreshRange.
func (w *world) freshAddr(t *testing.T) netip.Addr {
	t.Helper()
	a, err := NthAddr(netip.MustParsePrefix(FreshRange), w.fresh)
	if err != nil {
		t.Fatalf("fresh endpoint address: %v", err)
	}
	w.fresh++
	return a
}

// answeredBy sends one echo request over a new TCP connection from ns and
// returns the name of the backend namespace that answered.
func answeredBy(ctx context.Context, ns *framework.NS, addr netip.AddrPort, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, err := ns.Request(ctx, v1.ProtocolTCP, addr)
	return r.Name, err
}
