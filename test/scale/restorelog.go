package scale

import (
	"bufio"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Restore is one iptables-restore run as the restore shim logged it.
type Restore struct {
	// Start and End are when the shim started reading the payload and
	// when the real tool exited.
	Start, End time.Time
	// Bytes is the size of the payload on standard input.
	Bytes int64
	// ExitCode is the real tool's exit status.
	ExitCode int
	// Tool is the name the daemon ran ("iptables-restore",
	// "ip6tables-nft-restore", ...).
	Tool string
}

// IPv6 reports whether the restore was for the IPv6 tables.
func (r Restore) IPv6() bool { return strings.HasPrefix(r.Tool, "ip6tables") || r.Tool == "nft-ip6" }

// ParseRestoreLog parses the shim's log: one line per run,
// "<start> <end> <bytes> <exit code> <tool>", times as bash's
// $EPOCHREALTIME (seconds.microseconds). Blank lines are ignored.
func ParseRestoreLog(log string) ([]Restore, error) {
	var out []Restore
	sc := bufio.NewScanner(strings.NewReader(log))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 5 {
			return nil, fmt.Errorf("restore log line %d: want 5 fields, got %d: %q", n, len(f), line)
		}
		start, err := parseEpoch(f[0])
		if err != nil {
			return nil, fmt.Errorf("restore log line %d: start: %w", n, err)
		}
		end, err := parseEpoch(f[1])
		if err != nil {
			return nil, fmt.Errorf("restore log line %d: end: %w", n, err)
		}
		bytes, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || bytes < 0 {
			return nil, fmt.Errorf("restore log line %d: bad byte count %q", n, f[2])
		}
		rc, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("restore log line %d: bad exit code %q", n, f[3])
		}
		out = append(out, Restore{Start: start, End: end, Bytes: bytes, ExitCode: rc, Tool: f[4]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading restore log: %w", err)
	}
	return out, nil
}

// parseEpoch parses "1700000000.123456" (any number of fraction digits up
// to nanoseconds) exactly, without going through a float.
func parseEpoch(s string) (time.Time, error) {
	secs, frac, _ := strings.Cut(s, ".")
	sec, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad time %q", s)
	}
	var nsec int64
	if frac != "" {
		if len(frac) > 9 {
			return time.Time{}, fmt.Errorf("bad time %q: more than nanosecond precision", s)
		}
		if nsec, err = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64); err != nil {
			return time.Time{}, fmt.Errorf("bad time %q", s)
		}
	}
	return time.Unix(sec, nsec), nil
}

// Written sums the payload bytes of the restores of one family that started
// in [from, to] and counts them. Runs without a payload (version probes)
// and failed runs (which change nothing: a transaction is atomic; kube-proxy
// in iptables mode tries to delete nftables leftovers at every start) are
// not counted.
func Written(rs []Restore, ipv6 bool, from, to time.Time) (bytes int64, runs int) {
	for _, r := range rs {
		if r.IPv6() != ipv6 || r.Bytes == 0 || r.ExitCode != 0 || r.Start.Before(from) || r.Start.After(to) {
			continue
		}
		bytes += r.Bytes
		runs++
	}
	return bytes, runs
}

// BurstEnd returns when the burst of IPv4 (or, with ipv6, IPv6) restores
// that starts at or after from ended: restores follow each other with gaps
// of at most gap, and the first gap longer than that ends the burst. It is
// the zero time when no restore started after from.
//
// A daemon that splits a large sync into several transactions writes new
// chains before the rules that jump to them, so checks of the rules can see
// every Service chain complete before the last transaction makes them
// reachable: the end of the burst is when the sync really finished.
func BurstEnd(rs []Restore, ipv6 bool, from time.Time, gap time.Duration) time.Time {
	var in []Restore
	for _, r := range rs {
		if r.IPv6() == ipv6 && r.Bytes > 0 && r.ExitCode == 0 && !r.Start.Before(from) {
			in = append(in, r)
		}
	}
	slices.SortFunc(in, func(a, b Restore) int { return a.Start.Compare(b.Start) })
	var end time.Time
	for _, r := range in {
		if !end.IsZero() && r.Start.Sub(end) > gap {
			break
		}
		if r.End.After(end) {
			end = r.End
		}
	}
	return end
}
