package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain runs the real main when the test binary is re-executed as
// iptproxy by runBinary.
func TestMain(m *testing.M) {
	if os.Getenv("IPTPROXY_TEST_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// runBinary runs main with args in a child process and returns its exit
// status, stdout and stderr.
func runBinary(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "IPTPROXY_TEST_RUN_MAIN=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("running %q: %v", args, err)
	return 0, "", ""
}

// TestHelp: --help and -h of the main command and of every subcommand,
// and "help", print on stdout and exit 0, as kube-proxy and kubectl do.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"show", "--help"}, {"trace", "--help"}, {"render", "--help"}, {"diff", "--help"},
		{"trace", "-h"}, {"help", "diff"},
	} {
		code, out, stderr := runBinary(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(out, "Usage: iptproxy") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.200q; want 0, nothing, the usage", args, code, stderr, out)
		}
	}
}

// TestHelpTextIsIptproxys: the main --help does not offer what iptproxy
// does not do.
func TestHelpTextIsIptproxys(t *testing.T) {
	code, out, _ := runBinary(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, bad := range []string{"'ipvs', or 'nftables'", "cleanup iptables and ipvs rules", "kernelspace"} {
		if strings.Contains(out, bad) {
			t.Errorf("--help says %q", bad)
		}
	}
	for _, good := range []string{"iptproxy implements only 'iptables'", "show ", "trace ", "render ", "diff "} {
		if !strings.Contains(out, good) {
			t.Errorf("--help lacks %q", good)
		}
	}
}

// TestUnknownCommand: the proxy takes no arguments, so a first argument is
// a mistyped command: named, with a suggestion, exit 2.
func TestUnknownCommand(t *testing.T) {
	code, out, stderr := runBinary(t, "shwo", "service", "a/b")
	want := "Error: unknown command \"shwo\" for \"iptproxy\"\n\nDid you mean this?\n\tshow\n\nRun 'iptproxy --help' for usage.\n"
	if code != 2 || out != "" || stderr != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 2 and\n%s", code, out, stderr, want)
	}
	if code, _, stderr := runBinary(t, "--v=2", "trace"); code != 2 || !strings.Contains(stderr, `"trace" must come first`) {
		t.Errorf("command after a flag: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runBinary(t, "--bogus"); code != 2 || !strings.Contains(stderr, "unknown flag: --bogus") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, stderr)
	}
}

// TestVersion prints on stdout.
func TestVersion(t *testing.T) {
	code, out, stderr := runBinary(t, "--version")
	if code != 0 || stderr != "" || !strings.HasPrefix(out, "iptproxy ") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}
