package framework

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
)

// NS is one network namespace of the cluster with its addresses: the control
// plane's host, a node, a pod or an outside client. The embedded NetNS runs
// commands and creates sockets inside it.
type NS struct {
	*netns.NetNS
	name    string
	cluster *Cluster
	v4, v6  netip.Addr
	ips     []netip.Addr // cluster families only, primary first
}

// Name returns the member's name (node-1, a pod's or a client's name); the
// namespace's own name is NetNS.Name().
func (n *NS) Name() string { return n.name }

// IPs returns the member's addresses on its primary interface, in the
// cluster's family order.
func (n *NS) IPs() []netip.Addr { return slices.Clone(n.ips) }

// IP returns the member's address of the family. Every member has both
// families' addresses, even in a single-stack cluster.
func (n *NS) IP(family v1.IPFamily) netip.Addr {
	if family == v1.IPv6Protocol {
		return n.v6
	}
	return n.v4
}

// Exec runs a command inside the namespace and returns its standard output,
// failing the test on error.
func (n *NS) Exec(t T, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(t.Context(), name, args...)
	if err != nil {
		t.Fatalf("in %s: %v", n.Name(), err)
	}
	return out
}

// IPTablesSave returns "iptables-save" (or "ip6tables-save") output for a
// table inside the namespace.
func (n *NS) IPTablesSave(t T, family v1.IPFamily, table string) string {
	t.Helper()
	cmd := "iptables-save"
	if family == v1.IPv6Protocol {
		cmd = "ip6tables-save"
	}
	return n.Exec(t, cmd, "-t", table)
}

// AddRoute adds a route to dst via gw inside the namespace, for example to
// send a client's traffic for a load-balancer IP to a node.
func (n *NS) AddRoute(t T, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	if err := n.NetNS.IP(t.Context(), "route", "add", dst.String(), "via", gw.String()); err != nil {
		t.Fatalf("%v", err)
	}
}

// Request sends one echo request from inside the namespace and returns the
// reply. Failures are classified (errors.Is with echo.ErrRefused,
// echo.ErrTimeout, echo.ErrUnreachable, echo.ErrReset). Without a deadline on
// ctx, a request times out after echo.DefaultTimeout.
func (n *NS) Request(ctx context.Context, proto v1.Protocol, addr netip.AddrPort) (echo.Reply, error) {
	c, err := n.Connect(ctx, proto, addr)
	if err != nil {
		return echo.Reply{}, err
	}
	defer c.Close() //nolint:errcheck // read-only use
	return c.Request(ctx)
}

// MustRequest is Request that fails the test on error.
func (n *NS) MustRequest(t T, proto v1.Protocol, addr netip.AddrPort) echo.Reply {
	t.Helper()
	r, err := n.Request(t.Context(), proto, addr)
	if err != nil {
		t.Fatalf("request from %s: %v", n.Name(), err)
	}
	return r
}

// Connect opens an echo connection from inside the namespace; the caller
// closes it. Requests on it reuse one connection (TCP, SCTP) or one source
// port (UDP).
func (n *NS) Connect(ctx context.Context, proto v1.Protocol, addr netip.AddrPort) (*echo.Conn, error) {
	var c *echo.Conn
	err := n.Do(func() error {
		var err error
		c, err = echo.Dial(ctx, echo.Protocol(proto), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("from %s: %w", n.Name(), err)
	}
	return c, nil
}

// WaitForBackends sends requests from inside the namespace until every
// backend named in want has answered, for at most timeout, and returns how
// often each answered. It fails the test when time runs out or a backend
// not in want answers.
func (n *NS) WaitForBackends(t T, proto v1.Protocol, addr netip.AddrPort, want []string, timeout time.Duration) map[string]int {
	t.Helper()
	seen := map[string]int{}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(t.Context(), min(time.Until(deadline), time.Second))
		r, err := n.Request(ctx, proto, addr)
		cancel()
		if err == nil {
			if !slices.Contains(want, r.Name) {
				t.Fatalf("%s %s from %s: unexpected backend %q answered (want %v)", proto, addr, n.Name(), r.Name, want)
			}
			seen[r.Name]++
		} else {
			lastErr = err
		}
		missing := false
		for _, w := range want {
			missing = missing || seen[w] == 0
		}
		if !missing {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s from %s: after %v saw %v, want all of %v; last error: %v", proto, addr, n.Name(), timeout, seen, want, lastErr)
		}
		if err != nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// EchoOptions configures an echo server.
type EchoOptions struct {
	// Name is what the server answers with; empty means the member's name.
	Name string
	// TCP, UDP and SCTP are the ports to serve.
	TCP, UDP, SCTP []int
}

// EchoOn returns options serving port with TCP, UDP and (where the kernel
// supports it) SCTP.
func EchoOn(port int) EchoOptions {
	o := EchoOptions{TCP: []int{port}, UDP: []int{port}}
	if echo.SCTPSupported() == nil {
		o.SCTP = []int{port}
	}
	return o
}

// Protocols returns TCP, UDP and, where the kernel supports it, SCTP.
func Protocols() []v1.Protocol {
	p := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}
	if echo.SCTPSupported() == nil {
		p = append(p, v1.ProtocolSCTP)
	}
	return p
}

// StartEcho starts an echo server inside the namespace and waits until it
// listens. It is stopped when t's test ends (or with Stop).
func (n *NS) StartEcho(t T, opts EchoOptions) *netns.Process {
	t.Helper()
	bin, err := n.cluster.echoBin()
	if err != nil {
		t.Fatalf("%v", err)
	}
	name := opts.Name
	if name == "" {
		name = n.name
	}
	ready := filepath.Join(n.cluster.dir, fmt.Sprintf("echo-%s-%d.ready", n.name, time.Now().UnixNano()))
	args := []string{bin, "--name=" + name, "--ready-file=" + ready}
	for _, p := range opts.TCP {
		args = append(args, "--tcp="+strconv.Itoa(p))
	}
	for _, p := range opts.UDP {
		args = append(args, "--udp="+strconv.Itoa(p))
	}
	for _, p := range opts.SCTP {
		args = append(args, "--sctp="+strconv.Itoa(p))
	}
	p, err := n.cluster.startProcess(n, "echo-"+n.name, args)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTail(t, "echo server in "+n.name, p, 20)
		}
		_ = p.Stop(context.Background(), 2*time.Second)
	})
	err = waitFor(t.Context(), 15*time.Second, p, func(context.Context) error {
		_, err := os.Stat(ready)
		return err
	})
	if err != nil {
		logTail(t, "echo server in "+n.name, p, 20)
		t.Fatalf("echo server in %s did not start: %v", n.name, err)
	}
	return p
}

// buildEchoServer builds test/e2e/echoserver into the helper directory
// (go's build cache makes repeated builds cheap).
func (c *Cluster) buildEchoServer() (string, error) {
	dir := c.env.HelperDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	out := filepath.Join(dir, "echoserver")
	// Build next to the target and rename: concurrent test binaries may
	// build at the same time.
	tmp, err := os.CreateTemp(dir, ".echoserver-")
	if err != nil {
		return "", fmt.Errorf("creating temporary file: %w", err)
	}
	_ = tmp.Close()
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	cmd := exec.Command("go", "build", "-o", tmp.Name(), "./test/e2e/echoserver")
	cmd.Dir = c.env.Root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building echoserver: %w: %s", err, b)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("installing echoserver: %w", err)
	}
	return out, nil
}
