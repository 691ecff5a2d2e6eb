package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Runner is the real Interface: it runs the iptables tools of one IP family
// and one backend. It holds no mutable state and is safe for concurrent use.
//
// Every command runs in the network namespace of the calling OS thread (a
// child process inherits its parent thread's namespaces), so code that has
// moved a locked thread into another namespace (see package kerneltest) gets
// its commands run there without any option here.
type Runner struct {
	family  v1.IPFamily
	backend Backend
	tools   Tools
	opts    options
	ipt     *goipt.IPTables
	// journal records this process's nftables commits (nft backend only).
	journal *Journal
}

var _ Interface = (*Runner)(nil)

// New returns a Runner for family that runs the backend's tools
// ("iptables-nft-restore", "ip6tables-legacy-save", ...). When a suffixed tool
// is missing it falls back to the plain name ("iptables-restore") if that
// binary's --version reports the same backend, and logs which binaries it
// uses. It starts no goroutine; it runs "iptables --version" once (through
// go-iptables).
func New(family v1.IPFamily, backend Backend, opts ...Option) (*Runner, error) {
	o := buildOptions(opts)
	ctx := context.Background()
	tools, err := findTools(ctx, family, backend, o.binDir)
	if err != nil {
		return nil, fmt.Errorf("iptables %s backend for %s: %w", backend, family, err)
	}
	proto := goipt.ProtocolIPv4
	if family == v1.IPv6Protocol {
		proto = goipt.ProtocolIPv6
	}
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(tools.Iptables), goipt.Timeout(o.waitSeconds()))
	if err != nil {
		return nil, fmt.Errorf("setting up go-iptables with %s: %w", tools.Iptables, err)
	}
	logger := o.log()
	if len(tools.Fallback) > 0 {
		logger.Info("Using unsuffixed iptables tools that drive the requested backend",
			"family", family, "backend", backend, "tools", tools.Fallback)
	}
	logger.V(2).Info("Using iptables tools", "family", family, "backend", backend,
		"iptables", tools.Iptables, "save", tools.Save, "restore", tools.Restore, "wait", o.wait)
	r := &Runner{family: family, backend: backend, tools: tools, opts: o, ipt: ipt}
	if backend == BackendNFT {
		r.journal = o.journal
	}
	return r, nil
}

// Family implements Interface.
func (r *Runner) Family() v1.IPFamily { return r.family }

// Backend returns the backend this Runner drives.
func (r *Runner) Backend() Backend { return r.backend }

// Tools returns the binaries this Runner executes.
func (r *Runner) Tools() Tools {
	t := r.tools
	t.Fallback = append([]string(nil), r.tools.Fallback...)
	return t
}

// restore runs iptables-restore (see Restore).
func (r *Runner) restore(ctx context.Context, payload []byte) error {
	logger := klog.FromContext(ctx)
	args := append(r.opts.waitArgs(), "--noflush")
	logger.V(4).Info("Running iptables-restore", "command", r.tools.Restore, "args", args, "bytes", len(payload))

	cmd := exec.CommandContext(ctx, r.tools.Restore, args...)
	cmd.Stdin = bytes.NewReader(payload)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err == nil {
		logger.V(4).Info("iptables-restore done", "command", r.tools.Restore, "elapsed", elapsed)
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("running %s: %w (%w)", r.tools.Restore, ctxErr, err)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return fmt.Errorf("running %s: %w", r.tools.Restore, err)
	}
	output := strings.TrimSpace(stderr.String())
	if out := strings.TrimSpace(stdout.String()); out != "" {
		output = strings.TrimSpace(output + "\n" + out)
	}
	return newRestoreError(r.tools.Restore, exitErr, output)
}

// Save implements Interface. It runs iptables-save -t table.
func (r *Runner) Save(ctx context.Context, table Table) ([]byte, error) {
	logger := klog.FromContext(ctx)
	args := []string{"-t", string(table)}
	logger.V(4).Info("Running iptables-save", "command", r.tools.Save, "args", args)
	cmd := exec.CommandContext(ctx, r.tools.Save, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("running %s -t %s: %w: %s", r.tools.Save, table, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ensureChain creates a chain (see EnsureChain).
func (r *Runner) ensureChain(ctx context.Context, table Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	err := r.ipt.NewChain(string(table), chain)
	if err == nil {
		klog.FromContext(ctx).V(4).Info("Created chain", "family", r.family, "table", table, "chain", chain)
		return false, nil
	}
	// Exit status 1 is "Chain already exists" (or another failed
	// operation): confirm rather than trust the status alone.
	var ie *goipt.Error
	if errors.As(err, &ie) && ie.ExitStatus() == 1 {
		if exists, cerr := r.ipt.ChainExists(string(table), chain); cerr == nil && exists {
			return true, nil
		}
	}
	return false, fmt.Errorf("creating chain %s in %s table (%s): %w", chain, table, r.family, err)
}

// ensureRulePrepended checks and inserts a rule (see EnsureRulePrepended).
func (r *Runner) ensureRulePrepended(ctx context.Context, table Table, chain string, args ...string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	exists, err := r.ipt.Exists(string(table), chain, args...)
	if err != nil {
		return false, fmt.Errorf("checking rule in chain %s of %s table (%s): %w", chain, table, r.family, err)
	}
	if exists {
		return true, nil
	}
	if err := r.ipt.Insert(string(table), chain, 1, args...); err != nil {
		return false, fmt.Errorf("inserting rule in chain %s of %s table (%s): %w", chain, table, r.family, err)
	}
	klog.FromContext(ctx).V(4).Info("Inserted rule", "family", r.family, "table", table, "chain", chain, "rule", args)
	return false, nil
}

// deleteRule deletes a rule (see DeleteRule).
func (r *Runner) deleteRule(ctx context.Context, table Table, chain string, args ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	exists, err := r.ipt.Exists(string(table), chain, args...)
	if err != nil {
		// A rule jumping to a missing chain cannot exist either.
		if isNotExist(err) {
			return nil
		}
		return fmt.Errorf("checking rule in chain %s of %s table (%s): %w", chain, table, r.family, err)
	}
	if !exists {
		return nil
	}
	if err := r.ipt.Delete(string(table), chain, args...); err != nil && !isNotExist(err) {
		return fmt.Errorf("deleting rule from chain %s of %s table (%s): %w", chain, table, r.family, err)
	}
	klog.FromContext(ctx).V(4).Info("Deleted rule", "family", r.family, "table", table, "chain", chain, "rule", args)
	return nil
}

// ChainExists implements Interface. A lock timeout is an error (see
// IsLockTimeout), never a missing chain.
func (r *Runner) ChainExists(ctx context.Context, table Table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	exists, err := r.ipt.ChainExists(string(table), chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s in %s table (%s): %w", chain, table, r.family, err)
	}
	return exists, nil
}

// deleteChain deletes a chain (see DeleteChain).
func (r *Runner) deleteChain(ctx context.Context, table Table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.ipt.ClearAndDeleteChain(string(table), chain); err != nil && !isNotExist(err) {
		return fmt.Errorf("deleting chain %s from %s table (%s): %w", chain, table, r.family, err)
	}
	klog.FromContext(ctx).V(4).Info("Deleted chain", "family", r.family, "table", table, "chain", chain)
	return nil
}

// String describes the Runner for logs, e.g. "IPv4/nft (/usr/sbin/iptables-nft-restore)".
func (r *Runner) String() string {
	return fmt.Sprintf("%s/%s (%s)", r.family, r.backend, filepath.Base(r.tools.Restore))
}

func isNotExist(err error) bool {
	var ie *goipt.Error
	return errors.As(err, &ie) && ie.IsNotExist()
}

// Present reports whether family can be programmed with backend on this
// machine: the tools exist, the kernel has the family (IPv6 may be
// disabled at boot) and "iptables -t nat -S POSTROUTING" works. The error
// says what is missing; callers skip the family with one log line.
//
// With the legacy backend the probe makes the kernel instantiate the nat
// table, as kube-proxy's own check does.
func Present(ctx context.Context, family v1.IPFamily, backend Backend, opts ...Option) error {
	if family == v1.IPv6Protocol && ipv6Disabled() {
		return fmt.Errorf("IPv6 is disabled in the kernel (/proc/sys/net/ipv6 is missing)")
	}
	r, err := New(family, backend, append(opts, WithLogger(klog.FromContext(ctx)))...)
	if err != nil {
		return err
	}
	exists, err := r.ChainExists(ctx, TableNAT, ChainPostrouting)
	if err != nil {
		return fmt.Errorf("probing %s nat table with %s: %w", family, r.tools.Iptables, err)
	}
	if !exists {
		return fmt.Errorf("%s reports no POSTROUTING chain in the nat table", r.tools.Iptables)
	}
	return nil
}

// Restore implements Interface. It runs one iptables-restore process with
// "-w <wait> --noflush" and payload on stdin.
//
// Atomicity is per table: the tools commit each table at its COMMIT line, so
// when a later table in the same payload fails, the tables committed before
// it stay applied; the failing table is left as it was. A tool that exits
// non-zero yields a *RestoreError (Line is 0 when the tool named no line);
// failing to run the tool at all yields another error.
func (r *Runner) Restore(ctx context.Context, payload []byte) error {
	return r.journal.Own(func() error { return r.restore(ctx, payload) })
}

// EnsureChain implements Interface.
func (r *Runner) EnsureChain(ctx context.Context, table Table, chain string) (existed bool, err error) {
	err = r.journal.Own(func() error { existed, err = r.ensureChain(ctx, table, chain); return err })
	return existed, err
}

// EnsureRulePrepended implements Interface.
func (r *Runner) EnsureRulePrepended(ctx context.Context, table Table, chain string, args ...string) (existed bool, err error) {
	err = r.journal.Own(func() error { existed, err = r.ensureRulePrepended(ctx, table, chain, args...); return err })
	return existed, err
}

// DeleteRule implements Interface.
func (r *Runner) DeleteRule(ctx context.Context, table Table, chain string, args ...string) error {
	return r.journal.Own(func() error { return r.deleteRule(ctx, table, chain, args...) })
}

// DeleteChain implements Interface. Deleting a chain that other rules
// still jump to fails.
func (r *Runner) DeleteChain(ctx context.Context, table Table, chain string) error {
	return r.journal.Own(func() error { return r.deleteChain(ctx, table, chain) })
}

// Foreign reports, through the Journal given with WithJournal, how many
// times a write by someone else was seen in the nftables ruleset (see
// Journal.Foreign); ok is false on the legacy backend or without a
// Journal, where every check must assume a change.
func (r *Runner) Foreign() (count uint64, ok bool) { return r.journal.Foreign() }
