package framework

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// T is the part of testing.TB the framework uses. *testing.T and *testing.B
// implement it, and so does Session for programs such as the demo.
type T interface {
	Helper()
	Name() string
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Failed() bool
	Cleanup(func())
	Context() context.Context
}

// Session implements T outside "go test": cleanups run (last registered
// first) when Close is called, and Fatalf and Skipf run them and exit the
// process.
type Session struct {
	name   string
	out    io.Writer
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	closed   bool
}

// NewSession returns a Session that logs to out.
func NewSession(name string, out io.Writer) *Session {
	ctx, cancel := context.WithCancel(context.Background())
	return &Session{name: name, out: out, ctx: ctx, cancel: cancel}
}

// Helper does nothing; it exists to implement T.
func (s *Session) Helper() {}

// Name returns the session's name.
func (s *Session) Name() string { return s.name }

// Logf prints a line.
func (s *Session) Logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.out, format+"\n", args...)
}

// Errorf prints a line and marks the session failed.
func (s *Session) Errorf(format string, args ...any) {
	s.Logf("ERROR: "+format, args...)
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
}

// Fatalf prints a line, runs the cleanups and exits with status 1. Called
// from a cleanup while Close runs, it ends only that cleanup.
func (s *Session) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	s.mu.Lock()
	closing := s.closed
	s.mu.Unlock()
	if closing {
		runtime.Goexit()
	}
	s.Close()
	os.Exit(1)
}

// Skipf prints a line, runs the cleanups and exits with status 1 (a program
// cannot skip).
func (s *Session) Skipf(format string, args ...any) {
	s.Fatalf("cannot run: "+format, args...)
}

// Failed reports whether Errorf or Fatalf was called.
func (s *Session) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Cleanup registers fn to run at Close; after Close it runs fn at once.
func (s *Session) Cleanup(fn func()) {
	s.mu.Lock()
	if !s.closed {
		s.cleanups = append(s.cleanups, fn)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	fn()
}

// Context returns a context that is cancelled when Close starts.
func (s *Session) Context() context.Context { return s.ctx }

// Close cancels the context and runs the cleanups, last registered first.
// It is safe to call more than once and from any goroutine; a Fatalf inside
// a cleanup ends that cleanup (not the program).
func (s *Session) Close() {
	s.cancel()
	for {
		s.mu.Lock()
		s.closed = true
		if len(s.cleanups) == 0 {
			s.mu.Unlock()
			return
		}
		fn := s.cleanups[len(s.cleanups)-1]
		s.cleanups = s.cleanups[:len(s.cleanups)-1]
		s.mu.Unlock()
		s.runCleanup(fn)
	}
}

// runCleanup runs fn in its own goroutine, so that a Fatalf inside it ends
// only that goroutine.
func (s *Session) runCleanup(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				s.Errorf("cleanup panicked: %v", r)
			}
		}()
		fn()
	}()
	<-done
}
