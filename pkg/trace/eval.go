package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
)

// ErrUnsupported is wrapped by the errors of traces that reach a match,
// option or target the tracer cannot evaluate.
var ErrUnsupported = errors.New("not supported by the tracer")

// maxDepth bounds nested jumps; the kernel refuses loops, so only a
// pathological ruleset gets there.
const maxDepth = 128

// conntrack state bits of the packet's connection.
const (
	ctNew uint8 = 1 << iota
	ctDNAT
	ctSNAT
)

// state is the packet as one path sees it.
type state struct {
	src, dst     netip.Addr
	sport, dport int
	proto        string
	protoNum     int
	in, out      string
	mark         uint32
	ct           uint8
	prob         float64
	steps        []Step
	dnat         netip.AddrPort
	snat         netip.Addr
	masq         bool
	// hook is the built-in chain being traversed.
	hook string
}

func (s *state) clone() *state {
	c := *s
	c.steps = slices.Clone(s.steps)
	return &c
}

func (s *state) add(step Step) { s.steps = append(s.steps, step) }

func initialState(p Packet) (*state, error) {
	proto := strings.ToLower(p.Protocol)
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return nil, fmt.Errorf("protocol %q: want tcp, udp or sctp", p.Protocol)
	}
	n, _ := ruleset.ProtocolNumber(proto)
	src, dst := p.Src.Unmap(), p.Dst.Unmap()
	switch {
	case !src.IsValid() || !dst.IsValid():
		return nil, fmt.Errorf("packet needs a source and a destination address")
	case src.Is4() != dst.Is4():
		return nil, fmt.Errorf("source %s and destination %s are of different families", src, dst)
	case src.Zone() != "" || dst.Zone() != "":
		return nil, fmt.Errorf("addresses with zones are not supported")
	case p.DstPort < 1 || p.DstPort > 65535:
		return nil, fmt.Errorf("destination port %d out of range", p.DstPort)
	case p.SrcPort < 0 || p.SrcPort > 65535:
		return nil, fmt.Errorf("source port %d out of range", p.SrcPort)
	case p.Local && p.InInterface != "":
		return nil, fmt.Errorf("a locally originated packet has no input interface")
	}
	return &state{
		src: src, dst: dst, sport: p.SrcPort, dport: p.DstPort,
		proto: proto, protoNum: n, in: p.InInterface, mark: p.Mark,
		ct: ctNew, prob: 1,
	}, nil
}

// verdict is how a chain traversal ended.
type verdict uint8

const (
	// vReturn: RETURN or the end of the chain; in a built-in chain the
	// policy decides.
	vReturn verdict = iota
	vAccept
	vDrop
	vReject
	// vNAT: a NAT target ended the nat chain; the hook accepts.
	vNAT
)

type branch struct {
	st *state
	v  verdict
}

type tracer struct {
	rs       *ruleset.Ruleset
	node     Node
	opts     Options
	pkt      Packet
	specs    map[*ruleset.Rule]*ruleset.Spec
	evals    int
	outcomes []Outcome
}

// next is what happens to a packet that a hook accepted.
type next func(*state) error

// arrive traces a packet arriving on an interface.
func (t *tracer) arrive(st *state) error {
	return t.hook(st, "nat", "PREROUTING", func(st *state) error {
		if t.node.IsLocal(st.dst) {
			st.add(Step{Action: ActionRoute, Detail: fmt.Sprintf("%s is local: input", st.dst)})
			return t.hook(st, "filter", "INPUT", func(st *state) error {
				return t.hook(st, "nat", "INPUT", t.deliver(DeliveryLocal))
			})
		}
		st.add(Step{Action: ActionRoute, Detail: fmt.Sprintf("%s is not local: forward", st.dst)})
		st.out = t.pkt.OutInterface
		return t.hook(st, "filter", "FORWARD", func(st *state) error {
			return t.hook(st, "nat", "POSTROUTING", t.deliver(DeliveryForward))
		})
	})
}

// localOut traces a locally originated packet.
func (t *tracer) localOut(st *state) error {
	st.out = t.outInterface(st)
	return t.hook(st, "nat", "OUTPUT", func(st *state) error {
		local := t.node.IsLocal(st.dst)
		st.out = t.outInterface(st)
		if local {
			st.add(Step{Action: ActionRoute, Detail: fmt.Sprintf("%s is local: loopback", st.dst)})
		} else {
			st.add(Step{Action: ActionRoute, Detail: fmt.Sprintf("%s is not local: output", st.dst)})
		}
		return t.hook(st, "filter", "OUTPUT", func(st *state) error {
			return t.hook(st, "nat", "POSTROUTING", func(st *state) error {
				if !local {
					return t.deliver(DeliveryOutput)(st)
				}
				// Back in through the loopback interface. The nat table
				// has already seen this connection.
				st.in, st.out = "lo", ""
				return t.hook(st, "filter", "INPUT", func(st *state) error {
					return t.hook(st, "nat", "INPUT", t.deliver(DeliveryLocal))
				})
			})
		})
	})
}

func (t *tracer) outInterface(st *state) string {
	if t.node.IsLocal(st.dst) {
		return "lo"
	}
	return t.pkt.OutInterface
}

func (t *tracer) deliver(d Delivery) next {
	return func(st *state) error {
		t.finish(st, Accept, d)
		return nil
	}
}

func (t *tracer) finish(st *state, v Verdict, d Delivery) {
	t.outcomes = append(t.outcomes, Outcome{
		Probability: st.prob,
		Verdict:     v,
		Delivery:    d,
		DNAT:        st.dnat,
		SNAT:        st.snat,
		Masqueraded: st.masq,
		Mark:        st.mark,
		Dst:         netip.AddrPortFrom(st.dst, uint16(st.dport)),
		Steps:       st.steps,
	})
}

// hook traverses a built-in chain and hands every path it accepts to then.
func (t *tracer) hook(st *state, table, chain string, then next) error {
	tbl := t.rs.Table(table)
	var c *ruleset.Chain
	if tbl != nil {
		c = tbl.Chain(chain)
	}
	if c == nil {
		// No such table or chain: nothing to traverse.
		return then(st)
	}
	st.hook = chain
	branches, err := t.run(st, tbl, c, 0, 0)
	if err != nil {
		return err
	}
	for _, b := range branches {
		v := b.v
		if v == vReturn {
			b.st.add(Step{Table: table, Chain: chain, Action: ActionPolicy, Detail: c.Policy})
			v = vAccept
			if c.Policy == ruleset.TargetDrop {
				v = vDrop
			}
		}
		switch v {
		case vAccept, vNAT:
			if err := then(b.st); err != nil {
				return err
			}
		case vDrop:
			t.finish(b.st, Drop, DeliveryNone)
		case vReject:
			t.finish(b.st, Reject, DeliveryNone)
		}
	}
	return nil
}

func (t *tracer) spec(r *ruleset.Rule) (*ruleset.Spec, error) {
	if sp, ok := t.specs[r]; ok {
		return sp, nil
	}
	sp, err := r.Spec()
	if err != nil {
		return nil, err
	}
	t.specs[r] = sp
	return sp, nil
}

// run traverses chain c from rule index from and returns how each path
// ended. Paths that a statistic rule splits off are returned after the
// path that took the rule.
func (t *tracer) run(st *state, tbl *ruleset.Table, c *ruleset.Chain, from, depth int) ([]branch, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("chain %s: jumps nested more than %d deep", c.Name, maxDepth)
	}
	var deferred []branch
	done := func(bs ...branch) ([]branch, error) { return append(bs, deferred...), nil }
	for i := from; i < len(c.Rules); i++ {
		t.evals++
		if t.evals > t.opts.MaxRules {
			return nil, fmt.Errorf("trace evaluated more than %d rules", t.opts.MaxRules)
		}
		r := c.Rules[i]
		step := Step{Table: tbl.Name(), Chain: c.Name, Rule: i + 1, Text: r.Text, Depth: depth}
		sp, err := t.spec(r)
		if err != nil {
			return nil, t.ruleErr(step, err)
		}
		failed, alt, err := t.matchRule(st, tbl, c, i, depth, sp, &step)
		if err != nil {
			return nil, err
		}
		deferred = append(deferred, alt...)
		if failed != "" {
			if t.opts.Misses {
				miss := step
				miss.Action, miss.Detail = ActionSkip, "no match: "+failed
				st.add(miss)
			}
			continue
		}
		// The rule matched: apply its target.
		if sp.Target != "" {
			if tc := tbl.Chain(sp.Target); tc != nil && !tc.Builtin {
				out, err := t.jump(st, tbl, c, tc, i, depth, sp.Goto, step)
				if err != nil {
					return nil, err
				}
				return done(out...)
			}
		}
		v, cont, err := t.target(st, sp, &step)
		if err != nil {
			return nil, t.ruleErr(step, err)
		}
		st.add(step)
		if !cont {
			return done(branch{st: st, v: v})
		}
	}
	if depth > 0 {
		st.add(Step{Table: tbl.Name(), Chain: c.Name, Action: ActionReturn, Detail: "end of chain", Depth: depth})
	}
	return done(branch{st: st, v: vReturn})
}

// matchRule evaluates the matches of rule i of c: it returns why the rule
// does not match ("" when it does). A statistic match with a probability
// between 0 and 1 splits the trace: the branch where it is not taken goes
// on after the rule, its outcomes returned as alt, and st continues with
// the branch where it is (step.Branch set).
func (t *tracer) matchRule(st *state, tbl *ruleset.Table, c *ruleset.Chain, i, depth int, sp *ruleset.Spec, step *Step) (failed string, alt []branch, err error) {
	failed, err = t.matchBase(st, sp)
	if err != nil {
		return "", nil, t.ruleErr(*step, err)
	}
	for mi := 0; failed == "" && mi < len(sp.Matches); mi++ {
		m := &sp.Matches[mi]
		if m.Module != "statistic" {
			if failed, err = t.matchExt(st, m); err != nil {
				return "", nil, t.ruleErr(*step, err)
			}
			continue
		}
		p, err := statisticProbability(m)
		if err != nil {
			return "", nil, t.ruleErr(*step, err)
		}
		switch {
		case p <= 0:
			failed = "-m statistic (never matches)"
		case p < 1:
			skipped := st.clone()
			skipped.prob *= 1 - p
			skip := *step
			skip.Action, skip.Detail, skip.Branch = ActionSkip, "statistic: not taken", 1-p
			skipped.add(skip)
			bs, err := t.run(skipped, tbl, c, i+1, depth)
			if err != nil {
				return "", nil, err
			}
			alt = append(alt, bs...)
			st.prob *= p
			step.Branch = p
		}
	}
	return failed, alt, nil
}

// jump follows rule i of c to the user chain tc (a jump, or a goto): the
// outcomes of tc, and for a jump, of the rest of c after each RETURN.
func (t *tracer) jump(st *state, tbl *ruleset.Table, c, tc *ruleset.Chain, i, depth int, isGoto bool, step Step) ([]branch, error) {
	step.Action, step.Detail = ActionJump, tc.Name
	if isGoto {
		step.Action = ActionGoto
	}
	st.add(step)
	sub, err := t.run(st, tbl, tc, 0, depth+1)
	if err != nil || isGoto {
		// A RETURN from the goto target returns from this chain.
		return sub, err
	}
	var out []branch
	for _, b := range sub {
		if b.v != vReturn {
			out = append(out, b)
			continue
		}
		rest, err := t.run(b.st, tbl, c, i+1, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, rest...)
	}
	return out, nil
}

func (t *tracer) ruleErr(step Step, err error) error {
	return fmt.Errorf("%s/%s rule %d (%s): %w", step.Table, step.Chain, step.Rule, step.Text, err)
}

// target applies a non-chain target. cont reports whether traversal goes
// on with the next rule.
func (t *tracer) target(st *state, sp *ruleset.Spec, step *Step) (v verdict, cont bool, err error) {
	switch sp.Target {
	case "":
		step.Action = ActionMatch
		return 0, true, nil
	case ruleset.TargetAccept:
		step.Action = ActionAccept
		return vAccept, false, nil
	case ruleset.TargetDrop:
		step.Action = ActionDrop
		return vDrop, false, nil
	case "REJECT":
		if err := t.needHook(st, sp.Target, "INPUT", "FORWARD", "OUTPUT"); err != nil {
			return 0, false, err
		}
		step.Action = ActionReject
		if o, ok := sp.TargetOption("--reject-with"); ok {
			step.Detail = o.Value()
		}
		return vReject, false, nil
	case ruleset.TargetReturn:
		step.Action = ActionReturn
		return vReturn, false, nil
	case "MARK":
		before := st.mark
		if err := applyMark(st, sp); err != nil {
			return 0, false, err
		}
		step.Action, step.Detail = ActionMark, fmt.Sprintf("%#x -> %#x", before, st.mark)
		return 0, true, nil
	case "DNAT":
		if err := t.needHook(st, sp.Target, "PREROUTING", "OUTPUT"); err != nil {
			return 0, false, err
		}
		addr, port, err := natTarget(sp, "--to-destination", st)
		if err != nil {
			return 0, false, err
		}
		if port == 0 {
			port = st.dport
		}
		before := netip.AddrPortFrom(st.dst, uint16(st.dport))
		st.dst, st.dport = addr, port
		st.dnat = netip.AddrPortFrom(addr, uint16(port))
		st.ct |= ctDNAT
		step.Action, step.Detail = ActionDNAT, fmt.Sprintf("%s -> %s", before, st.dnat)
		return vNAT, false, nil
	case "SNAT":
		if err := t.needHook(st, sp.Target, "POSTROUTING", "INPUT"); err != nil {
			return 0, false, err
		}
		addr, port, err := natTarget(sp, "--to-source", st)
		if err != nil {
			return 0, false, err
		}
		if port != 0 {
			st.sport = port
		}
		step.Action, step.Detail = ActionSNAT, fmt.Sprintf("%s -> %s", st.src, addr)
		st.src, st.snat = addr, addr
		st.ct |= ctSNAT
		return vNAT, false, nil
	case "MASQUERADE":
		if err := t.needHook(st, sp.Target, "POSTROUTING"); err != nil {
			return 0, false, err
		}
		st.masq = true
		st.ct |= ctSNAT
		step.Action = ActionMasquerade
		return vNAT, false, nil
	case "LOG", "NFLOG", "TRACE":
		step.Action, step.Detail = ActionMatch, sp.Target
		return 0, true, nil
	}
	return 0, false, fmt.Errorf("target %s: %w", sp.Target, ErrUnsupported)
}

// needHook reports targets used in a built-in chain where the kernel
// would not allow them.
func (t *tracer) needHook(st *state, target string, hooks ...string) error {
	if slices.Contains(hooks, st.hook) {
		return nil
	}
	return fmt.Errorf("target %s is not valid in %s (only in %s)", target, st.hook, strings.Join(hooks, ", "))
}

func natTarget(sp *ruleset.Spec, option string, st *state) (netip.Addr, int, error) {
	o, ok := sp.TargetOption(option)
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("%s without %s", sp.Target, option)
	}
	r, err := ruleset.ParseNATRange(o.Value(), ruleset.FamilyAny)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	if r.MinAddr != r.MaxAddr || r.MinPort != r.MaxPort {
		return netip.Addr{}, 0, fmt.Errorf("%s %s: address and port ranges: %w", option, o.Value(), ErrUnsupported)
	}
	addr := r.MinAddr.Unmap()
	if addr.Is4() != st.dst.Is4() {
		return netip.Addr{}, 0, fmt.Errorf("%s %s: wrong address family for the packet", option, o.Value())
	}
	return addr, r.MinPort, nil
}

func applyMark(st *state, sp *ruleset.Spec) error {
	if len(sp.TargetOptions) != 1 {
		return fmt.Errorf("MARK needs exactly one operation")
	}
	o := sp.TargetOptions[0]
	v, m, err := ruleset.ParseMark(o.Value())
	if err != nil {
		return err
	}
	switch o.Name {
	case "--set-xmark":
		st.mark = (st.mark &^ m) ^ v
	case "--set-mark":
		st.mark = (st.mark &^ m) | v
	case "--or-mark":
		st.mark |= v
	case "--xor-mark":
		st.mark ^= v
	case "--and-mark":
		st.mark &= v
	default:
		return fmt.Errorf("MARK %s: %w", o.Name, ErrUnsupported)
	}
	return nil
}
