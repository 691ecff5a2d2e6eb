package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
)

// DaemonOptions configures a proxy daemon (iptproxy, or upstream kube-proxy
// for comparisons) on a node.
type DaemonOptions struct {
	// Binary is the program; StartIPTProxy and StartKubeProxy set it.
	Binary string
	// Args are extra command-line arguments, after --config and
	// --hostname-override.
	Args []string
	// Configure, if set, adjusts the generated KubeProxyConfiguration
	// before it is written.
	Configure func(*kpv1alpha1.KubeProxyConfiguration)
	// Kubeconfig is the daemon's kubeconfig; empty means a token of the
	// ServiceAccount kube-system/kube-proxy bound to system:node-proxier.
	Kubeconfig string
	// NoConfigFile passes only Args (and --hostname-override), no
	// --config.
	NoConfigFile bool
}

// Daemon is a proxy daemon running on a node. Stop, Kill, Start and Restart
// control it; at the end of the test that started it, it is stopped, and
// if the test failed its logs are written to the test log.
type Daemon struct {
	node       *Node
	name       string
	args       []string
	configPath string

	mu     sync.Mutex
	proc   *netns.Process
	runs   []*netns.Process
	exitOK *netns.Process // the run WaitExit saw exit
}

// StartIPTProxy starts iptproxy (EnvIPTProxyBin, default bin/iptproxy) on the
// node with a generated KubeProxyConfiguration and --hostname-override, plus
// args. It skips the test when the binary does not exist.
func (n *Node) StartIPTProxy(t T, args ...string) *Daemon {
	t.Helper()
	return n.StartDaemon(t, DaemonOptions{Binary: RequireIPTProxy(t), Args: args})
}

// StartKubeProxy starts upstream kube-proxy (built by hack/build-tools.sh)
// the same way. It skips the test when the binary does not exist.
func (n *Node) StartKubeProxy(t T, args ...string) *Daemon {
	t.Helper()
	return n.StartDaemon(t, DaemonOptions{Binary: RequireKubeProxy(t), Args: args})
}

// StartDaemon starts a proxy daemon on the node.
func (n *Node) StartDaemon(t T, opts DaemonOptions) *Daemon {
	t.Helper()
	c := n.cluster
	if opts.Binary == "" {
		t.Fatalf("DaemonOptions.Binary is empty")
	}
	kubeconfig := opts.Kubeconfig
	if kubeconfig == "" {
		sa, err := c.proxyServiceAccount(t.Context())
		if err != nil {
			t.Fatalf("%v", err)
		}
		kubeconfig = sa.Kubeconfig
	}
	d := &Daemon{node: n, name: filepath.Base(opts.Binary)}
	d.args = []string{opts.Binary}
	if !opts.NoConfigFile {
		cfg := n.KubeProxyConfiguration(kubeconfig)
		if opts.Configure != nil {
			opts.Configure(cfg)
		}
		data, err := RenderKubeProxyConfiguration(cfg)
		if err != nil {
			t.Fatalf("%v", err)
		}
		d.configPath = filepath.Join(c.dir, fmt.Sprintf("%s-%s-%d.yaml", d.name, n.name, time.Now().UnixNano()))
		if err := os.WriteFile(d.configPath, data, 0o644); err != nil {
			t.Fatalf("writing %s: %v", d.configPath, err)
		}
		d.args = append(d.args, "--config="+d.configPath)
	}
	d.args = append(d.args, "--hostname-override="+n.name)
	d.args = append(d.args, opts.Args...)
	t.Cleanup(func() { d.cleanup(t) })
	d.Start(t)
	return d
}

// KubeProxyConfiguration returns the configuration the harness gives a
// daemon on this node, kubeadm style: iptables mode, the cluster CIDRs, the
// hostname override and the kubeconfig. Conntrack limits are left alone
// (maxPerCore and min 0), because nf_conntrack_max is global to the machine.
func (n *Node) KubeProxyConfiguration(kubeconfig string) *kpv1alpha1.KubeProxyConfiguration {
	cidrs := make([]string, 0, 2)
	for _, p := range n.cluster.ClusterCIDRs() {
		cidrs = append(cidrs, p.String())
	}
	cfg := &kpv1alpha1.KubeProxyConfiguration{
		BindAddress:      "0.0.0.0",
		ClusterCIDR:      strings.Join(cidrs, ","),
		Mode:             "iptables",
		HostnameOverride: n.name,
	}
	cfg.ClientConnection.Kubeconfig = kubeconfig
	cfg.Conntrack.MaxPerCore = ptr.To[int32](0)
	cfg.Conntrack.Min = ptr.To[int32](0)
	return cfg
}

// RenderKubeProxyConfiguration renders cfg as a KubeProxyConfiguration file
// (kubeproxy.config.k8s.io/v1alpha1) that holds only the fields that differ
// from their zero value, so that the daemon's defaulting fills in the rest as
// it would for a hand-written file.
func RenderKubeProxyConfiguration(cfg *kpv1alpha1.KubeProxyConfiguration) ([]byte, error) {
	set, err := toMap(cfg)
	if err != nil {
		return nil, err
	}
	zero, err := toMap(&kpv1alpha1.KubeProxyConfiguration{})
	if err != nil {
		return nil, err
	}
	out := pruneZero(set, zero)
	if out == nil {
		out = map[string]any{}
	}
	out["apiVersion"] = kpv1alpha1.SchemeGroupVersion.String()
	out["kind"] = "KubeProxyConfiguration"
	b, err := yaml.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("rendering KubeProxyConfiguration: %w", err)
	}
	return b, nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding KubeProxyConfiguration: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decoding KubeProxyConfiguration: %w", err)
	}
	return m, nil
}

// pruneZero returns the entries of set that differ from zero, recursing into
// objects; nil when nothing differs.
func pruneZero(set, zero map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range set {
		z := zero[k]
		if vm, ok := v.(map[string]any); ok {
			zm, _ := z.(map[string]any)
			if sub := pruneZero(vm, zm); sub != nil {
				out[k] = sub
			}
			continue
		}
		if !reflect.DeepEqual(v, z) {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Name returns the binary's base name.
func (d *Daemon) Name() string { return d.name }

// ConfigPath returns the generated configuration file ("" with
// NoConfigFile).
func (d *Daemon) ConfigPath() string { return d.configPath }

// Args returns the full command line.
func (d *Daemon) Args() []string { return append([]string(nil), d.args...) }

// Start starts the daemon (again, after Stop or Kill).
func (d *Daemon) Start(t T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != nil && !d.proc.Exited() {
		t.Fatalf("%s on %s is already running", d.name, d.node.name)
	}
	p, err := d.node.cluster.startProcess(d.node.NS, d.name+"-"+d.node.name, d.args)
	if err != nil {
		t.Fatalf("%v", err)
	}
	d.proc = p
	d.runs = append(d.runs, p)
}

// Stop stops the daemon with SIGTERM (SIGKILL after 10 s) and fails the test
// if it had already exited on its own.
func (d *Daemon) Stop(t T) {
	t.Helper()
	p := d.current()
	if p == nil {
		return
	}
	d.mu.Lock()
	expected := d.exitOK == p
	d.mu.Unlock()
	crashed := p.Exited() && !p.StopRequested() && !expected
	if err := p.Stop(context.Background(), 10*time.Second); err != nil {
		t.Errorf("stopping %s on %s: %v", d.name, d.node.name, err)
	}
	if crashed {
		t.Errorf("%s on %s had exited on its own: %v", d.name, d.node.name, p.Err())
	}
}

// Kill kills the daemon with SIGKILL, as a crash would.
func (d *Daemon) Kill(t T) {
	t.Helper()
	if p := d.current(); p != nil {
		if err := p.Kill(); err != nil {
			t.Errorf("killing %s on %s: %v", d.name, d.node.name, err)
		}
	}
}

// Restart stops the daemon gracefully and starts it again with the same
// command line and configuration file.
func (d *Daemon) Restart(t T) {
	t.Helper()
	d.Stop(t)
	d.Start(t)
}

// WaitExit waits up to timeout for the daemon to exit on its own (for tests
// that expect it to, such as a bad configuration) and returns how it exited;
// such an exit is then not reported as a crash. It fails the test when the
// daemon still runs after timeout.
func (d *Daemon) WaitExit(t T, timeout time.Duration) error {
	t.Helper()
	p := d.current()
	if p == nil {
		t.Fatalf("%s on %s was never started", d.name, d.node.name)
	}
	select {
	case <-p.Done():
	case <-time.After(timeout):
		t.Fatalf("%s on %s still runs after %v", d.name, d.node.name, timeout)
	}
	d.mu.Lock()
	d.exitOK = p
	d.mu.Unlock()
	return p.Err()
}

// Running reports whether the daemon runs.
func (d *Daemon) Running() bool {
	p := d.current()
	return p != nil && !p.Exited()
}

// Process returns the current run's process.
func (d *Daemon) Process() *netns.Process { return d.current() }

// Log returns the current run's output.
func (d *Daemon) Log() string {
	p := d.current()
	if p == nil {
		return ""
	}
	s, _ := p.Log()
	return s
}

func (d *Daemon) current() *netns.Process {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc
}

// Get fetches http://127.0.0.1:<port><path> inside the node's namespace (for
// example port 10256 path /healthz, or port 10249 path /metrics) and returns
// the status code and body.
func (d *Daemon) Get(ctx context.Context, port int, path string) (int, string, error) {
	tr := &http.Transport{DialContext: d.node.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close() //nolint:errcheck // read-only
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// WaitHealthy waits until the daemon's /healthz (port 10256) answers 200,
// failing the test after timeout or when the daemon exits.
func (d *Daemon) WaitHealthy(t T, timeout time.Duration) {
	t.Helper()
	err := waitFor(t.Context(), timeout, d.current(), func(ctx context.Context) error {
		code, body, err := d.Get(ctx, 10256, "/healthz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("healthz: %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s on %s is not healthy: %v", d.name, d.node.name, err)
	}
}

func (d *Daemon) cleanup(t T) {
	t.Helper()
	d.Stop(t)
	if !t.Failed() {
		return
	}
	d.mu.Lock()
	runs := append([]*netns.Process(nil), d.runs...)
	d.mu.Unlock()
	for i, p := range runs {
		logTail(t, fmt.Sprintf("%s on %s (run %d of %d, %v)", d.name, d.node.name, i+1, len(runs), p.Err()), p, 300)
	}
}
