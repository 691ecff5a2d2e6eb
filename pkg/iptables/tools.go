package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Backend names one of the two kernel APIs iptables 1.8 can drive.
type Backend string

// The iptables backends.
const (
	// BackendNFT is iptables-nft: iptables rules stored as nftables
	// tables (ip filter, ip nat, ...).
	BackendNFT Backend = "nft"
	// BackendLegacy is iptables-legacy: the x_tables kernel API.
	BackendLegacy Backend = "legacy"
)

// ErrUnknownBackend is wrapped by the errors of ParseBackend.
var ErrUnknownBackend = errors.New("unknown iptables backend")

// ParseBackend turns a flag value ("nft" or "legacy") into a Backend.
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(strings.ToLower(strings.TrimSpace(s))); b {
	case BackendNFT, BackendLegacy:
		return b, nil
	default:
		return "", fmt.Errorf("%w %q (want %q or %q)", ErrUnknownBackend, s, BackendNFT, BackendLegacy)
	}
}

// ChooseBackend returns the backend a flag names: "nft" or "legacy", or,
// for "" and "auto", the one DetectBackend picks.
func ChooseBackend(ctx context.Context, name string, opts ...Option) (Backend, error) {
	if n := strings.ToLower(strings.TrimSpace(name)); n == "" || n == "auto" {
		return DetectBackend(ctx, opts...)
	}
	return ParseBackend(name)
}

// ErrToolNotFound is wrapped by errors reporting that an iptables binary
// could not be found.
var ErrToolNotFound = errors.New("iptables tool not found")

// ErrBackendMismatch is wrapped by errors reporting that the only binary
// found (a plain "iptables-restore", say) drives the other backend.
var ErrBackendMismatch = errors.New("iptables tool uses the other backend")

// Tools are the absolute paths of the binaries a Runner executes.
type Tools struct {
	// Iptables is iptables or ip6tables (go-iptables runs it for chain and
	// rule probes).
	Iptables string
	// Save is iptables-save or ip6tables-save.
	Save string
	// Restore is iptables-restore or ip6tables-restore.
	Restore string
	// Fallback lists the tools found only under their plain name (without
	// the -nft/-legacy suffix); their --version output was checked to
	// match the backend.
	Fallback []string
}

func toolPrefix(family v1.IPFamily) (string, error) {
	switch family {
	case v1.IPv4Protocol:
		return "iptables", nil
	case v1.IPv6Protocol:
		return "ip6tables", nil
	default:
		return "", fmt.Errorf("unsupported IP family %q", family)
	}
}

func validBackend(b Backend) error {
	if b != BackendNFT && b != BackendLegacy {
		return fmt.Errorf("unknown iptables backend %q", b)
	}
	return nil
}

// lookTool finds an executable called name in binDir, or in $PATH and the
// sbin directories when binDir is empty.
func lookTool(binDir, name string) (string, error) {
	if binDir != "" {
		return exec.LookPath(filepath.Join(binDir, name))
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	// $PATH often lacks the sbin directories for non-login shells and in
	// minimal images.
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// findTool resolves "<prefix>-<backend><suffix>" and falls back to
// "<prefix><suffix>" after checking with --version that the plain binary
// drives the requested backend. It reports whether the fallback was used.
func findTool(ctx context.Context, binDir, prefix string, backend Backend, suffix string) (string, bool, error) {
	name := prefix + "-" + string(backend) + suffix
	if p, err := lookTool(binDir, name); err == nil {
		return p, false, nil
	}
	plain := prefix + suffix
	p, err := lookTool(binDir, plain)
	if err != nil {
		return "", false, fmt.Errorf("neither %s nor %s found: %w", name, plain, ErrToolNotFound)
	}
	got, err := toolBackend(ctx, p)
	if err != nil {
		return "", false, fmt.Errorf("%s not found and %s: %w", name, p, err)
	}
	if got != backend {
		return "", false, fmt.Errorf("%s not found and %s drives %s, not %s: %w", name, p, got, backend, ErrBackendMismatch)
	}
	return p, true, nil
}

// toolBackend runs "path --version" and reads the backend from it:
// "iptables v1.8.9 (nf_tables)" is nft, "(legacy)" or no mode at all (before
// 1.8) is legacy.
func toolBackend(ctx context.Context, path string) (Backend, error) {
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return versionBackend(string(out)), nil
}

func versionBackend(version string) Backend {
	if strings.Contains(version, "(nf_tables)") {
		return BackendNFT
	}
	return BackendLegacy
}

// findTools resolves the three binaries of one family and backend.
func findTools(ctx context.Context, family v1.IPFamily, backend Backend, binDir string) (Tools, error) {
	var t Tools
	if err := validBackend(backend); err != nil {
		return t, err
	}
	prefix, err := toolPrefix(family)
	if err != nil {
		return t, err
	}
	for _, tool := range []struct {
		suffix string
		dst    *string
	}{{"", &t.Iptables}, {"-save", &t.Save}, {"-restore", &t.Restore}} {
		p, fallback, err := findTool(ctx, binDir, prefix, backend, tool.suffix)
		if err != nil {
			return Tools{}, err
		}
		*tool.dst = p
		if fallback {
			t.Fallback = append(t.Fallback, p)
		}
	}
	return t, nil
}

// ipv6Disabled reports whether the kernel runs without IPv6 (booted with
// ipv6.disable=1 or built without it): then /proc/sys/net/ipv6 is missing.
func ipv6Disabled() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return errors.Is(err, os.ErrNotExist)
}
