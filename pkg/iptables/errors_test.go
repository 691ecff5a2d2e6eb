package iptables

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

func TestParseRestoreLine(t *testing.T) {
	tests := []struct {
		name   string
		output string
		want   int
	}{
		{"legacy commit", "iptables-restore: line 4 failed", 4},
		{"legacy ip6 commit", "ip6tables-restore: line 12 failed", 12},
		{"nft commit", "iptables-nft-restore: line 4 failed: No chain/target/match by that name.", 4},
		{"parse error", "iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE':No such file or directory\n\nError occurred at line: 7\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.", 7},
		{"nft parse error", "iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 5\nTry `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.", 5},
		{"commit expected", "iptables-restore: COMMIT expected at line 4", 4},
		{"bad table", "iptables-nft-restore v1.8.9 (nf_tables): iptables-nft-restore: line 1 table name 'bogus' invalid\nError occurred at line: 1", 1},
		{"nft commit refused", "iptables-nft-restore v1.8.9 (nf_tables): \nline 4: CHAIN_DEL failed (Device or resource busy): chain B", 4},
		{"lock timeout", "Can't lock /run/xtables.lock: Resource temporarily unavailable\nAnother app is currently holding the xtables lock. Stopped waiting after 1s.", 0},
		{"empty", "", 0},
		{"line zero", "iptables-restore: line 0 failed", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseRestoreLine(tc.output); got != tc.want {
				t.Errorf("parseRestoreLine(%q) = %d, want %d", tc.output, got, tc.want)
			}
		})
	}
}

func TestExtractLines(t *testing.T) {
	payload := []byte("*nat\n:A - [0:0]\n-A A -j B\n-A A -j C\nCOMMIT\n")
	tests := []struct {
		name    string
		line    int
		context int
		want    string
	}{
		{"middle", 3, 1, "  2: :A - [0:0]\n> 3: -A A -j B\n  4: -A A -j C\n"},
		{"first", 1, 2, "> 1: *nat\n  2: :A - [0:0]\n  3: -A A -j B\n"},
		{"last", 5, 1, "  4: -A A -j C\n> 5: COMMIT\n"},
		{"no context", 2, 0, "> 2: :A - [0:0]\n"},
		{"negative context", 2, -3, "> 2: :A - [0:0]\n"},
		{"unknown line", 0, 3, ""},
		{"missing COMMIT", 6, 1, "  5: COMMIT\n> 6: <end of input>\n"},
		{"past the end", 9, 3, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := extractLines(payload, tc.line, tc.context); got != tc.want {
				t.Errorf("extractLines(line %d, context %d) =\n%q\nwant\n%q", tc.line, tc.context, got, tc.want)
			}
		})
	}

	long := strings.Repeat("x\n", 12)
	if got, want := extractLines([]byte(long), 9, 1), "   8: x\n>  9: x\n  10: x\n"; got != want {
		t.Errorf("number alignment: got %q, want %q", got, want)
	}
}

func TestRestoreErrorIs(t *testing.T) {
	exitErr := exitError(t, 4)
	re := newRestoreError("/usr/sbin/iptables-legacy-restore", exitErr,
		"Another app is currently holding the xtables lock. Stopped waiting after 1s.")
	wrapped := fmt.Errorf("syncing: %w", re)

	var got *RestoreError
	if !errors.As(wrapped, &got) || got != re {
		t.Fatalf("errors.As did not find the *RestoreError in %v", wrapped)
	}
	var ee *exec.ExitError
	if !errors.As(wrapped, &ee) {
		t.Errorf("errors.As did not find the *exec.ExitError")
	}
	if !IsLockTimeout(wrapped) || !re.LockTimeout() {
		t.Errorf("lock timeout not reported as one")
	}
	if IsLockTimeout(errors.New("other")) {
		t.Errorf("plain error reported as a lock timeout")
	}
	busy := newRestoreError("/usr/sbin/iptables-nft-restore", exitErr,
		"iptables-nft-restore v1.8.9 (nf_tables): \nline 4: CHAIN_DEL failed (Device or resource busy): chain B")
	if IsLockTimeout(busy) || busy.Line != 4 {
		t.Errorf("nft commit failure (exit 4): lock timeout %v, line %d", IsLockTimeout(busy), busy.Line)
	}
	if want := "iptables-nft-restore failed at line 4 (exit status 4): iptables-nft-restore v1.8.9 (nf_tables): line 4: CHAIN_DEL failed (Device or resource busy): chain B"; busy.Error() != want {
		t.Errorf("Error() = %q, want %q", busy.Error(), want)
	}
	want := "iptables-legacy-restore failed (exit status 4): Another app is currently holding the xtables lock. Stopped waiting after 1s."
	if re.Error() != want {
		t.Errorf("Error() = %q, want %q", re.Error(), want)
	}

	re2 := newRestoreError("/usr/sbin/iptables-nft-restore", exitError(t, 2),
		"iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 5\nTry `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.")
	want = "iptables-nft-restore failed at line 5 (exit status 2): iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist"
	if re2.Error() != want || re2.Line != 5 || IsLockTimeout(re2) {
		t.Errorf("got %q (line %d), want %q", re2.Error(), re2.Line, want)
	}
}

// exitError returns a real *exec.ExitError with the given status.
func exitError(t *testing.T, code int) *exec.ExitError {
	t.Helper()
	err := exec.Command("sh", "-c", fmt.Sprintf("exit %d", code)).Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("sh exit %d: %v", code, err)
	}
	return ee
}
