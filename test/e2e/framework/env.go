package framework

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
)

// ModulePath is the Go module whose root the harness looks for.
const ModulePath = "github.com/iptproxy/iptproxy"

// Environment variables that configure the harness.
const (
	// EnvRoot overrides the repository root (default: the directory of
	// the nearest go.mod of ModulePath above the working directory).
	EnvRoot = "IPTPROXY_ROOT"
	// EnvToolsDir is where hack/build-tools.sh put etcd, kube-apiserver
	// and kube-proxy (default: _output/bin under the root).
	EnvToolsDir = "IPTPROXY_TOOLS_DIR"
	// EnvIPTProxyBin is the iptproxy binary (default: bin/iptproxy under
	// the root).
	EnvIPTProxyBin = "IPTPROXY_BIN"
	// EnvStrict, when "1" or "true", turns every skip for a missing
	// prerequisite into a failure (for CI, where everything must run).
	EnvStrict = "IPTPROXY_E2E_STRICT"
)

// Env is where the harness finds its binaries.
type Env struct {
	// Root is the repository root.
	Root string
	// ToolsDir holds etcd, kube-apiserver and kube-proxy.
	ToolsDir string
	// IPTProxy is the iptproxy binary (it may not exist).
	IPTProxy string
}

// Etcd returns the path of the etcd binary.
func (e Env) Etcd() string { return filepath.Join(e.ToolsDir, "etcd") }

// KubeAPIServer returns the path of the kube-apiserver binary.
func (e Env) KubeAPIServer() string { return filepath.Join(e.ToolsDir, "kube-apiserver") }

// KubeProxy returns the path of the upstream kube-proxy binary.
func (e Env) KubeProxy() string { return filepath.Join(e.ToolsDir, "kube-proxy") }

// HelperDir is where the harness builds its helper binaries (echoserver).
func (e Env) HelperDir() string { return filepath.Join(e.Root, "_output", "bin", "e2e") }

// LoadEnv reads the environment variables, finding the repository root when
// EnvRoot is not set.
func LoadEnv() (Env, error) {
	root := os.Getenv(EnvRoot)
	if root == "" {
		var err error
		if root, err = findRoot(); err != nil {
			return Env{}, err
		}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return Env{}, fmt.Errorf("resolving root: %w", err)
	}
	e := Env{
		Root:     root,
		ToolsDir: filepath.Join(root, "_output", "bin"),
		IPTProxy: filepath.Join(root, "bin", "iptproxy"),
	}
	if d := os.Getenv(EnvToolsDir); d != "" {
		e.ToolsDir = absUnder(root, d)
	}
	if b := os.Getenv(EnvIPTProxyBin); b != "" {
		e.IPTProxy = absUnder(root, b)
	}
	return e, nil
}

// absUnder resolves a relative path against the repository root.
func absUnder(root, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, p)
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory; set %s", ModulePath, EnvRoot)
		}
		dir = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close() //nolint:errcheck // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == ModulePath
		}
	}
	return false
}

func strict() bool {
	v := os.Getenv(EnvStrict)
	return v == "1" || strings.EqualFold(v, "true")
}

// skip skips the test, or fails it when EnvStrict is set.
func skip(t T, format string, args ...any) {
	t.Helper()
	if strict() {
		t.Fatalf("missing prerequisite (%s is set): "+format, append([]any{EnvStrict}, args...)...)
	}
	t.Skipf(format, args...)
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "needs root to create network namespaces (run with sudo, or make e2e)")
	}
}

// RequireCommands skips the test unless every named command is in PATH.
func RequireCommands(t T, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		skip(t, "commands not found: %s (run hack/install-deps.sh)", strings.Join(missing, ", "))
	}
}

// RequireEnv loads the Env, skipping the test when that fails.
func RequireEnv(t T) Env {
	t.Helper()
	e, err := LoadEnv()
	if err != nil {
		skip(t, "%v", err)
	}
	return e
}

// RequireCluster checks everything NewCluster needs (root, ip, iptables,
// etcd, kube-apiserver), skipping the test with the reason when something
// is missing, and returns the Env.
func RequireCluster(t T) Env {
	t.Helper()
	RequireRoot(t)
	RequireCommands(t, "ip", "iptables", "ip6tables", "iptables-save")
	e := RequireEnv(t)
	for _, bin := range []string{e.Etcd(), e.KubeAPIServer()} {
		if err := executable(bin); err != nil {
			skip(t, "%v (run hack/build-tools.sh, or set %s)", err, EnvToolsDir)
		}
	}
	return e
}

// RequireIPTProxy skips the test unless the iptproxy binary exists, and
// returns its path.
func RequireIPTProxy(t T) string {
	t.Helper()
	e := RequireEnv(t)
	if err := executable(e.IPTProxy); err != nil {
		skip(t, "iptproxy binary not available: %v (build it with \"go build -o bin/iptproxy ./cmd/iptproxy\", or set %s)", err, EnvIPTProxyBin)
	}
	return e.IPTProxy
}

// RequireKubeProxy skips the test unless the upstream kube-proxy binary
// exists, and returns its path.
func RequireKubeProxy(t T) string {
	t.Helper()
	e := RequireEnv(t)
	if err := executable(e.KubeProxy()); err != nil {
		skip(t, "upstream kube-proxy not available: %v (run hack/build-tools.sh)", err)
	}
	return e.KubeProxy()
}

// RequireSCTP skips the test unless the kernel supports SCTP sockets. A
// kernel without SCTP is a property of the machine, not a broken setup, so
// this skips even when EnvStrict is set.
func RequireSCTP(t T) {
	t.Helper()
	if err := echo.SCTPSupported(); err != nil {
		t.Skipf("%v", err)
	}
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: %w", path, errors.New("not an executable file"))
	}
	return nil
}
