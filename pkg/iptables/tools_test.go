package iptables

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"
)

// fakeTool writes an executable shell script called name into dir. Every
// fake answers --version like iptables 1.8.9 of the given mode.
func fakeTool(t *testing.T, dir, name, mode, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = --version ]; then echo \"" + name + " v1.8.9 (" + mode + ")\"; exit 0; fi\n" +
		body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeBackend installs iptables, -save and -restore stand-ins for one
// family/backend spelling; names are e.g. "iptables-nft" or "iptables".
func fakeBackend(t *testing.T, dir, prefix, mode string) {
	t.Helper()
	for _, suffix := range []string{"", "-save", "-restore"} {
		fakeTool(t, dir, prefix+suffix, mode, "exit 0")
	}
}

func TestFindTools(t *testing.T) {
	tests := []struct {
		name         string
		install      func(t *testing.T, dir string)
		family       v1.IPFamily
		backend      Backend
		wantPrefix   string
		wantFallback bool
		wantErr      error
	}{{
		name:       "suffixed nft",
		install:    func(t *testing.T, dir string) { fakeBackend(t, dir, "iptables-nft", "nf_tables") },
		family:     v1.IPv4Protocol,
		backend:    BackendNFT,
		wantPrefix: "iptables-nft",
	}, {
		name: "suffixed legacy IPv6 preferred over plain",
		install: func(t *testing.T, dir string) {
			fakeBackend(t, dir, "ip6tables-legacy", "legacy")
			fakeBackend(t, dir, "ip6tables", "legacy")
		},
		family:     v1.IPv6Protocol,
		backend:    BackendLegacy,
		wantPrefix: "ip6tables-legacy",
	}, {
		name:         "plain names of the same backend",
		install:      func(t *testing.T, dir string) { fakeBackend(t, dir, "iptables", "nf_tables") },
		family:       v1.IPv4Protocol,
		backend:      BackendNFT,
		wantPrefix:   "iptables",
		wantFallback: true,
	}, {
		name:    "plain names of the other backend",
		install: func(t *testing.T, dir string) { fakeBackend(t, dir, "iptables", "legacy") },
		family:  v1.IPv4Protocol,
		backend: BackendNFT,
		wantErr: ErrBackendMismatch,
	}, {
		name:    "wrong family only",
		install: func(t *testing.T, dir string) { fakeBackend(t, dir, "iptables-nft", "nf_tables") },
		family:  v1.IPv6Protocol,
		backend: BackendNFT,
		wantErr: ErrToolNotFound,
	}, {
		name:    "nothing installed",
		install: func(t *testing.T, dir string) {},
		family:  v1.IPv4Protocol,
		backend: BackendLegacy,
		wantErr: ErrToolNotFound,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.install(t, dir)
			r, err := New(tc.family, tc.backend, WithBinDir(dir), WithLogger(ktesting.NewLogger(t, ktesting.DefaultConfig)))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("New() error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New() error = %v", err)
			}
			tools := r.Tools()
			want := Tools{
				Iptables: filepath.Join(dir, tc.wantPrefix),
				Save:     filepath.Join(dir, tc.wantPrefix+"-save"),
				Restore:  filepath.Join(dir, tc.wantPrefix+"-restore"),
			}
			if tc.wantFallback {
				want.Fallback = []string{want.Iptables, want.Save, want.Restore}
			}
			if tools.Iptables != want.Iptables || tools.Save != want.Save || tools.Restore != want.Restore ||
				!slices.Equal(tools.Fallback, want.Fallback) {
				t.Errorf("Tools() = %+v, want %+v", tools, want)
			}
			if r.Family() != tc.family || r.Backend() != tc.backend {
				t.Errorf("Family/Backend = %s/%s, want %s/%s", r.Family(), r.Backend(), tc.family, tc.backend)
			}
		})
	}
}

func TestParseBackend(t *testing.T) {
	tests := []struct {
		in      string
		want    Backend
		wantErr bool
	}{
		{"nft", BackendNFT, false},
		{" Legacy ", BackendLegacy, false},
		{"auto", "", true},
		{"", "", true},
	}
	for _, tc := range tests {
		got, err := ParseBackend(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseBackend(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestRestoreInvocation(t *testing.T) {
	tests := []struct {
		name     string
		opts     []Option
		exit     string
		stderr   string
		wantArgs string
		wantLine int
		wantErr  bool
	}{
		{name: "default wait", exit: "0", wantArgs: "-w 5 --noflush"},
		{name: "wait rounds up", opts: []Option{WithWait(1500 * time.Millisecond)}, exit: "0", wantArgs: "-w 2 --noflush"},
		{name: "wait forever", opts: []Option{WithWait(0)}, exit: "0", wantArgs: "-w --noflush"},
		{name: "failure", exit: "1", stderr: "iptables-restore: line 2 failed", wantArgs: "-w 5 --noflush", wantLine: 2, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fakeTool(t, dir, "iptables-legacy", "legacy", "exit 0")
			fakeTool(t, dir, "iptables-legacy-save", "legacy", "exit 0")
			fakeTool(t, dir, "iptables-legacy-restore", "legacy",
				`echo "$@" > "`+dir+`/args"; cat > "`+dir+`/stdin"; echo "`+tc.stderr+`" >&2; exit `+tc.exit)
			r, err := New(v1.IPv4Protocol, BackendLegacy, append(tc.opts, WithBinDir(dir))...)
			if err != nil {
				t.Fatal(err)
			}
			payload := "*filter\n:FOO - [0:0]\nCOMMIT\n"
			_, ctx := ktesting.NewTestContext(t)
			err = r.Restore(ctx, []byte(payload))
			args, _ := os.ReadFile(filepath.Join(dir, "args"))
			stdin, _ := os.ReadFile(filepath.Join(dir, "stdin"))
			if got := strings.TrimSpace(string(args)); got != tc.wantArgs {
				t.Errorf("args = %q, want %q", got, tc.wantArgs)
			}
			if string(stdin) != payload {
				t.Errorf("stdin = %q, want the payload", stdin)
			}
			var re *RestoreError
			switch {
			case !tc.wantErr && err != nil:
				t.Errorf("Restore() = %v", err)
			case tc.wantErr && !errors.As(err, &re):
				t.Errorf("Restore() = %v, want a *RestoreError", err)
			case tc.wantErr && (re.Line != tc.wantLine || re.Output != tc.stderr):
				t.Errorf("RestoreError = %+v, want line %d, output %q", re, tc.wantLine, tc.stderr)
			case tc.wantErr && re.FailingLines([]byte(payload), 0) != "> 2: :FOO - [0:0]\n":
				t.Errorf("FailingLines = %q", re.FailingLines([]byte(payload), 0))
			}
		})
	}
}

func TestRestoreContextCanceled(t *testing.T) {
	dir := t.TempDir()
	fakeBackend(t, dir, "iptables-nft", "nf_tables")
	r, err := New(v1.IPv4Protocol, BackendNFT, WithBinDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = r.Restore(ctx, []byte("COMMIT\n"))
	var re *RestoreError
	if !errors.Is(err, context.Canceled) || errors.As(err, &re) {
		t.Errorf("Restore() with a canceled context = %v, want context.Canceled and no *RestoreError", err)
	}
}
