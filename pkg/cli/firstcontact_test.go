package cli_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/cli"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
)

// TestHelpOnStdout: --help, -h and "help COMMAND" print the usage on
// stdout, nothing on stderr, and exit 0, as kubectl's commands do.
func TestHelpOnStdout(t *testing.T) {
	var cases [][]string
	for _, c := range cli.Commands {
		cases = append(cases, []string{c, "--help"}, []string{c, "-h"}, []string{"help", c})
	}
	for _, args := range cases {
		code, out, stderr := run(t, args...)
		if code != 0 || stderr != "" {
			t.Errorf("%q: exit %d, stderr %q; want 0 and nothing", args, code, stderr)
		}
		name := args[0]
		if name == "help" {
			name = args[1]
		}
		if !strings.HasPrefix(out, "Usage: iptproxy "+name) || !strings.Contains(out, "--output") {
			t.Errorf("%q: stdout is not the usage:\n%s", args, out)
		}
	}
	code, out, stderr := run(t, "help")
	if code != 0 || stderr != "" || !strings.Contains(out, "trace") {
		t.Errorf("help: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

// TestUnknownCommand: a mistyped command is named, with cobra's wording and
// suggestions.
func TestUnknownCommand(t *testing.T) {
	for _, tc := range []struct{ arg, suggest string }{
		{"shwo", "show"}, {"rendr", "render"}, {"trac", "trace"}, {"dif", "diff"}, {"nope", ""},
	} {
		code, out, stderr := run(t, tc.arg, "x")
		if code != 2 || out != "" {
			t.Errorf("%s: exit %d, stdout %q", tc.arg, code, out)
		}
		if !strings.HasPrefix(stderr, `Error: unknown command "`+tc.arg+`" for "iptproxy"`) {
			t.Errorf("%s: stderr %q", tc.arg, stderr)
		}
		if got := strings.Contains(stderr, "Did you mean this?\n\t"+tc.suggest+"\n"); got != (tc.suggest != "") {
			t.Errorf("%s: suggestion of %q: %v in %q", tc.arg, tc.suggest, got, stderr)
		}
	}
}

// TestTraceRequiredFlags: a trace without --src, --dst or --dport says
// which are required.
func TestTraceRequiredFlags(t *testing.T) {
	code, _, stderr := run(t, "trace", "-f", fixture, "--node", "node-a", "--dst", "172.30.0.10", "--dport", "80")
	if code != 2 || !strings.Contains(stderr, `required flag(s) "src" not set`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = run(t, "trace", "-f", fixture)
	if code != 2 || !strings.Contains(stderr, `required flag(s) "dport", "dst", "src" not set`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestNodePortNeedsNodeIP: offline, for a node whose addresses nothing
// gives (no Node in -f, no --node-ip), a trace to a NodePort is refused
// with the reason instead of answering "not a Service", show warns that
// the NodePort is left out, and a trace through a rules file warns.
func TestNodePortNeedsNodeIP(t *testing.T) {
	nodePort := []string{"trace", "-f", fixture, "--node", "node-x", "--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "10.0.0.1", "--dport", "30080"}
	code, _, stderr := run(t, nodePort...)
	if code != 2 || !strings.Contains(stderr, "NodePort of shop/web") || !strings.Contains(stderr, "--node-ip") {
		t.Errorf("NodePort trace without node IPs: exit %d, stderr %q", code, stderr)
	}
	code, out, stderr := run(t, append(nodePort, "--node-ip", "10.0.0.1")...)
	if code != 0 || !strings.Contains(out, "accepted") {
		t.Errorf("with --node-ip: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	// The Node in the file is enough.
	if code, _, stderr := run(t, "trace", "-f", fixture, "--node", "node-a", "--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "10.0.0.1", "--dport", "30080"); code != 0 || stderr != "" {
		t.Errorf("with the Node in -f: exit %d, stderr %q", code, stderr)
	}

	code, _, stderr = run(t, "show", "service", "shop/web", "-f", fixture, "--node", "node-x")
	if code != 0 || !strings.Contains(stderr, "warning:") || !strings.Contains(stderr, "NodePort 30080 is not shown") {
		t.Errorf("show without node IPs: exit %d, stderr %q", code, stderr)
	}
	if _, _, stderr := run(t, "show", "service", "shop/web", "-f", fixture, "--node", "node-a"); stderr != "" {
		t.Errorf("show with the Node: stderr %q", stderr)
	}

	code, payload, _ := run(t, "render", "-f", fixture, "--node", "node-a")
	if code != 0 {
		t.Fatal("render failed")
	}
	rules := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(rules, []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = run(t, "trace", "--rules", rules, "--src", "198.18.0.1", "--in-interface", "eth0", "--dst", "10.0.0.1", "--dport", "30080")
	if code != 0 || !strings.Contains(stderr, "warning: no --node-ip") {
		t.Errorf("rules file without --node-ip: exit %d, stderr %q", code, stderr)
	}
}

// TestFileWithoutServicesWarns: -f of a file with no Service warns (the
// answer would otherwise be a bare "not found").
func TestFileWithoutServicesWarns(t *testing.T) {
	f := filepath.Join(t.TempDir(), "cm.yaml")
	if err := os.WriteFile(f, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: other}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "show", "service", "shop/web", "-f", fixture, "-f", f, "--node", "node-a")
	if code != 0 || !strings.Contains(stderr, "warning: "+f+" holds no Services") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if _, _, stderr := run(t, "render", "-f", fixture, "--node", "node-a"); strings.Contains(stderr, "warning") {
		t.Errorf("a file with Services warns: %q", stderr)
	}
}

// TestKubeconfigFromConfigFile: without -f and --kubeconfig, show reads
// the API server named by the kubeconfig of the --config file
// (clientConnection.kubeconfig), the one the daemon uses.
func TestKubeconfigFromConfigFile(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/services":
			_, _ = w.Write([]byte(`{"kind":"ServiceList","apiVersion":"v1","metadata":{},"items":[]}`))
		case "/apis/discovery.k8s.io/v1/endpointslices":
			_, _ = w.Write([]byte(`{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{},"items":[]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+srv.URL+`"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.conf")
	if err := os.WriteFile(config, []byte(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: `+kubeconfig+`
hostnameOverride: node-a
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", filepath.Join(dir, "missing"))
	code, _, stderr := run(t, "show", "service", "shop/web", "--config", config)
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("exit %d, stderr %q; want 1 and not found", code, stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(strings.Join(paths, " "), "/api/v1/services") {
		t.Errorf("the config file's API server saw %q", paths)
	}
}

// TestQuietBackendDetection: a live command does not print the backend
// detection log line unless -v (run in a private network namespace).
func TestQuietBackendDetection(t *testing.T) {
	kerneltest.Enter(t)
	if _, err := exec.LookPath("iptables-nft-save"); err != nil {
		t.Skip("iptables-nft tools not installed")
	}
	var klogOut bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&klogOut)
	defer klog.LogToStderr(true)
	live := func(extra ...string) (int, string) {
		var out, errOut bytes.Buffer
		env := cli.Env{Stdout: &out, Stderr: &errOut, Logger: klog.Logger{},
			Hostname:       func() (string, error) { return "node-a", nil },
			InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil }}
		args := append([]string{"trace", "--src", "10.1.0.1", "--in-interface", "eth0", "--dst", "10.1.0.2", "--dport", "80"}, extra...)
		return cli.Run(context.Background(), env, args), errOut.String()
	}
	code, stderr := live()
	klog.Flush()
	if code != 0 || stderr != "" || klogOut.Len() != 0 {
		t.Errorf("without -v: exit %d, stderr %q, klog %q; want 0 and quiet", code, stderr, klogOut.String())
	}
	code, stderr = live("-v", "1")
	if code != 0 || !strings.Contains(stderr, "Detected iptables backend") {
		t.Errorf("with -v 1: exit %d, stderr %q; want the detection line", code, stderr)
	}
}
