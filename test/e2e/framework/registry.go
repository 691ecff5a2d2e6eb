package framework

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
)

// RegistryDir records which process owns each run, so that leftovers of
// dead runs can be told from the namespaces of runs still going. One file
// per run ID holds the owner's PID, its start time and the run's work
// directory.
const RegistryDir = "/run/iptproxy-e2e"

// NetNSPrefix starts the name of every namespace the harness creates.
const NetNSPrefix = "ipt-"

// runNetNS matches a harness namespace name and captures the run ID.
var runNetNS = regexp.MustCompile(`^ipt-([0-9a-f]{6})-`)

// newRunID returns a random run ID.
func newRunID() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating run ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// register records the calling process as the owner of a run.
func register(runID, workDir string) error {
	if err := os.MkdirAll(RegistryDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", RegistryDir, err)
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		return err
	}
	content := fmt.Sprintf("%d %s %s\n", os.Getpid(), start, workDir)
	if err := os.WriteFile(filepath.Join(RegistryDir, runID), []byte(content), 0o644); err != nil {
		return fmt.Errorf("registering run %s: %w", runID, err)
	}
	return nil
}

// unregister removes a run's record.
func unregister(runID string) error {
	if err := os.Remove(filepath.Join(RegistryDir, runID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unregistering run %s: %w", runID, err)
	}
	return nil
}

// processStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/<pid>/stat), which tells a live owner from a reused PID.
func processStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", fmt.Errorf("reading process %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return fields[19], nil
}

// runRecord is a parsed registry file.
type runRecord struct {
	pid     int
	start   string
	workDir string
}

func readRecord(runID string) (runRecord, bool) {
	b, err := os.ReadFile(filepath.Join(RegistryDir, runID))
	if err != nil {
		return runRecord{}, false
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return runRecord{}, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return runRecord{}, false
	}
	return runRecord{pid: pid, start: f[1], workDir: strings.Join(f[2:], " ")}, true
}

// alive reports whether the run's owner still runs.
func (r runRecord) alive() bool {
	if err := syscall.Kill(r.pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	start, err := processStart(r.pid)
	return err == nil && start == r.start
}

// CleanupStale removes what runs whose owner process is gone left behind:
// their namespaces (killing every process inside), registry records and
// work directories. With all set it removes every harness namespace, also
// those of live runs. It returns the namespaces it removed.
func CleanupStale(ctx context.Context, all bool) ([]string, error) {
	names, err := netns.List(ctx)
	if err != nil {
		return nil, err
	}
	stale := map[string]bool{}
	var removed []string
	var errs []error
	for _, name := range names {
		m := runNetNS.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		id := m[1]
		if _, seen := stale[id]; !seen {
			rec, ok := readRecord(id)
			stale[id] = all || !ok || !rec.alive()
		}
		if !stale[id] {
			continue
		}
		if err := netns.DeleteNamed(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	// Records of dead runs without namespaces left, and their directories.
	entries, _ := os.ReadDir(RegistryDir)
	for _, e := range entries {
		id := e.Name()
		rec, ok := readRecord(id)
		if ok && !all && rec.alive() {
			continue
		}
		if ok && strings.Contains(rec.workDir, "iptproxy-e2e-") {
			if err := os.RemoveAll(rec.workDir); err != nil {
				errs = append(errs, err)
			}
		}
		if err := unregister(id); err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}
