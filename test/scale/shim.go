package scale

import (
	_ "embed" // for the restore shim
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// restoreShim stands in for the restore tools and for nft.
//
//go:embed restore-shim.sh
var restoreShim []byte

// EnvRestoreLog is the variable that tells the restore shim where to log.
const EnvRestoreLog = "IPTPROXY_BENCH_RESTORE_LOG"

// EnvKeep is the variable that tells the shims where to keep large payloads.
const EnvKeep = "IPTPROXY_BENCH_KEEP"

// ToolDir is a directory of iptables tools to put first in a daemon's PATH:
// restore shims that count bytes, and plain names bound to one backend.
type ToolDir struct {
	// Dir is the directory.
	Dir string
	// Log is the shims' log (see ParseRestoreLog).
	Log string
	// Backend is the iptables backend the tools drive ("nft", "legacy").
	Backend string
	// Keep, when set, is a directory where the shims keep a copy of every
	// payload of 1 MB or more (BENCH_KEEP_PAYLOADS=1).
	Keep string
}

// InstallTools fills dir for backend ("nft" or "legacy"), whose real tools
// are in realDir (normally /usr/sbin):
//   - iptables-restore, iptables-<backend>-restore and their ip6tables
//     names are the restore shim, with "<name>.real" pointing at
//     <realDir>/<family>-<backend>-restore;
//   - iptables, iptables-save, ip6tables and ip6tables-save point at the
//     backend's tools, so that a daemon that runs the plain names (as
//     kube-proxy does) drives the same backend.
func InstallTools(dir, backend, realDir string) (ToolDir, error) {
	if backend != "nft" && backend != "legacy" {
		return ToolDir{}, fmt.Errorf("unknown iptables backend %q", backend)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ToolDir{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	td := ToolDir{Dir: dir, Log: filepath.Join(dir, "restores.log"), Backend: backend}
	for _, fam := range []string{"iptables", "ip6tables"} {
		realRestore := filepath.Join(realDir, fam+"-"+backend+"-restore")
		if _, err := os.Stat(realRestore); err != nil {
			return ToolDir{}, fmt.Errorf("real restore tool: %w", err)
		}
		for _, name := range []string{fam + "-restore", fam + "-" + backend + "-restore"} {
			shim := filepath.Join(dir, name)
			if err := os.WriteFile(shim, restoreShim, 0o755); err != nil {
				return ToolDir{}, fmt.Errorf("writing %s: %w", shim, err)
			}
			if err := os.Symlink(realRestore, shim+".real"); err != nil {
				return ToolDir{}, fmt.Errorf("linking %s.real: %w", shim, err)
			}
		}
		for _, suffix := range []string{"", "-save"} {
			target := filepath.Join(realDir, fam+"-"+backend+suffix)
			if err := os.Symlink(target, filepath.Join(dir, fam+suffix)); err != nil {
				return ToolDir{}, fmt.Errorf("linking %s: %w", fam+suffix, err)
			}
		}
	}
	if realNFT := filepath.Join(realDir, "nft"); fileExists(realNFT) {
		shim := filepath.Join(dir, "nft")
		if err := os.WriteFile(shim, restoreShim, 0o755); err != nil {
			return ToolDir{}, fmt.Errorf("writing %s: %w", shim, err)
		}
		if err := os.Symlink(realNFT, shim+".real"); err != nil {
			return ToolDir{}, fmt.Errorf("linking %s.real: %w", shim, err)
		}
	}
	return td, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Running reports whether a shim is running its real tool now.
func (td ToolDir) Running() bool {
	m, _ := filepath.Glob(td.Log + ".running.*")
	return len(m) > 0
}

// SaveTool returns the backend's iptables-save for the IPv4 tables.
func (td ToolDir) SaveTool() string { return "iptables-" + td.Backend + "-save" }

// WriteDaemonWrapper writes an executable script at path that runs bin (with
// the wrapper's arguments) with td's directory first in PATH and the shim's
// log variable set. The script replaces itself with bin, so the process ID
// is bin's.
func WriteDaemonWrapper(path, bin string, td ToolDir) error {
	keep := ""
	if td.Keep != "" {
		keep = fmt.Sprintf("export %s=%s\n", EnvKeep, shellQuote(td.Keep))
	}
	script := fmt.Sprintf("#!/bin/sh\n# Written by iptproxy's benchmark (test/scale).\nexport PATH=%s:\"${PATH}\":/usr/sbin:/sbin\nexport %s=%s\n%sexec %s \"$@\"\n",
		shellQuote(td.Dir), EnvRestoreLog, shellQuote(td.Log), keep, shellQuote(bin))
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		return fmt.Errorf("writing daemon wrapper: %w", err)
	}
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
