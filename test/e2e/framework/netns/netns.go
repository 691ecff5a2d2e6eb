// Package netns manages named Linux network namespaces for the end-to-end
// harness: it creates and deletes them (with "ip netns"), runs commands and
// long-lived processes inside them ("ip netns exec"), and creates sockets
// inside them from the calling process, so the test process itself never
// needs an interface or a route outside the namespaces it created.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vns "github.com/vishvananda/netns"
)

// NetNS is a named network namespace (a bind mount under /run/netns) and an
// open handle to it.
type NetNS struct {
	name string

	mu     sync.Mutex
	handle vns.NsHandle
}

// Create creates the named namespace, brings its loopback up and returns it.
// It fails if the name is taken.
func Create(ctx context.Context, name string) (*NetNS, error) {
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("creating netns %s: %w", name, err)
	}
	n, err := Open(name)
	if err != nil {
		_, _ = run(context.WithoutCancel(ctx), "ip", "netns", "del", name)
		return nil, err
	}
	if err := n.IP(ctx, "link", "set", "lo", "up"); err != nil {
		_ = n.Delete(context.WithoutCancel(ctx))
		return nil, err
	}
	return n, nil
}

// Open opens an existing named namespace.
func Open(name string) (*NetNS, error) {
	h, err := vns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", name, err)
	}
	return &NetNS{name: name, handle: h}, nil
}

// Name returns the namespace's name, as "ip netns" knows it.
func (n *NetNS) Name() string { return n.name }

// String returns the name.
func (n *NetNS) String() string { return n.name }

// Do runs fn on an OS thread that has entered the namespace. Sockets that fn
// creates belong to the namespace for their whole life, so fn should create
// sockets and return quickly; it must not start goroutines that expect to be
// in the namespace.
func (n *NetNS) Do(fn func() error) error {
	n.mu.Lock()
	h := n.handle
	n.mu.Unlock()
	if !h.IsOpen() {
		return fmt.Errorf("netns %s is closed", n.name)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading current netns: %w", err)
			return
		}
		defer orig.Close() //nolint:errcheck // read-only handle
		if err := vns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := vns.Set(orig); err != nil {
			// Leave the thread locked: it exits with this goroutine
			// instead of running other goroutines in the wrong netns.
			errc <- errors.Join(ferr, fmt.Errorf("leaving netns %s: %w", n.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials address (see net.Dialer) from inside the namespace. It
// fits rest.Config.Dial and http.Transport.DialContext.
func (n *NetNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen listens on address (see net.Listen) inside the namespace.
func (n *NetNS) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	return ln, err
}

// SetSysctl writes a sysctl of the namespace, for example
// SetSysctl("net.ipv4.ip_forward", "1"). Only net.* keys are per namespace.
func (n *NetNS) SetSysctl(key, value string) error {
	if !strings.HasPrefix(key, "net.") {
		return fmt.Errorf("sysctl %s is not per network namespace", key)
	}
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in netns %s: %w", key, value, n.name, err)
		}
		return nil
	})
}

// Sysctl reads a sysctl of the namespace.
func (n *NetNS) Sysctl(key string) (string, error) {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	var v []byte
	err := n.Do(func() error {
		var err error
		v, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("reading %s in netns %s: %w", key, n.name, err)
	}
	return strings.TrimSpace(string(v)), nil
}

// IP runs "ip -n <name> args...".
func (n *NetNS) IP(ctx context.Context, args ...string) error {
	_, err := run(ctx, "ip", append([]string{"-n", n.name}, args...)...)
	return err
}

// Command returns a command that runs name with args inside the namespace
// ("ip netns exec").
func (n *NetNS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// Run runs name with args inside the namespace and returns its standard
// output. The error includes the standard error.
func (n *NetNS) Run(ctx context.Context, name string, args ...string) (string, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// PIDs lists the processes inside the namespace.
func (n *NetNS) PIDs(ctx context.Context) ([]int, error) {
	return pidsOf(ctx, n.name)
}

// Delete kills every process inside the namespace, closes the handle and
// removes the name. The kernel frees the namespace (and with it every
// interface, route and rule inside it) once no socket refers to it any more.
// Deleting a namespace that is already gone is not an error.
func (n *NetNS) Delete(ctx context.Context) error {
	n.mu.Lock()
	if n.handle.IsOpen() {
		_ = n.handle.Close()
		n.handle = vns.None()
	}
	n.mu.Unlock()
	return DeleteNamed(ctx, n.name)
}

// DeleteNamed kills every process inside the named namespace and removes the
// name. A name that does not exist is not an error.
func DeleteNamed(ctx context.Context, name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := KillAll(ctx, name); err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("deleting netns %s: %w", name, err)
	}
	return nil
}

// KillAll sends SIGKILL to every process inside the named namespace and
// waits (up to 10 s) until they are gone.
func KillAll(ctx context.Context, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := pidsOf(ctx, name)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in netns %s survive SIGKILL", pids, name)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pidsOf(ctx context.Context, name string) ([]int, error) {
	out, err := run(ctx, "ip", "netns", "pids", name)
	if err != nil {
		return nil, fmt.Errorf("listing processes in netns %s: %w", name, err)
	}
	var pids []int
	for f := range strings.FieldsSeq(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("ip netns pids %s: unexpected %q", name, f)
		}
		// Our own process never runs inside a test namespace; never
		// kill it even if "ip" reports it.
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// List returns the names of all named network namespaces.
func List(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing /run/netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names, nil
}

// run runs a command and returns its standard output; the error carries the
// command line and its standard error.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
