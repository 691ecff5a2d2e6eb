package trace

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
)

// matchBase evaluates the rule header (-s, -d, -p, -i, -o, -f). It returns
// the first option that does not match, or "".
func (t *tracer) matchBase(st *state, sp *ruleset.Spec) (string, error) {
	for _, o := range sp.Base {
		v := o.Value()
		var ok bool
		switch o.Name {
		case "-s", "-d":
			p, err := ruleset.ParseAddress(v, ruleset.FamilyAny)
			if err != nil {
				return "", err
			}
			addr := st.src
			if o.Name == "-d" {
				addr = st.dst
			}
			ok = p.Contains(addr)
		case "-p":
			n, known := ruleset.ProtocolNumber(strings.ToLower(v))
			if !known {
				return "", fmt.Errorf("protocol %q: %w", v, ErrUnsupported)
			}
			ok = n == 0 || n == st.protoNum
		case "-i":
			ok = ifaceMatches(v, st.in)
		case "-o":
			ok = ifaceMatches(v, st.out)
		case "-f":
			ok = false // the first packet is not a fragment
		default:
			return "", fmt.Errorf("option %s: %w", o.Name, ErrUnsupported)
		}
		if ok == o.Negated {
			return o.String(), nil
		}
	}
	return "", nil
}

// ifaceMatches matches an interface name against -i/-o, where a trailing
// "+" matches any suffix.
func ifaceMatches(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

// matchExt evaluates one match extension (other than statistic). It
// returns the first option that does not match, or "".
func (t *tracer) matchExt(st *state, m *ruleset.Match) (string, error) {
	switch m.Module {
	case "comment", "nfacct":
		return "", nil
	case "limit":
		// The first packet is within any burst.
		return "", nil
	case "tcp", "udp", "sctp":
		if st.proto != m.Module {
			return "-m " + m.Module, nil
		}
	case "recent":
		return t.matchRecent(m)
	}
	for _, o := range m.Options {
		ok, err := t.matchOption(st, m.Module, o)
		if err != nil {
			return "", fmt.Errorf("-m %s %s: %w", m.Module, o.Name, err)
		}
		if ok == o.Negated {
			return fmt.Sprintf("-m %s %s", m.Module, o), nil
		}
	}
	return "", nil
}

// matchOption evaluates one option of a match, ignoring its negation.
func (t *tracer) matchOption(st *state, module string, o ruleset.Option) (bool, error) {
	v := o.Value()
	switch module + " " + o.Name {
	case "tcp --dport", "udp --dport", "sctp --dport":
		return portIn(v, st.dport)
	case "tcp --sport", "udp --sport", "sctp --sport":
		return portIn(v, st.sport)
	case "tcp --syn":
		return true, nil
	case "tcp --tcp-flags":
		return tcpFlagsMatch(o.Values)
	case "multiport --dports":
		return portListIn(v, st.dport)
	case "multiport --sports":
		return portListIn(v, st.sport)
	case "multiport --ports":
		d, err := portListIn(v, st.dport)
		if err != nil {
			return false, err
		}
		s, _ := portListIn(v, st.sport)
		return d || s, nil
	case "addrtype --src-type":
		return t.addrTypeIn(v, st.src)
	case "addrtype --dst-type":
		return t.addrTypeIn(v, st.dst)
	case "mark --mark":
		val, mask, err := ruleset.ParseMark(v)
		if err != nil {
			return false, err
		}
		return st.mark&mask == val, nil
	case "connmark --mark":
		// A new connection's conntrack mark is 0.
		val, mask, err := ruleset.ParseMark(v)
		if err != nil {
			return false, err
		}
		return 0&mask == val, nil
	case "conntrack --ctstate", "state --state":
		return ctStateIn(v, st.ct)
	case "conntrack --ctproto":
		n, ok := ruleset.ProtocolNumber(strings.ToLower(v))
		if !ok {
			return false, fmt.Errorf("protocol %q: %w", v, ErrUnsupported)
		}
		return n == 0 || n == st.protoNum, nil
	case "conntrack --ctorigsrc":
		return prefixContains(v, t.pkt.Src.Unmap())
	case "conntrack --ctorigdst":
		return prefixContains(v, t.pkt.Dst.Unmap())
	case "conntrack --ctorigsrcport":
		return portIn(v, t.pkt.SrcPort)
	case "conntrack --ctorigdstport":
		return portIn(v, t.pkt.DstPort)
	case "conntrack --ctdir":
		return v == "ORIGINAL", nil
	case "iprange --src-range":
		return rangeContains(v, st.src)
	case "iprange --dst-range":
		return rangeContains(v, st.dst)
	case "pkttype --pkt-type":
		return pktTypeIs(v, st.dst)
	}
	return false, fmt.Errorf("%w", ErrUnsupported)
}

func portIn(v string, port int) (bool, error) {
	lo, hi, err := ruleset.ParsePortRange(v)
	if err != nil {
		return false, err
	}
	return lo <= port && port <= hi, nil
}

func portListIn(v string, port int) (bool, error) {
	for _, p := range strings.Split(v, ",") {
		ok, err := portIn(p, port)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

// tcpFlagsMatch evaluates --tcp-flags MASK COMP for the first packet of a
// connection, a SYN.
func tcpFlagsMatch(vals []string) (bool, error) {
	if len(vals) != 2 {
		return false, fmt.Errorf("--tcp-flags needs a mask and a comparison")
	}
	flags := func(s string) (uint8, error) {
		var f uint8
		for _, name := range strings.Split(s, ",") {
			switch strings.ToUpper(name) {
			case "FIN":
				f |= 0x01
			case "SYN":
				f |= 0x02
			case "RST":
				f |= 0x04
			case "PSH":
				f |= 0x08
			case "ACK":
				f |= 0x10
			case "URG":
				f |= 0x20
			case "ALL":
				f |= 0x3f
			case "NONE":
			default:
				return 0, fmt.Errorf("bad TCP flag %q", name)
			}
		}
		return f, nil
	}
	mask, err := flags(vals[0])
	if err != nil {
		return false, err
	}
	comp, err := flags(vals[1])
	if err != nil {
		return false, err
	}
	const syn = 0x02
	return syn&mask == comp, nil
}

func (t *tracer) addrTypeIn(types string, addr netip.Addr) (bool, error) {
	for _, typ := range strings.Split(types, ",") {
		var ok bool
		switch typ {
		case "LOCAL":
			ok = t.node.IsLocal(addr)
		case "UNICAST":
			ok = !t.node.IsLocal(addr) && !addr.IsMulticast() && !isBroadcast(addr) && !addr.IsUnspecified()
		case "MULTICAST":
			ok = addr.IsMulticast()
		case "BROADCAST":
			ok = isBroadcast(addr)
		case "UNSPEC":
			ok = addr.IsUnspecified()
		default:
			return false, fmt.Errorf("address type %s: %w", typ, ErrUnsupported)
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func isBroadcast(addr netip.Addr) bool {
	return addr == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func pktTypeIs(v string, dst netip.Addr) (bool, error) {
	switch v {
	case "unicast", "host":
		return !dst.IsMulticast() && !isBroadcast(dst), nil
	case "multicast":
		return dst.IsMulticast(), nil
	case "broadcast":
		return isBroadcast(dst), nil
	}
	return false, fmt.Errorf("packet type %q: %w", v, ErrUnsupported)
}

func ctStateIn(v string, ct uint8) (bool, error) {
	for _, s := range strings.Split(v, ",") {
		switch s {
		case "NEW":
			if ct&ctNew != 0 {
				return true, nil
			}
		case "DNAT":
			if ct&ctDNAT != 0 {
				return true, nil
			}
		case "SNAT":
			if ct&ctSNAT != 0 {
				return true, nil
			}
		case "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED":
		default:
			return false, fmt.Errorf("conntrack state %q: %w", s, ErrUnsupported)
		}
	}
	return false, nil
}

func prefixContains(v string, addr netip.Addr) (bool, error) {
	p, err := ruleset.ParseAddress(v, ruleset.FamilyAny)
	if err != nil {
		return false, err
	}
	return p.Contains(addr), nil
}

func rangeContains(v string, addr netip.Addr) (bool, error) {
	a, b, _ := strings.Cut(v, "-")
	lo, err := netip.ParseAddr(a)
	if err != nil {
		return false, fmt.Errorf("bad range %q", v)
	}
	hi := lo
	if b != "" {
		if hi, err = netip.ParseAddr(b); err != nil {
			return false, fmt.Errorf("bad range %q", v)
		}
	}
	return lo.BitLen() == addr.BitLen() && lo.Compare(addr) <= 0 && addr.Compare(hi) <= 0, nil
}

// statisticProbability returns the probability that a statistic match
// matches (its negation included). In nth mode, that is the long-run
// share of packets it matches.
func statisticProbability(m *ruleset.Match) (float64, error) {
	mode, _ := m.Option("--mode")
	var p float64
	var negated bool
	switch mode.Value() {
	case "random":
		o, ok := m.Option("--probability")
		if !ok {
			return 0, fmt.Errorf("statistic --mode random without --probability")
		}
		v, err := strconv.ParseFloat(o.Value(), 64)
		if err != nil || v < 0 || v > 1 {
			return 0, fmt.Errorf("bad probability %q", o.Value())
		}
		// The kernel compares against a 31-bit random number.
		p, negated = v, o.Negated
	case "nth":
		o, ok := m.Option("--every")
		if !ok {
			return 0, fmt.Errorf("statistic --mode nth without --every")
		}
		n, err := strconv.ParseUint(o.Value(), 10, 32)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("bad --every %q", o.Value())
		}
		p, negated = 1/float64(n), o.Negated
	default:
		return 0, fmt.Errorf("statistic mode %q: %w", mode.Value(), ErrUnsupported)
	}
	for _, o := range m.Options {
		switch o.Name {
		case "--mode", "--probability", "--every", "--packet":
		default:
			return 0, fmt.Errorf("-m statistic %s: %w", o.Name, ErrUnsupported)
		}
	}
	if negated {
		p = 1 - p
	}
	return p, nil
}

// matchRecent evaluates "-m recent": --set always matches; --rcheck,
// --update and --remove match when the list is in Packet.Recent and, with
// --seconds N, the source was seen less than N seconds ago
// (Packet.RecentAge); --hitcount is taken to be satisfied.
func (t *tracer) matchRecent(m *ruleset.Match) (string, error) {
	name := "DEFAULT"
	if o, ok := m.Option("--name"); ok {
		name = o.Value()
	}
	listed := slices.Contains(t.pkt.Recent, name)
	if o, ok := m.Option("--seconds"); ok && listed {
		secs, err := strconv.Atoi(o.Value())
		if err != nil {
			return "", fmt.Errorf("-m recent --seconds %q: %w", o.Value(), err)
		}
		listed = t.pkt.RecentAge < secs
	}
	for _, o := range m.Options {
		var ok bool
		switch o.Name {
		case "--set":
			ok = true
		case "--rcheck", "--update", "--remove":
			ok = listed
		case "--name", "--seconds", "--reap", "--hitcount", "--rsource", "--rdest", "--mask", "--rttl":
			continue
		default:
			return "", fmt.Errorf("-m recent %s: %w", o.Name, ErrUnsupported)
		}
		if ok == o.Negated {
			return "-m recent " + o.String(), nil
		}
	}
	return "", nil
}
