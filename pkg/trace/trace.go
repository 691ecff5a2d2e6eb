// Package trace follows a packet through the nat and filter tables of a
// ruleset.Ruleset the way netfilter would, and reports every path it can
// take: the rules it traverses, the verdict, the DNAT destination, whether
// it is masqueraded and where it is delivered.
//
// Locally originated packets traverse nat OUTPUT, are routed, traverse
// filter OUTPUT and nat POSTROUTING, and, when their destination is local,
// come back in through filter INPUT and nat INPUT. Arriving packets
// traverse nat PREROUTING, are routed on their destination after DNAT, and
// then traverse either filter INPUT and nat INPUT (local delivery) or
// filter FORWARD and nat POSTROUTING (forwarding). The raw, mangle and
// security tables are not traversed.
//
// The packet is the first packet of a new connection: conntrack state NEW
// (plus DNAT and SNAT once it has been translated), a TCP SYN. Rules with
// "-m statistic" branch: the trace follows both the matching and the
// non-matching path, so a Result has one Outcome per path, with
// probabilities that sum to 1. A match or target the tracer does not
// understand makes Trace fail rather than guess.
package trace

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
)

// Packet is the packet to trace.
type Packet struct {
	// Protocol is "tcp", "udp" or "sctp".
	Protocol string `json:"protocol"`
	// Src and Dst are the source and destination addresses, of the same
	// family.
	Src netip.Addr `json:"src"`
	Dst netip.Addr `json:"dst"`
	// SrcPort is the source port; 0 is matched as 0.
	SrcPort int `json:"srcPort,omitempty"`
	// DstPort is the destination port.
	DstPort int `json:"dstPort"`
	// InInterface is the interface an arriving packet comes in on ("" for
	// a locally originated packet).
	InInterface string `json:"inInterface,omitempty"`
	// OutInterface is the interface a forwarded or locally originated
	// packet leaves by, for "-o" matches ("" when unknown). Packets to a
	// local address leave by "lo".
	OutInterface string `json:"outInterface,omitempty"`
	// Local is set for a packet originated on the node itself.
	Local bool `json:"local,omitempty"`
	// Mark is the packet's initial firewall mark.
	Mark uint32 `json:"mark,omitempty"`
	// Recent lists the "-m recent" lists (by --name) that already hold the
	// source address, as for a client with session affinity. For other
	// lists the client is new: --rcheck and --update do not match.
	Recent []string `json:"recent,omitempty"`
	// RecentAge is how many seconds ago the source was last seen in the
	// Recent lists. "--rcheck/--update --seconds N" match only when
	// RecentAge < N, as xt_recent compares the last-seen time with now-N.
	RecentAge int `json:"recentAge,omitempty"`
}

// String renders the packet briefly ("tcp 10.0.0.2 -> 172.30.0.1:80").
func (p Packet) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", p.Protocol, p.Src)
	if p.SrcPort != 0 {
		fmt.Fprintf(&b, ":%d", p.SrcPort)
	}
	fmt.Fprintf(&b, " -> %s", netip.AddrPortFrom(p.Dst, uint16(p.DstPort)))
	switch {
	case p.Local:
		b.WriteString(" (local)")
	case p.InInterface != "":
		fmt.Fprintf(&b, " (in %s)", p.InInterface)
	}
	return b.String()
}

// Node describes the node the rules run on.
type Node struct {
	// LocalAddrs are the node's addresses, for "-m addrtype --src-type
	// LOCAL" and "--dst-type LOCAL" and for routing. 127.0.0.0/8 and ::1
	// are always local.
	LocalAddrs []netip.Addr `json:"localAddrs,omitempty"`
}

// IsLocal reports whether addr is an address of the node.
func (n Node) IsLocal(addr netip.Addr) bool {
	addr = addr.Unmap()
	if addr.IsLoopback() {
		return true
	}
	for _, a := range n.LocalAddrs {
		if a.Unmap() == addr {
			return true
		}
	}
	return false
}

// Options tunes a trace.
type Options struct {
	// Misses adds a step for every rule that was evaluated and did not
	// match, naming the first condition that failed. Useful to explain
	// why a packet did not take a path; noisy with many Services.
	Misses bool
	// MaxRules bounds the number of rule evaluations (over all paths);
	// 0 means 1,000,000.
	MaxRules int
}

// Verdict is the fate of a packet.
type Verdict string

// The verdicts.
const (
	// Accept means the packet made it through and was delivered.
	Accept Verdict = "ACCEPT"
	// Drop means a rule or a policy dropped the packet.
	Drop Verdict = "DROP"
	// Reject means a REJECT rule refused the packet.
	Reject Verdict = "REJECT"
)

// Delivery says where an accepted packet went.
type Delivery string

// The deliveries.
const (
	// DeliveryNone is the delivery of a dropped or rejected packet.
	DeliveryNone Delivery = ""
	// DeliveryLocal means the packet was handed to a local socket.
	DeliveryLocal Delivery = "local"
	// DeliveryForward means an arriving packet was forwarded (to a pod on
	// this node or elsewhere).
	DeliveryForward Delivery = "forward"
	// DeliveryOutput means a locally originated packet left the node.
	DeliveryOutput Delivery = "output"
)

// Action is what happened at a step.
type Action string

// The actions.
const (
	// ActionJump: the rule matched and jumped to a user-defined chain.
	ActionJump Action = "jump"
	// ActionGoto: the rule matched and went (-g) to a user-defined chain.
	ActionGoto Action = "goto"
	// ActionReturn: a RETURN rule matched, or (Rule 0) the packet fell off
	// the end of a user-defined chain.
	ActionReturn Action = "return"
	// ActionPolicy: the packet reached the end of a built-in chain (Rule
	// 0); Detail is the policy.
	ActionPolicy Action = "policy"
	// ActionAccept: an ACCEPT rule matched.
	ActionAccept Action = "accept"
	// ActionDrop: a DROP rule matched.
	ActionDrop Action = "drop"
	// ActionReject: a REJECT rule matched.
	ActionReject Action = "reject"
	// ActionDNAT: a DNAT rule rewrote the destination.
	ActionDNAT Action = "dnat"
	// ActionSNAT: an SNAT rule rewrote the source.
	ActionSNAT Action = "snat"
	// ActionMasquerade: a MASQUERADE rule matched.
	ActionMasquerade Action = "masquerade"
	// ActionMark: a MARK rule changed the packet mark.
	ActionMark Action = "mark"
	// ActionMatch: a rule without a target, or with a target that only
	// observes (LOG, NFLOG, TRACE), matched.
	ActionMatch Action = "match"
	// ActionSkip: the rule did not match. Recorded for statistic branches
	// not taken, and for every miss with Options.Misses.
	ActionSkip Action = "skip"
	// ActionRoute: the routing decision (Table and Chain are empty).
	ActionRoute Action = "route"
)

// Step is one step of a path.
type Step struct {
	// Table and Chain locate the rule.
	Table string `json:"table,omitempty"`
	Chain string `json:"chain,omitempty"`
	// Rule is the 1-based index of the rule in the chain, or 0 for the
	// end of the chain.
	Rule int `json:"rule"`
	// Text is the rule as written (without "-A CHAIN").
	Text string `json:"text,omitempty"`
	// Action is what happened.
	Action Action `json:"action"`
	// Detail explains the action: the jump target, the address change, the
	// mark change, the condition that failed.
	Detail string `json:"detail,omitempty"`
	// Branch is the probability of the branch taken here, for rules with
	// "-m statistic" (0 when the step is not a branch point).
	Branch float64 `json:"branch,omitempty"`
	// Depth is how many jumps deep the chain is (0 for built-in chains).
	Depth int `json:"depth"`
}

// Outcome is one path the packet can take.
type Outcome struct {
	// Probability is the probability of this path.
	Probability float64 `json:"probability"`
	// Verdict is the fate of the packet.
	Verdict Verdict `json:"verdict"`
	// Delivery is where an accepted packet went.
	Delivery Delivery `json:"delivery,omitempty"`
	// DNAT is the destination set by DNAT, if any.
	DNAT netip.AddrPort `json:"dnat,omitzero"`
	// SNAT is the source set by SNAT, if any.
	SNAT netip.Addr `json:"snat,omitzero"`
	// Masqueraded is set when the packet reached MASQUERADE.
	Masqueraded bool `json:"masqueraded,omitempty"`
	// Mark is the packet mark at the end.
	Mark uint32 `json:"mark"`
	// Dst is the destination at the end (after DNAT).
	Dst netip.AddrPort `json:"dst"`
	// Steps is the path, rule by rule.
	Steps []Step `json:"steps"`
}

// Result is the result of a trace.
type Result struct {
	// Packet is the traced packet.
	Packet Packet `json:"packet"`
	// Node is the node the trace ran for.
	Node Node `json:"node"`
	// Outcomes are the possible paths; their probabilities sum to 1.
	Outcomes []Outcome `json:"outcomes"`
}

// Trace follows pkt through rs on node.
func Trace(rs *ruleset.Ruleset, node Node, pkt Packet) (*Result, error) {
	return TraceWithOptions(rs, node, pkt, Options{})
}

// TraceWithOptions is Trace with options.
func TraceWithOptions(rs *ruleset.Ruleset, node Node, pkt Packet, opts Options) (*Result, error) {
	st, err := initialState(pkt)
	if err != nil {
		return nil, err
	}
	if opts.MaxRules <= 0 {
		opts.MaxRules = 1_000_000
	}
	t := &tracer{rs: rs, node: node, opts: opts, pkt: pkt, specs: map[*ruleset.Rule]*ruleset.Spec{}}
	if pkt.Local {
		err = t.localOut(st)
	} else {
		err = t.arrive(st)
	}
	if err != nil {
		return nil, err
	}
	return &Result{Packet: pkt, Node: node, Outcomes: t.outcomes}, nil
}
