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
	// envProxies lists the proxies, "iptproxy,kube-proxy".
	envProxies = "BENCH_PROXIES"
	// envPhaseTimeout bounds every phase (a Go duration).
	envPhaseTimeout = "BENCH_PHASE_TIMEOUT"
	// envConnects is the number of connects per first-packet target.
	envConnects = "BENCH_CONNECTS"
	// envChanges is the number of endpoint changes whose median is
	// reported.
	envChanges = "BENCH_CHANGES"
	// envOutput is the directory the table is written to.
	envOutput = "BENCH_OUTPUT"
	// envProfile, when "1", turns on enableProfiling in both proxies and
	// saves each one's heap profile, taken after the memory reading, to
	// the output directory as heap-<size>-<backend>-<proxy>.pb.gz.
	envProfile = "BENCH_PROFILE"
)

// The proxies TestBench compares.
const (
	proxyIPTProxy  = "iptproxy"
	proxyKubeProxy = "kube-proxy"
)

// benchConfig is TestBench's configuration, from the environment.
type benchConfig struct {
	sizes        []Size
	backends     []string
	proxies      []string
	phaseTimeout time.Duration
	connects     int
	changes      int
	output       string
	profile      bool
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
	if cfg.proxies, err = ParseList(get(envProxies, proxyIPTProxy+","+proxyKubeProxy), proxyIPTProxy, proxyKubeProxy); err != nil {
		t.Fatalf("%s: %v", envProxies, err)
	}
	if cfg.phaseTimeout, err = time.ParseDuration(get(envPhaseTimeout, "15m")); err != nil || cfg.phaseTimeout <= 0 {
		t.Fatalf("%s: want a positive duration such as 15m", envPhaseTimeout)
	}
	if cfg.connects, err = strconv.Atoi(get(envConnects, "2000")); err != nil || cfg.connects < 10 {
		t.Fatalf("%s: want a number >= 10", envConnects)
	}
	if cfg.changes, err = strconv.Atoi(get(envChanges, "5")); err != nil || cfg.changes < 1 {
		t.Fatalf("%s: want a number >= 1", envChanges)
	}
	cfg.profile = get(envProfile, "0") == "1"
	return cfg
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
	bins := map[string]string{}
	for _, p := range cfg.proxies {
		if p == proxyIPTProxy {
			bins[p] = framework.RequireIPTProxy(t)
		} else {
			bins[p] = framework.RequireKubeProxy(t)
		}
	}
	for _, b := range cfg.backends {
		framework.RequireCommands(t, "iptables-"+b+"-restore", "iptables-"+b+"-save")
	}
	started := time.Now().UTC()
	c := framework.NewCluster(t, framework.ClusterOptions{})
	w := newWorld(t, c)

	var table Table
	var notes []string
	for _, size := range cfg.sizes {
		start := time.Now()
		if err := w.objects.ensure(t.Context(), size); err != nil {
			t.Fatalf("creating %s objects: %v", size, err)
		}
		t.Logf("%s: %d Services with %d endpoints each in the apiserver (%v)", size, size.Services, size.Endpoints, time.Since(start).Round(time.Second))
		for _, backend := range cfg.backends {
			results := map[string]*proxyResult{}
			for _, p := range cfg.proxies {
				r := w.run(t, runSpec{proxy: p, binary: bins[p], backend: backend, size: size, cfg: cfg})
				results[p] = r
				for _, n := range r.notes {
					notes = append(notes, fmt.Sprintf("%s, %s, %s: %s", size, backend, p, n))
				}
			}
			table.Rows = append(table.Rows, rowsFor(size, backend, results[proxyIPTProxy], results[proxyKubeProxy], cfg)...)
			writeReport(t, cfg, env.Root, started, table, notes)
		}
	}
	fmt.Printf("\n%s\n", table.Markdown())
	for _, n := range notes {
		fmt.Printf("- %s\n", n)
	}
}

// rowsFor turns two proxies' results into table rows; a nil result (the
// proxy was not run) shows as "not run".
func rowsFor(size Size, backend string, ipt, kp *proxyResult, cfg benchConfig) []Row {
	if ipt == nil {
		ipt = newProxyResult("not run")
	}
	if kp == nil {
		kp = newProxyResult("not run")
	}
	row := func(metric string, get func(*proxyResult) Value) Row {
		return Row{Size: size.String(), Backend: backend, Metric: metric, IPTProxy: get(ipt), KubeProxy: get(kp)}
	}
	return []Row{
		row("cold start → all Services reachable", func(r *proxyResult) Value { return r.cold }),
		row(fmt.Sprintf("endpoint change → new endpoint answers (median of %d)", cfg.changes), func(r *proxyResult) Value { return r.change }),
		row("restart, one change made while down → change answers", func(r *proxyResult) Value { return r.restart }),
		row("memory VmRSS after settling", func(r *proxyResult) Value { return r.rss }),
		row("memory VmHWM (peak)", func(r *proxyResult) Value { return r.hwm }),
		row("bytes written: cold start", func(r *proxyResult) Value { return r.coldBytes }),
		row("bytes written per endpoint-change sync (median)", func(r *proxyResult) Value { return r.changeBytes }),
		row("bytes written: restart", func(r *proxyResult) Value { return r.restartBytes }),
		row(fmt.Sprintf("first packet p50 − no-rules p50: Service early in KUBE-SERVICES (%d connects)", cfg.connects), func(r *proxyResult) Value { return r.firstPacket[targetEarly] }),
		row("first packet p50 − no-rules p50: Service in the middle", func(r *proxyResult) Value { return r.firstPacket[targetMiddle] }),
		row("first packet p50 − no-rules p50: Service late", func(r *proxyResult) Value { return r.firstPacket[targetLate] }),
		row("first packet p50 − no-rules p50: non-Service address", func(r *proxyResult) Value { return r.firstPacket[targetNone] }),
		row("no-rules connect p50 (the baseline subtracted above)", func(r *proxyResult) Value { return r.baseline }),
	}
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
	fmt.Fprintf(&b, "# iptproxy vs kube-proxy, %s\n\n", started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s\n", machine())
	fmt.Fprintf(&b, "- iptproxy commit: %s\n", gitCommit(root))
	fmt.Fprintf(&b, "- kube-proxy: %s\n", kubeProxyVersion())
	fmt.Fprintf(&b, "- phase timeout %v, %d connects per first-packet target, %d endpoint changes\n\n", cfg.phaseTimeout, cfg.connects, cfg.changes)
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
	t.Logf("table written to %s", path)
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

func newWorld(t *testing.T, c *framework.Cluster) *world {
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
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("creating a fast client: %v", err)
	}
	c.CreateNamespace(t, benchNamespace)
	w.objects = &objectSet{client: client}
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
