package iptables

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
)

// exitResourceProblem is the exit status iptables uses for "resource
// problem": giving up waiting for the xtables lock, and on iptables-nft also
// a commit the kernel refused.
const exitResourceProblem = 4

// lockMessage is part of what the tools print when they give up waiting for
// the lock: "Another app is currently holding the xtables lock. Stopped
// waiting after 5s."
const lockMessage = "holding the xtables lock"

// RestoreError is returned by Runner.Restore when iptables-restore exits
// non-zero. Use errors.As to get at it:
//
//	var re *iptables.RestoreError
//	if errors.As(err, &re) {
//		logger.Error(err, "Restore failed", "lines", re.FailingLines(payload, 3))
//	}
type RestoreError struct {
	// Command is the restore binary that failed.
	Command string
	// Line is the 1-based payload line the tool blamed, 0 when it named
	// none (a lock timeout, say). The nft backend resolves jumps when the
	// table is committed, so it may blame the table's COMMIT line rather
	// than the rule that jumps to a missing chain.
	Line int
	// Output is what the tool printed (stderr, then any stdout), trimmed.
	Output string
	// ExitCode is the tool's exit status: 1 for a failed commit, 2 for a
	// parse error, 4 for a resource problem (a lock timeout, or on
	// iptables-nft a commit the kernel refused, e.g. deleting a chain
	// that is still referenced).
	ExitCode int
	// Err is the underlying *exec.ExitError.
	Err error
}

func newRestoreError(command string, exitErr *exec.ExitError, output string) *RestoreError {
	return &RestoreError{
		Command:  command,
		Line:     parseRestoreLine(output),
		Output:   output,
		ExitCode: exitErr.ExitCode(),
		Err:      exitErr,
	}
}

// Error implements error with a one-line summary of the tool's output.
func (e *RestoreError) Error() string {
	var b strings.Builder
	b.WriteString(filepath.Base(e.Command))
	b.WriteString(" failed")
	if e.Line > 0 {
		fmt.Fprintf(&b, " at line %d", e.Line)
	}
	fmt.Fprintf(&b, " (exit status %d)", e.ExitCode)
	if s := summarize(e.Output); s != "" {
		b.WriteString(": ")
		b.WriteString(s)
	}
	return b.String()
}

// Unwrap returns the underlying *exec.ExitError.
func (e *RestoreError) Unwrap() error { return e.Err }

// LockTimeout reports whether the tool gave up waiting for the xtables
// lock, so that nothing was attempted; retrying later may succeed.
func (e *RestoreError) LockTimeout() bool {
	return e.ExitCode == exitResourceProblem && strings.Contains(e.Output, lockMessage)
}

// FailingLines returns the lines of payload around the failing one, context
// lines before and after it, numbered and with the failing line marked by
// ">", ready to be logged. A failing line just past the end of payload (a
// missing COMMIT) shows as "<end of input>". It returns "" when the line is
// unknown or further past the end.
func (e *RestoreError) FailingLines(payload []byte, context int) string {
	return extractLines(payload, e.Line, context)
}

// extractLines is kube-proxy's ExtractLines rendered as text.
func extractLines(payload []byte, line, context int) string {
	if line < 1 {
		return ""
	}
	context = max(context, 0)
	first, last := max(line-context, 1), line+context
	width := len(strconv.Itoa(last))

	var b strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(nil, 1<<20)
	found := false
	n := 1
	for ; n <= last && sc.Scan(); n++ {
		if n < first {
			continue
		}
		mark := " "
		if n == line {
			mark = ">"
			found = true
		}
		fmt.Fprintf(&b, "%s %*d: %s\n", mark, width, n, sc.Text())
	}
	if !found && n == line {
		// "COMMIT expected at line N" names the line after the last one.
		fmt.Fprintf(&b, "> %*d: <end of input>\n", width, n)
		found = true
	}
	if !found {
		return ""
	}
	return b.String()
}

// restoreLinePatterns find the failing line in iptables-restore's output,
// most specific first. Seen with iptables 1.8.9:
//
//	iptables-restore: line 4 failed                        (legacy commit)
//	iptables-nft-restore: line 4 failed: No chain/target/match by that name.
//	Error occurred at line: 4                              (parse errors, both)
//	iptables-restore: COMMIT expected at line 4
//	iptables-nft-restore: line 1 table name 'bogus' invalid
//	line 4: CHAIN_DEL failed (Device or resource busy): chain B  (nft, exit 4)
var restoreLinePatterns = [...]*regexp.Regexp{
	regexp.MustCompile(`(?m)\bline (\d+) failed\b`),
	regexp.MustCompile(`(?m)^Error occurred at line: (\d+)`),
	regexp.MustCompile(`(?m)\bat line:? (\d+)\b`),
	regexp.MustCompile(`(?m)\bline:? (\d+)\b`),
}

// parseRestoreLine returns the line iptables-restore blamed, or 0.
func parseRestoreLine(output string) int {
	for _, re := range restoreLinePatterns {
		if m := re.FindStringSubmatch(output); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// summarize joins the tool's meaningful output lines into one line.
func summarize(output string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(output, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "Try `") || strings.HasPrefix(l, "Error occurred at line") {
			continue
		}
		switch {
		case b.Len() == 0:
		case strings.HasSuffix(b.String(), ":"):
			b.WriteString(" ")
		default:
			b.WriteString("; ")
		}
		b.WriteString(l)
	}
	return b.String()
}

// IsLockTimeout reports whether err (from a Runner method, wrapped or not)
// means the tool gave up waiting for the xtables lock: the request was not
// attempted and says nothing about the tables; retry later. Only the legacy
// backend takes the lock. (The exit status alone, 4, is not enough:
// iptables-nft also uses it when the kernel rejects a commit.)
func IsLockTimeout(err error) bool {
	var re *RestoreError
	if errors.As(err, &re) {
		return re.LockTimeout()
	}
	var ie *goipt.Error
	if errors.As(err, &ie) {
		return ie.ExitStatus() == exitResourceProblem && strings.Contains(ie.Error(), lockMessage)
	}
	return false
}
