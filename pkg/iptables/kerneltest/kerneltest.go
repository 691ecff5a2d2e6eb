//go:build linux

// Package kerneltest runs kernel tests in private network namespaces.
//
// A child process starts in the network namespace of the OS thread that
// forks it. Enter locks the calling goroutine (the test) to its thread and
// moves that thread, alone, into a new, empty network namespace; every
// command the test then runs (iptables-restore, go-iptables' iptables, ...)
// and every /proc/sys/net access it makes happens there, while the rest of
// the process, and the machine, stay in the root namespace. The thread is
// never unlocked, so the Go runtime destroys it when the test's goroutine
// ends instead of reusing it elsewhere, and the namespace goes away with the
// thread and the last process in it. Nothing is named or mounted, so nothing
// can leak if the test binary dies.
package kerneltest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NetNS is a private network namespace created by Enter.
type NetNS struct {
	fd int
	id string
}

// String returns the namespace's identity, e.g. "net:[4026532177]".
func (ns *NetNS) String() string { return ns.id }

// Enter moves the calling goroutine into a new network namespace, as the
// package documentation describes, and returns it. It must be called from
// the goroutine that runs the test (each t.Run subtest has its own, so call
// it in the subtest). It skips the test when not running as root or when
// namespaces are unavailable, and fails it if a child process would not
// start in the new namespace.
func Enter(t testing.TB) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create a network namespace")
	}
	// Never unlocked: the thread dies with the goroutine.
	runtime.LockOSThread()
	orig, err := threadNetNS()
	if err != nil {
		t.Skipf("kernel test: cannot read this thread's network namespace: %v", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("kernel test: cannot create a network namespace (unshare CLONE_NEWNET): %v", err)
	}
	id, err := threadNetNS()
	if err != nil {
		t.Fatalf("reading the new network namespace: %v", err)
	}
	if id == orig {
		t.Fatalf("unshare left the thread in %s", orig)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening the new network namespace: %v", err)
	}
	ns := &NetNS{fd: fd, id: id}
	t.Cleanup(func() { _ = unix.Close(fd) })
	ns.check(t)
	return ns
}

// Set moves the calling goroutine's thread into ns (for a test that works
// with several namespaces). The goroutine must have called Enter.
func (ns *NetNS) Set(t testing.TB) {
	t.Helper()
	runtime.LockOSThread() // nests with Enter's lock; never unlocked either
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("entering %s: %v", ns, err)
	}
	ns.check(t)
}

// check makes sure a child process starts in ns, the guarantee every
// test relies on not to touch the root namespace.
func (ns *NetNS) check(t testing.TB) {
	t.Helper()
	if got, err := threadNetNS(); err != nil || got != ns.id {
		t.Fatalf("thread is in %q (%v), want %s", got, err, ns)
	}
	readlink, err := LookTool("readlink")
	if err != nil {
		t.Skipf("kernel test: cannot check the namespace: %v", err)
	}
	out, err := exec.Command(readlink, "/proc/self/ns/net").Output()
	if err != nil {
		t.Skipf("kernel test: cannot run readlink to check the namespace: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != ns.id {
		t.Fatalf("a child process starts in %s, not in the test namespace %s", got, ns)
	}
}

func threadNetNS() (string, error) {
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return "", fmt.Errorf("reading /proc/thread-self/ns/net: %w", err)
	}
	return id, nil
}

// RequireTools skips the test unless every named binary is installed (in
// $PATH or an sbin directory). It returns their paths in order.
func RequireTools(t testing.TB, names ...string) []string {
	t.Helper()
	paths := make([]string, 0, len(names))
	for _, name := range names {
		p, err := LookTool(name)
		if err != nil {
			t.Skipf("kernel test: %s is not installed", name)
		}
		paths = append(paths, p)
	}
	return paths
}

// LookTool finds an executable in $PATH or in the usual sbin and bin
// directories.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"} {
		if p, err := exec.LookPath(d + "/" + name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// command resolves name with LookTool (unless it is a path) and builds the
// command.
func command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	if !strings.Contains(name, "/") {
		p, err := LookTool(name)
		if err != nil {
			t.Fatalf("running %s: %v", name, err)
		}
		name = p
	}
	return exec.Command(name, args...)
}

// Run runs a command (looked up with LookTool) in the calling thread's
// namespace, failing the test if it fails, and returns its combined output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := command(t, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RunInput is Run with stdin.
func RunInput(t testing.TB, stdin, name string, args ...string) string {
	t.Helper()
	cmd := command(t, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %s: exit status %d\n%s", name, strings.Join(args, " "), ee.ExitCode(), out)
		}
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}
