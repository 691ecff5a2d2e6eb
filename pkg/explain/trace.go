package explain

import (
	"fmt"
	"slices"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// Verdicts of a traced packet, as an operator reads them.
const (
	// VerdictAccepted: the packet is DNATed to a Service endpoint.
	VerdictAccepted = "accepted"
	// VerdictRejected: a rule rejects the packet (a Service without
	// endpoints).
	VerdictRejected = "rejected"
	// VerdictDropped: a rule drops the packet (e.g. a Local policy without
	// local endpoints, a load-balancer source range).
	VerdictDropped = "dropped"
	// VerdictNotService: the packet passes untranslated; no Service rule
	// applies to it.
	VerdictNotService = "not a Service"
	// VerdictMixed: different paths end differently.
	VerdictMixed = "mixed"
)

// TraceReport is where a packet goes through a node's rules.
type TraceReport struct {
	// Packet is the traced packet.
	Packet trace.Packet `json:"packet"`
	// Verdict is one of the Verdict* constants.
	Verdict string `json:"verdict"`
	// Targets are the distinct ends of the paths, most likely first.
	Targets []Target `json:"targets"`
	// Paths are the paths rule by rule, in the tracer's order.
	Paths []Path `json:"paths"`
}

// Target is one place the packet can end up.
type Target struct {
	// Destination is "ip:port" after DNAT, or the DROP/REJECT verdict.
	Destination string `json:"destination"`
	// Probability is the chance of ending here.
	Probability float64 `json:"probability"`
	// Verdict is one of the Verdict* constants (never VerdictMixed).
	Verdict string `json:"verdict"`
	// Masqueraded is the chance that the packet is masqueraded on the way.
	Masqueraded float64 `json:"masqueradedProbability"`
}

// Path is one path through the rules.
type Path struct {
	Probability float64      `json:"probability"`
	Verdict     string       `json:"verdict"`
	Destination string       `json:"destination"`
	Masqueraded bool         `json:"masqueraded"`
	Steps       []trace.Step `json:"steps"`
}

// Trace traces pkt through rs on node and summarises the result.
func Trace(rs *ruleset.Ruleset, node trace.Node, pkt trace.Packet) (*TraceReport, error) {
	return TraceWithOptions(rs, node, pkt, trace.Options{})
}

// TraceWithOptions is Trace with tracer options (e.g. Misses, to list
// every rule that did not match and why).
func TraceWithOptions(rs *ruleset.Ruleset, node trace.Node, pkt trace.Packet, opts trace.Options) (*TraceReport, error) {
	res, err := trace.TraceWithOptions(rs, node, pkt, opts)
	if err != nil {
		return nil, fmt.Errorf("tracing %s: %w", pkt, err)
	}
	return Summarize(res), nil
}

// Summarize turns a trace result into a report.
func Summarize(res *trace.Result) *TraceReport {
	r := &TraceReport{Packet: res.Packet}
	idx := map[string]int{}
	for i := range res.Outcomes {
		o := &res.Outcomes[i]
		v := outcomeVerdict(o)
		dest := o.Destination()
		r.Paths = append(r.Paths, Path{Probability: o.Probability, Verdict: v, Destination: dest, Masqueraded: o.Masqueraded, Steps: o.Steps})
		key := v + "/" + dest
		j, ok := idx[key]
		if !ok {
			j = len(r.Targets)
			idx[key] = j
			r.Targets = append(r.Targets, Target{Destination: dest, Verdict: v})
		}
		r.Targets[j].Probability += o.Probability
		if o.Masqueraded {
			r.Targets[j].Masqueraded += o.Probability
		}
	}
	for i := range r.Targets {
		if t := &r.Targets[i]; t.Probability > 0 {
			t.Masqueraded /= t.Probability
		}
	}
	slices.SortStableFunc(r.Targets, func(a, b Target) int {
		switch {
		case a.Probability > b.Probability+1e-9:
			return -1
		case b.Probability > a.Probability+1e-9:
			return 1
		}
		return strings.Compare(a.Destination, b.Destination)
	})
	for i, t := range r.Targets {
		if i == 0 {
			r.Verdict = t.Verdict
		} else if t.Verdict != r.Verdict {
			r.Verdict = VerdictMixed
		}
	}
	return r
}

// outcomeVerdict classifies one path.
func outcomeVerdict(o *trace.Outcome) string {
	switch o.Verdict {
	case trace.Drop:
		return VerdictDropped
	case trace.Reject:
		return VerdictRejected
	}
	if o.DNAT.IsValid() {
		return VerdictAccepted
	}
	return VerdictNotService
}
