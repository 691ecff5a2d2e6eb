package explain

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes v as indented JSON, for -o json.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encoding JSON: %w", err)
	}
	return nil
}

// WriteService writes a ServiceReport for people.
func WriteService(w io.Writer, r *ServiceReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Service %s on node %s\n", r.Service, r.Node)
	for i := range r.Ports {
		p := &r.Ports[i]
		name := p.Name
		if name == "" {
			name = "(unnamed)"
		}
		fmt.Fprintf(tw, "\nPort %s %d/%s (%s)\n", name, p.Port, p.Protocol, p.Family)
		fmt.Fprintf(tw, "  ClusterIP:\t%s\n", p.ClusterIP)
		if p.NodePort != 0 {
			fmt.Fprintf(tw, "  NodePort:\t%d\n", p.NodePort)
		}
		if len(p.LoadBalancerIPs) > 0 {
			fmt.Fprintf(tw, "  LoadBalancer IPs:\t%s\n", addrs(p.LoadBalancerIPs))
		}
		if len(p.SourceRanges) > 0 {
			fmt.Fprintf(tw, "  Source ranges:\t%s\n", strings.Join(p.SourceRanges, ", "))
		}
		if len(p.ExternalIPs) > 0 {
			fmt.Fprintf(tw, "  External IPs:\t%s\n", addrs(p.ExternalIPs))
		}
		policy := "internal " + p.InternalPolicy
		if p.ExternalPolicy != "" {
			policy += ", external " + p.ExternalPolicy
		}
		fmt.Fprintf(tw, "  Traffic policy:\t%s\n", policy)
		affinity := p.Affinity
		if p.AffinitySeconds > 0 {
			affinity += fmt.Sprintf(" (timeout %ds)", p.AffinitySeconds)
		}
		if p.Affinity == "ClientIP" {
			affinity += "; the chances below are for a client's first connection, later ones stick to its endpoint"
		}
		fmt.Fprintf(tw, "  Session affinity:\t%s\n", affinity)
		if p.TopologyMode != "" {
			fmt.Fprintf(tw, "  Topology:\t%s\n", p.TopologyMode)
		}
		fmt.Fprintf(tw, "  Chains:\t%s\n", strings.Join(p.Chains, " "))
		fmt.Fprintf(tw, "  Entries:\n")
		for _, e := range p.Entries {
			fmt.Fprintf(tw, "    %s\t%s\tfrom %s\t%s\n", e.Kind, e.Address, packetSource(e), entryVerdict(e))
		}
		if len(p.Endpoints) > 0 {
			fmt.Fprintf(tw, "  Endpoints (chance of being picked, per entry):\n")
			hdr := "    ENDPOINT\tNODE"
			for _, e := range p.Entries {
				hdr += "\t" + e.Kind
			}
			fmt.Fprintln(tw, hdr)
			for _, ep := range p.Endpoints {
				node := ep.Node
				if ep.Local {
					node += " (this node)"
				}
				line := "    " + ep.Address + "\t" + orDash(node)
				for _, pr := range ep.Probability {
					line += "\t" + percent(pr)
				}
				fmt.Fprintln(tw, line)
			}
		} else {
			fmt.Fprintf(tw, "  Endpoints:\tnone in use\n")
		}
		if len(p.LeftOut) > 0 {
			fmt.Fprintf(tw, "  Left out:\n")
			for _, l := range p.LeftOut {
				fmt.Fprintf(tw, "    %s\t%s\t%s traffic\t%s\n", l.Address, orDash(l.Node), l.Scope, l.Reason)
			}
		}
	}
	return tw.Flush()
}

func packetSource(e Entry) string {
	if e.Packet.Local {
		return e.Packet.Src.String() + " (this node)"
	}
	return e.Packet.Src.String() + " via " + e.Packet.InInterface
}

func entryVerdict(e Entry) string {
	switch e.Verdict {
	case VerdictAccepted:
		n := 0
		masq := 0.0
		for _, t := range e.Targets {
			n++
			masq += t.Probability * t.Masqueraded
		}
		s := fmt.Sprintf("DNAT to %d endpoint(s)", n)
		switch {
		case masq > 0.9999:
			s += ", masqueraded"
		case masq > 0:
			s += fmt.Sprintf(", masqueraded %s", percent(masq))
		}
		return s
	case VerdictRejected:
		return "rejected (no usable endpoints)"
	case VerdictDropped:
		return "dropped"
	}
	return e.Verdict
}

// WriteTrace writes a TraceReport for people: the verdict, the targets
// with their probabilities, then each path rule by rule.
func WriteTrace(w io.Writer, r *TraceReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Packet:\t%s\n", r.Packet)
	fmt.Fprintf(tw, "Verdict:\t%s\n", r.Verdict)
	fmt.Fprintf(tw, "\n  TARGET\tPROBABILITY\tVERDICT\tMASQUERADED\n")
	for _, t := range r.Targets {
		masq := "no"
		switch {
		case t.Masqueraded > 0.9999:
			masq = "yes"
		case t.Masqueraded > 0:
			masq = percent(t.Masqueraded)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Destination, percent(t.Probability), t.Verdict, masq)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, p := range r.Paths {
		fmt.Fprintf(w, "\nPath %d (p=%s): %s, %s", i+1, percent(p.Probability), p.Verdict, p.Destination)
		if p.Masqueraded {
			fmt.Fprint(w, ", masqueraded")
		}
		fmt.Fprintln(w)
		for _, s := range p.Steps {
			fmt.Fprintf(w, "  %s%s\n", strings.Repeat("  ", s.Depth), s.String())
		}
	}
	return nil
}

// WriteDiff writes a DiffReport for people.
func WriteDiff(w io.Writer, d *DiffReport) error {
	if d.Empty() {
		_, err := fmt.Fprintln(w, "No changes: the kernel holds what the daemon would write.")
		return err
	}
	for _, j := range d.MissingJumps {
		fmt.Fprintf(w, "missing jump in %s\n", j)
	}
	for _, t := range d.Tables {
		fmt.Fprintf(w, "table %s:\n", t.Table)
		for _, c := range t.Added {
			fmt.Fprintf(w, "  + %s (added)\n", c)
		}
		for _, c := range t.Changed {
			fmt.Fprintf(w, "  ~ %s (changed)\n", c)
			for _, r := range t.Rules[c].Removed {
				fmt.Fprintf(w, "      - %s\n", r)
			}
			for _, r := range t.Rules[c].Added {
				fmt.Fprintf(w, "      + %s\n", r)
			}
		}
		for _, c := range t.Removed {
			fmt.Fprintf(w, "  - %s (removed)\n", c)
		}
	}
	_, err := fmt.Fprintf(w, "%d rule(s) would be written.\n", d.Rules)
	return err
}

func addrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
