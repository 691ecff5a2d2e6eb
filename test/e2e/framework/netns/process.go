package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcessOptions describes a long-lived process to start in a namespace.
type ProcessOptions struct {
	// Args is the command line; Args[0] is the program.
	Args []string
	// LogPath receives standard output and standard error (appended).
	LogPath string
	// Env, if not nil, is the environment; nil inherits ours.
	Env []string
	// Dir is the working directory; empty inherits ours.
	Dir string
}

// Process is a process started inside a namespace with "ip netns exec" (which
// replaces itself with the program, so the PID is the program's). It is
// killed with SIGKILL if the test process dies.
type Process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}

	mu      sync.Mutex
	stopped bool // Stop or Signal(SIGKILL/SIGTERM) was requested
	err     error
}

// Start starts a process inside the namespace.
func (n *NetNS) Start(opts ProcessOptions) (*Process, error) {
	if len(opts.Args) == 0 {
		return nil, errors.New("no command")
	}
	logf, err := os.OpenFile(opts.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log: %w", err)
	}
	defer logf.Close() //nolint:errcheck // the child has its own copy
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, opts.Args...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = opts.Env
	cmd.Dir = opts.Dir
	// Own process group: a Ctrl-C on the terminal reaches only us, and we
	// stop children in order. Pdeathsig: never outlive the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in netns %s: %w", strings.Join(opts.Args, " "), n.name, err)
	}
	p := &Process{cmd: cmd, logPath: opts.LogPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns how the process exited (nil for status 0), or nil while it
// runs.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// StopRequested reports whether Stop or Kill was called, telling an
// expected exit from a crash.
func (p *Process) StopRequested() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}

// LogPath returns the file that holds the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Log returns the process's output so far.
func (p *Process) Log() (string, error) {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "", fmt.Errorf("reading log: %w", err)
	}
	return string(b), nil
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %d: %w", p.PID(), err)
	}
	return nil
}

// Kill kills the process (and its process group) with SIGKILL and waits for
// it to exit.
func (p *Process) Kill() error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	_ = p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("process %d did not exit after SIGKILL", p.PID())
	}
}

// Stop sends SIGTERM, waits up to grace (or until ctx is done) for the
// process to exit, then kills it. It returns an error only if the process
// could not be stopped; see Err for how it exited.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	if p.Exited() {
		return nil
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		// Any other process left in its group goes too.
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	return p.Kill()
}
