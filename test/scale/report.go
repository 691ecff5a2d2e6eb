package scale

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Metric keys of the benchmark's rows (Row.Key), which hack/benchchart
// reads.
const (
	KeyCold           = "cold"
	KeyChange         = "change"
	KeyRestart        = "restart"
	KeyRestartBackend = "restart-backend"
	KeyRSS            = "rss"
	KeyHWM            = "hwm"
	KeyColdBytes      = "cold-bytes"
	KeyChangeBytes    = "change-bytes"
	KeyRestartBytes   = "restart-bytes"
	KeyFirstSvcP50    = "first-packet-services-p50"
	KeyFirstSvcP90    = "first-packet-services-p90"
	KeyFirstNoneP50   = "first-packet-non-service-p50"
	KeyFirstNoneP90   = "first-packet-non-service-p90"
	KeyBaseline       = "no-rules-connect-p50"
)

// Report is the benchmark's machine-readable output (bench-<time>.json
// beside the Markdown table), read by hack/benchchart.
type Report struct {
	// Started is when the run began (UTC).
	Started time.Time `json:"started"`
	// Machine, Commit and KubeProxy describe what ran.
	Machine   string `json:"machine"`
	Commit    string `json:"commit"`
	KubeProxy string `json:"kubeProxy"`
	// PhaseTimeoutSeconds bounds every phase.
	PhaseTimeoutSeconds float64 `json:"phaseTimeoutSeconds"`
	// Connects per first-packet group and endpoint changes per run.
	Connects int `json:"connects"`
	Changes  int `json:"changes"`
	// Proxies are the table's columns.
	Proxies []string `json:"proxies"`
	// Rows are the table's rows.
	Rows []ReportRow `json:"rows"`
}

// ReportRow is one Row of the table.
type ReportRow struct {
	Size    string                 `json:"size"`
	Backend string                 `json:"backend"`
	Key     string                 `json:"key"`
	Metric  string                 `json:"metric"`
	Values  map[string]ReportValue `json:"values"`
}

// ReportValue is one Value: Value is set when the figure was measured,
// TimeoutSeconds when its phase ran out of time (a lower bound); Text is
// what the table prints.
type ReportValue struct {
	Unit           string   `json:"unit"`
	Value          *float64 `json:"value,omitempty"`
	TimeoutSeconds float64  `json:"timeoutSeconds,omitempty"`
	Text           string   `json:"text"`
}

// Unit names in the JSON output; values are in seconds, bytes, bytes,
// microseconds, microseconds and events.
var unitNames = map[Unit]string{
	UnitDuration: "seconds",
	UnitBytes:    "bytes",
	UnitMemory:   "memoryBytes",
	UnitOverhead: "overheadMicroseconds",
	UnitMicros:   "microseconds",
	UnitCount:    "count",
}

// reportValue converts a Value.
func reportValue(v Value) ReportValue {
	rv := ReportValue{Unit: unitNames[v.Unit], Text: v.String()}
	if v.Valid {
		x := v.X
		rv.Value = &x
	}
	if v.TimeoutAfter > 0 {
		rv.TimeoutSeconds = v.TimeoutAfter.Seconds()
	}
	return rv
}

// ReportRows converts the table's rows.
func (t Table) ReportRows() []ReportRow {
	out := make([]ReportRow, 0, len(t.Rows))
	for _, r := range t.Rows {
		rr := ReportRow{Size: r.Size, Backend: r.Backend, Key: r.Key, Metric: r.Metric, Values: map[string]ReportValue{}}
		for p, v := range r.Values {
			rr.Values[p] = reportValue(v)
		}
		out = append(out, rr)
	}
	return out
}

// WriteReport writes r as indented JSON.
func WriteReport(path string, r Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// ReadReport reads a report WriteReport wrote.
func ReadReport(path string) (Report, error) {
	var r Report
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}
