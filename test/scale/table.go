package scale

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Unit says what a Value measures and how it is printed.
type Unit int

// The units of the benchmark's figures.
const (
	// UnitDuration is a latency; X is in seconds.
	UnitDuration Unit = iota
	// UnitBytes is an amount written; X is in bytes (printed in kB/MB).
	UnitBytes
	// UnitMemory is resident memory; X is in bytes (printed in MiB).
	UnitMemory
	// UnitOverhead is a connect-time difference; X is in microseconds and
	// printed with its sign.
	UnitOverhead
	// UnitMicros is a short latency; X is in microseconds.
	UnitMicros
	// UnitCount is a number of events.
	UnitCount
)

// Value is one measured figure, or the reason there is none.
type Value struct {
	// Unit is what X measures.
	Unit Unit
	// X is the figure, in the Unit's base unit.
	X float64
	// Valid is true when X was measured.
	Valid bool
	// TimeoutAfter, when not zero, means the phase ran out of time after
	// this long (X is not valid).
	TimeoutAfter time.Duration
	// Note explains a missing figure ("not run", "error: ...").
	Note string
}

// Duration returns a measured latency.
func Duration(d time.Duration) Value {
	return Value{Unit: UnitDuration, X: d.Seconds(), Valid: true}
}

// TimedOut returns the Value of a phase that did not finish within limit.
func TimedOut(limit time.Duration) Value {
	return Value{Unit: UnitDuration, TimeoutAfter: limit}
}

// Bytes returns an amount of bytes written.
func Bytes(n int64) Value { return Value{Unit: UnitBytes, X: float64(n), Valid: true} }

// Memory returns a resident memory size in bytes.
func Memory(n int64) Value { return Value{Unit: UnitMemory, X: float64(n), Valid: true} }

// Overhead returns a connect-time difference.
func Overhead(d time.Duration) Value {
	return Value{Unit: UnitOverhead, X: float64(d) / float64(time.Microsecond), Valid: true}
}

// Micros returns a short latency printed in microseconds.
func Micros(d time.Duration) Value {
	return Value{Unit: UnitMicros, X: float64(d) / float64(time.Microsecond), Valid: true}
}

// Count returns a number of events.
func Count(n int) Value { return Value{Unit: UnitCount, X: float64(n), Valid: true} }

// Missing returns a Value that was not measured, with the reason.
func Missing(unit Unit, reason string) Value { return Value{Unit: unit, Note: reason} }

// String formats the value for the table.
func (v Value) String() string {
	switch {
	case v.TimeoutAfter > 0:
		return ">" + shortDuration(v.TimeoutAfter) + " (timeout)"
	case !v.Valid && v.Note != "":
		return v.Note
	case !v.Valid:
		return "n/a"
	}
	switch v.Unit {
	case UnitDuration:
		return formatSeconds(v.X)
	case UnitBytes:
		return formatBytes(v.X)
	case UnitMemory:
		return fmt.Sprintf("%.0f MiB", v.X/(1<<20))
	case UnitOverhead:
		return fmt.Sprintf("%+.0f µs", v.X)
	case UnitMicros:
		return fmt.Sprintf("%.0f µs", v.X)
	case UnitCount:
		return fmt.Sprintf("%.0f", v.X)
	}
	return fmt.Sprintf("%g", v.X)
}

// shortDuration prints whole minutes as "15m" and everything else as
// time.Duration does.
func shortDuration(d time.Duration) string {
	if d >= time.Minute && d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func formatSeconds(s float64) string {
	switch {
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 100:
		return fmt.Sprintf("%.2f s", s)
	default:
		return fmt.Sprintf("%.0f s", s)
	}
}

func formatBytes(b float64) string {
	switch {
	case b < 1000:
		return fmt.Sprintf("%.0f B", b)
	case b < 1e6:
		return fmt.Sprintf("%.1f kB", b/1e3)
	default:
		return fmt.Sprintf("%.1f MB", b/1e6)
	}
}

// Ratio returns how many times kube-proxy's figure is iptproxy's
// ("12.3x"), a lower bound (">40x") when kube-proxy ran out of time, and
// "—" when there is no meaningful ratio (a missing figure, or a figure that
// is not positive, such as a negative connect overhead). The churn table
// uses it.
func Ratio(kubeProxy, iptproxy Value) string {
	const none = "—"
	if !iptproxy.Valid || iptproxy.X <= 0 {
		return none
	}
	switch {
	case kubeProxy.Valid && kubeProxy.X > 0:
		return fmt.Sprintf("%.1fx", kubeProxy.X/iptproxy.X)
	case kubeProxy.TimeoutAfter > 0 && iptproxy.Unit == UnitDuration:
		return fmt.Sprintf(">%.0fx", math.Floor(kubeProxy.TimeoutAfter.Seconds()/iptproxy.X))
	}
	return none
}

// RatioToBest returns iptproxy's figure divided by the best (lowest) of the
// upstream figures, as the tables print it ("0.36": lower is better
// for iptproxy, below 1 means iptproxy is ahead of every upstream mode):
//   - an upstream figure that timed out is a lower bound: when no upstream
//     figure was measured, the ratio is an upper bound ("<0.05") against the
//     longest timeout;
//   - when iptproxy timed out, the ratio is a lower bound (">2.5");
//   - "—" when there is nothing to compare (missing or non-positive
//     figures, such as a negative connect overhead).
func RatioToBest(iptproxy Value, upstream ...Value) string {
	const none = "—"
	best, haveBest := 0.0, false
	var longest time.Duration
	for _, u := range upstream {
		switch {
		case u.Valid && u.X > 0:
			if !haveBest || u.X < best {
				best, haveBest = u.X, true
			}
		case u.TimeoutAfter > longest:
			longest = u.TimeoutAfter
		}
	}
	switch {
	case iptproxy.Valid && iptproxy.X > 0 && haveBest:
		return formatRatio(iptproxy.X / best)
	case iptproxy.Valid && iptproxy.X > 0 && longest > 0 && iptproxy.Unit == UnitDuration:
		return "<" + formatRatio(iptproxy.X/longest.Seconds())
	case iptproxy.TimeoutAfter > 0 && haveBest:
		return ">" + formatRatio(iptproxy.TimeoutAfter.Seconds()/best)
	}
	return none
}

// formatRatio prints two decimals, or two significant digits below 0.1.
func formatRatio(r float64) string {
	if r >= 0.1 {
		return fmt.Sprintf("%.2f", r)
	}
	return strconv.FormatFloat(r, 'g', 2, 64)
}

// Proxy names, as BENCH_PROXIES lists them and the tables' columns show them.
const (
	// ProxyIPTProxy is iptproxy with its default flags.
	ProxyIPTProxy = "iptproxy"
	// ProxyIPTProxyBackend is iptproxy with --iptables-backend given
	// (measured for the restart only).
	ProxyIPTProxyBackend = "iptproxy-backend"
	// ProxyKubeProxy is upstream kube-proxy in iptables mode.
	ProxyKubeProxy = "kube-proxy"
	// ProxyKubeProxyNFT is upstream kube-proxy in nftables mode.
	ProxyKubeProxyNFT = "kube-proxy-nft"
)

// Upstream reports whether proxy is one of upstream kube-proxy's modes.
func Upstream(proxy string) bool { return proxy == ProxyKubeProxy || proxy == ProxyKubeProxyNFT }

// columnTitle is a proxy's column header.
func columnTitle(proxy string) string {
	switch proxy {
	case ProxyKubeProxy:
		return "kube-proxy iptables"
	case ProxyKubeProxyNFT:
		return "kube-proxy nftables"
	}
	return proxy
}

// Row is one metric of one size and backend, for every proxy.
type Row struct {
	// Size is the cluster size ("1000x10").
	Size string
	// Backend is the iptables backend ("nft", "legacy").
	Backend string
	// Key names the metric for machines (the JSON output and the chart):
	// "cold", "change", "restart", "rss", ...
	Key string
	// Metric names what was measured, for people.
	Metric string
	// Values are the figures by proxy name; a proxy without one shows as
	// "not run".
	Values map[string]Value
}

// Table is the benchmark's result.
type Table struct {
	// Proxies are the columns, in order; iptproxy first.
	Proxies []string
	Rows    []Row
}

// Markdown renders the table with a header row and, when it has iptproxy
// and at least one upstream mode, a last column with iptproxy's figure
// divided by the best upstream one (see RatioToBest; lower is better for
// iptproxy).
func (t Table) Markdown() string {
	var b strings.Builder
	var ups []string
	hasIPT := false
	for _, p := range t.Proxies {
		if Upstream(p) {
			ups = append(ups, p)
		}
		hasIPT = hasIPT || p == ProxyIPTProxy
	}
	ratio := hasIPT && len(ups) > 0
	b.WriteString("| Size | Backend | Metric |")
	for _, p := range t.Proxies {
		fmt.Fprintf(&b, " %s |", columnTitle(p))
	}
	if ratio {
		b.WriteString(" iptproxy ÷ best upstream |")
	}
	b.WriteString("\n|---|---|---|")
	for range t.Proxies {
		b.WriteString("--:|")
	}
	if ratio {
		b.WriteString("--:|")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s |", escapeCell(r.Size), escapeCell(r.Backend), escapeCell(r.Metric))
		for _, p := range t.Proxies {
			v, ok := r.Values[p]
			if !ok {
				v = Missing(UnitDuration, "—")
			}
			fmt.Fprintf(&b, " %s |", escapeCell(v.String()))
		}
		if ratio {
			var uv []Value
			for _, p := range ups {
				uv = append(uv, r.Values[p])
			}
			fmt.Fprintf(&b, " %s |", RatioToBest(r.Values[ProxyIPTProxy], uv...))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// escapeCell keeps a value inside its Markdown table cell.
func escapeCell(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
