package trace

import (
	"fmt"
	"sort"
	"strings"
)

// Destination names where the outcome's packet ended up: the destination
// address and port for an accepted packet (after DNAT), else the verdict
// ("DROP", "REJECT").
func (o *Outcome) Destination() string {
	if o.Verdict != Accept {
		return string(o.Verdict)
	}
	return o.Dst.String()
}

// Destinations sums the probabilities of the outcomes by Destination,
// e.g. {"10.0.1.1:80": 0.5, "10.0.1.2:80": 0.5} or {"REJECT": 1}.
func (r *Result) Destinations() map[string]float64 {
	m := map[string]float64{}
	for i := range r.Outcomes {
		m[r.Outcomes[i].Destination()] += r.Outcomes[i].Probability
	}
	return m
}

// Verdicts sums the probabilities of the outcomes by verdict.
func (r *Result) Verdicts() map[Verdict]float64 {
	m := map[Verdict]float64{}
	for _, o := range r.Outcomes {
		m[o.Verdict] += o.Probability
	}
	return m
}

// Probability sums the probabilities of the outcomes for which pred holds.
func (r *Result) Probability(pred func(*Outcome) bool) float64 {
	p := 0.0
	for i := range r.Outcomes {
		if pred(&r.Outcomes[i]) {
			p += r.Outcomes[i].Probability
		}
	}
	return p
}

// All reports whether pred holds for every outcome.
func (r *Result) All(pred func(*Outcome) bool) bool {
	for i := range r.Outcomes {
		if !pred(&r.Outcomes[i]) {
			return false
		}
	}
	return len(r.Outcomes) > 0
}

// AllAccepted reports whether every path delivers the packet.
func (r *Result) AllAccepted() bool {
	return r.All(func(o *Outcome) bool { return o.Verdict == Accept })
}

// AllDropped reports whether every path drops the packet.
func (r *Result) AllDropped() bool {
	return r.All(func(o *Outcome) bool { return o.Verdict == Drop })
}

// AllRejected reports whether every path rejects the packet.
func (r *Result) AllRejected() bool {
	return r.All(func(o *Outcome) bool { return o.Verdict == Reject })
}

// AllMasqueraded reports whether every path masquerades the packet.
func (r *Result) AllMasqueraded() bool {
	return r.All(func(o *Outcome) bool { return o.Masqueraded })
}

// NoneMasqueraded reports whether no path masquerades the packet.
func (r *Result) NoneMasqueraded() bool {
	return r.All(func(o *Outcome) bool { return !o.Masqueraded })
}

// MasqueradedProbability is the probability that the packet is
// masqueraded.
func (r *Result) MasqueradedProbability() float64 {
	return r.Probability(func(o *Outcome) bool { return o.Masqueraded })
}

// Summary renders the outcomes in one line, most likely first:
// "10.0.1.1:80 0.5 (masq), 10.0.1.2:80 0.5 (masq)".
func (r *Result) Summary() string {
	type entry struct {
		dest string
		p    float64
		masq bool
	}
	var es []entry
	idx := map[string]int{}
	for _, o := range r.Outcomes {
		k := fmt.Sprintf("%s/%t", o.Destination(), o.Masqueraded)
		i, ok := idx[k]
		if !ok {
			i = len(es)
			idx[k] = i
			es = append(es, entry{dest: o.Destination(), masq: o.Masqueraded})
		}
		es[i].p += o.Probability
	}
	sort.SliceStable(es, func(i, j int) bool { return es[i].p > es[j].p+1e-9 })
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = fmt.Sprintf("%s %.4g", e.dest, e.p)
		if e.masq {
			parts[i] += " (masq)"
		}
	}
	return strings.Join(parts, ", ")
}

// String renders the result for people: each outcome with its path.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "packet %s\n", r.Packet)
	for i := range r.Outcomes {
		fmt.Fprintf(&b, "outcome %d: %s", i+1, r.Outcomes[i].String())
	}
	return b.String()
}

// String renders the outcome: a headline and one line per step.
func (o *Outcome) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "p=%.4g %s", o.Probability, o.Verdict)
	if o.Delivery != DeliveryNone {
		fmt.Fprintf(&b, " %s to %s", o.Delivery, o.Dst)
	}
	if o.DNAT.IsValid() {
		b.WriteString(" (DNAT)")
	}
	if o.SNAT.IsValid() {
		fmt.Fprintf(&b, ", SNAT to %s", o.SNAT)
	}
	if o.Masqueraded {
		b.WriteString(", masqueraded")
	}
	if o.Mark != 0 {
		fmt.Fprintf(&b, ", mark %#x", o.Mark)
	}
	b.WriteByte('\n')
	for _, s := range o.Steps {
		b.WriteString("  ")
		b.WriteString(strings.Repeat("  ", s.Depth))
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// String renders the step on one line.
func (s Step) String() string {
	var b strings.Builder
	if s.Table != "" {
		fmt.Fprintf(&b, "%s/%s", s.Table, s.Chain)
		if s.Rule > 0 {
			fmt.Fprintf(&b, " #%d", s.Rule)
		}
		b.WriteString(": ")
	}
	b.WriteString(string(s.Action))
	if s.Detail != "" {
		b.WriteString(" ")
		b.WriteString(s.Detail)
	}
	if s.Branch > 0 {
		fmt.Fprintf(&b, " (p=%.4g)", s.Branch)
	}
	if s.Text != "" {
		fmt.Fprintf(&b, "    [%s]", s.Text)
	}
	return b.String()
}
