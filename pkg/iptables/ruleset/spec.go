package ruleset

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Spec is a rule's arguments grouped the way iptables interprets them: the
// options of the rule header, the match extensions in evaluation order and
// the target. Option names are canonical (-s rather than --source, --dport
// rather than --destination-port) and values are as written.
type Spec struct {
	// Base holds -s, -d, -p, -i, -o and -f, which the kernel checks before
	// any match extension.
	Base []Option `json:"base,omitempty"`
	// Matches holds the match extensions in the order the kernel evaluates
	// them.
	Matches []Match `json:"matches,omitempty"`
	// Target is the argument of -j or -g, or "" for a rule without one.
	Target string `json:"target,omitempty"`
	// Goto is set when the target was given with -g.
	Goto bool `json:"goto,omitempty"`
	// TargetOptions holds the options of a target extension.
	TargetOptions []Option `json:"targetOptions,omitempty"`

	// targetIndex is the index in the rule's arguments of the target name.
	targetIndex int
	// targetAfter is the number of matches loaded before the target.
	targetAfter int
}

// Match is one match extension of a rule.
type Match struct {
	// Module is the extension's name (the argument of -m).
	Module string `json:"module"`
	// Implicit is set for a protocol match that "-p" loaded without "-m".
	Implicit bool `json:"implicit,omitempty"`
	// Options holds the extension's options in order.
	Options []Option `json:"options,omitempty"`
}

// Option is one option of a rule with its arguments.
type Option struct {
	// Name is the canonical option name, with its dashes ("-s", "--dport").
	Name string `json:"name"`
	// Negated is set when the option was preceded by "!".
	Negated bool `json:"negated,omitempty"`
	// Values holds the option's arguments (most options take one).
	Values []string `json:"values,omitempty"`
}

// Value returns the option's first argument, or "".
func (o Option) Value() string {
	if len(o.Values) == 0 {
		return ""
	}
	return o.Values[0]
}

// String renders the option as it would be written in a rule.
func (o Option) String() string {
	var b strings.Builder
	o.write(&b)
	return b.String()
}

func (o Option) write(b *strings.Builder) {
	if o.Negated {
		b.WriteString("! ")
	}
	b.WriteString(o.Name)
	for _, v := range o.Values {
		b.WriteByte(' ')
		b.WriteString(Quote(v))
	}
}

// BaseOption returns the base option called name ("-s", "-d", "-p", "-i",
// "-o" or "-f"), if the rule has it.
func (s *Spec) BaseOption(name string) (Option, bool) {
	for _, o := range s.Base {
		if o.Name == name {
			return o, true
		}
	}
	return Option{}, false
}

// Option returns the match's option called name (canonical), if present.
func (m Match) Option(name string) (Option, bool) {
	for _, o := range m.Options {
		if o.Name == name {
			return o, true
		}
	}
	return Option{}, false
}

// TargetOption returns the target's option called name, if present.
func (s *Spec) TargetOption(name string) (Option, bool) {
	for _, o := range s.TargetOptions {
		if o.Name == name {
			return o, true
		}
	}
	return Option{}, false
}

// ParseSpec parses the arguments of a rule (what follows "-A CHAIN").
// Options of unknown extensions are accepted generically: each takes the
// arguments that follow it up to the next option. See also
// Options.Strict.
func ParseSpec(args []string) (*Spec, error) {
	sp := &Spec{}
	if err := parseSpec(sp, args, Options{}); err != nil {
		return nil, err
	}
	return sp, nil
}

func (s *Spec) reset() {
	s.Base = s.Base[:0]
	s.Matches = s.Matches[:0]
	s.Target = ""
	s.Goto = false
	s.TargetOptions = s.TargetOptions[:0]
	s.targetIndex = -1
	s.targetAfter = -1
}

func syntaxf(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrSyntax)
}

// parseSpec parses args into sp, reusing sp's slices, and validates the
// result.
func parseSpec(sp *Spec, args []string, opts Options) error {
	sp.reset()
	neg := false
	proto := ""
	for i := 0; i < len(args); {
		a := args[i]
		if a == "!" {
			if neg {
				return syntaxf("multiple \"!\" flags not allowed")
			}
			neg = true
			i++
			continue
		}
		if len(a) < 2 || a[0] != '-' {
			return syntaxf("bad argument %q", a)
		}
		d, base := baseOpt(a)
		var owner *[]Option
		if !base {
			var err error
			d, owner, err = sp.extensionOption(a, proto, opts.Strict)
			if err != nil {
				return err
			}
		}
		if neg && !d.neg {
			return syntaxf("option %q cannot be inverted", a)
		}
		var vals []string
		if d.nargs >= 0 {
			if i+d.nargs >= len(args) {
				return syntaxf("option %q requires %d argument(s)", a, d.nargs)
			}
			vals = args[i+1 : i+1+d.nargs : i+1+d.nargs]
		} else {
			// An option of an unknown extension: take what follows up to
			// the next option.
			j := i + 1
			for j < len(args) && args[j] != "!" && !(len(args[j]) > 1 && args[j][0] == '-') {
				j++
			}
			vals = args[i+1 : j : j]
		}
		next := i + 1 + len(vals)
		opt := Option{Name: d.name, Negated: neg, Values: vals}
		neg = false
		if owner != nil {
			*owner = append(*owner, opt)
			i = next
			continue
		}
		switch d.name {
		case "-m":
			m := vals[0]
			if opts.Strict && !knownModule(m) {
				return syntaxf("unknown match extension %q", m)
			}
			sp.addMatch(m, false)
		case "-j", "-g":
			if sp.Target != "" {
				return syntaxf("multiple -j/-g flags not allowed")
			}
			if vals[0] == "" {
				return syntaxf("empty target")
			}
			sp.Target = vals[0]
			sp.Goto = d.name == "-g"
			sp.targetIndex = i + 1
			sp.targetAfter = len(sp.Matches)
		case "-c":
			// Counters: accepted and ignored.
		default:
			if _, dup := sp.BaseOption(d.name); dup {
				return syntaxf("multiple %s flags not allowed", d.name)
			}
			if d.name == "-p" && !opt.Negated {
				proto = strings.ToLower(vals[0])
			}
			sp.Base = append(sp.Base, opt)
		}
		i = next
	}
	if neg {
		return syntaxf("\"!\" at the end of the rule")
	}
	return sp.validate(opts)
}

// extensionOption finds the extension that owns option name: the most
// recently loaded extension (match or target) that knows it, else the
// protocol match "-p" loads implicitly. nargs < 0 in the result means the
// option belongs to an extension whose options are unknown.
func (s *Spec) extensionOption(name, proto string, strict bool) (optDef, *[]Option, error) {
	targetChecked := s.Target == ""
	checkTarget := func() (optDef, bool) {
		targetChecked = true
		return targetOpt(s.Target, name)
	}
	for k := len(s.Matches) - 1; k >= 0; k-- {
		if !targetChecked && s.targetAfter > k {
			if d, ok := checkTarget(); ok {
				return d, &s.TargetOptions, nil
			}
		}
		if d, ok := matchOpt(s.Matches[k].Module, name); ok {
			return d, &s.Matches[k].Options, nil
		}
	}
	if !targetChecked {
		if d, ok := checkTarget(); ok {
			return d, &s.TargetOptions, nil
		}
	}
	if m := protoModule(proto); m != "" {
		if d, ok := matchOpt(m, name); ok {
			s.addMatch(m, true)
			return d, &s.Matches[len(s.Matches)-1].Options, nil
		}
	}
	if strict {
		return optDef{}, nil, syntaxf("unknown option %q", name)
	}
	// Lenient: attach the option to the most recently loaded extension
	// whose options we do not know.
	if s.Target != "" && !knownTargetOptions(s.Target) && s.targetAfter == len(s.Matches) {
		return optDef{name: name, nargs: -1, neg: true}, &s.TargetOptions, nil
	}
	if n := len(s.Matches); n > 0 && !knownModule(s.Matches[n-1].Module) {
		return optDef{name: name, nargs: -1, neg: true}, &s.Matches[n-1].Options, nil
	}
	if s.Target != "" && !knownTargetOptions(s.Target) {
		return optDef{name: name, nargs: -1, neg: true}, &s.TargetOptions, nil
	}
	return optDef{}, nil, syntaxf("unknown option %q", name)
}

func (s *Spec) addMatch(module string, implicit bool) {
	n := len(s.Matches)
	if n < cap(s.Matches) {
		s.Matches = s.Matches[:n+1]
		m := &s.Matches[n]
		m.Module, m.Implicit, m.Options = module, implicit, m.Options[:0]
		return
	}
	s.Matches = append(s.Matches, Match{Module: module, Implicit: implicit})
}

// validate checks what the kernel and the extensions check when a rule is
// validateMatchProto checks that a protocol match comes with its -p.
func validateMatchProto(m Match, proto string) error {
	switch m.Module {
	case "tcp", "udp", "sctp", "icmp", "icmp6":
		if protoModule(proto) != m.Module {
			want := m.Module
			if want == "icmp6" {
				want = "icmpv6"
			}
			return syntaxf("only valid with \"-p %s\"", want)
		}
	case "multiport":
		switch proto {
		case "tcp", "udp", "udplite", "sctp", "dccp", "6", "17", "136", "132", "33":
		default:
			return syntaxf("multiport needs \"-p tcp\", \"-p udp\", \"-p udplite\", \"-p sctp\" or \"-p dccp\"")
		}
	}
	return nil
}

// added, for the extensions this package knows.
func (s *Spec) validate(opts Options) error {
	proto := ""
	for _, o := range s.Base {
		v := o.Value()
		switch o.Name {
		case "-s", "-d":
			if _, err := ParseAddress(v, opts.Family); err != nil {
				return fmt.Errorf("%s: %w", o.Name, err)
			}
		case "-p":
			if _, ok := ProtocolNumber(strings.ToLower(v)); !ok {
				return syntaxf("unknown protocol %q", v)
			}
			if !o.Negated {
				proto = strings.ToLower(v)
			}
		case "-i", "-o":
			if v == "" || len(v) > 15 {
				return syntaxf("bad interface name %q", v)
			}
		case "-f":
			if opts.Family == FamilyIPv6 {
				return syntaxf("-f is not supported for IPv6")
			}
		}
	}
	for _, m := range s.Matches {
		if err := validateMatch(m, proto, opts); err != nil {
			return fmt.Errorf("-m %s: %w", m.Module, err)
		}
	}
	if s.Target != "" {
		if s.Goto && IsVerdict(s.Target) {
			return syntaxf("-g %s: goto needs a chain", s.Target)
		}
		if err := validateTarget(s, opts); err != nil {
			return fmt.Errorf("-j %s: %w", s.Target, err)
		}
	} else if len(s.TargetOptions) > 0 {
		return syntaxf("target option %q without a target", s.TargetOptions[0].Name)
	}
	return nil
}

func validateMatch(m Match, proto string, opts Options) error {
	if err := validateMatchProto(m, proto); err != nil {
		return err
	}
	seen := 0
	for _, o := range m.Options {
		v := o.Value()
		switch m.Module + " " + o.Name {
		case "tcp --sport", "tcp --dport", "udp --sport", "udp --dport", "sctp --sport", "sctp --dport":
			if _, _, err := ParsePortRange(v); err != nil {
				return err
			}
		case "multiport --sports", "multiport --dports", "multiport --ports":
			for _, p := range strings.Split(v, ",") {
				if _, _, err := ParsePortRange(p); err != nil {
					return err
				}
			}
		case "comment --comment":
			if len(v) > 255 {
				return syntaxf("comment must be shorter than 256 characters")
			}
		case "addrtype --src-type", "addrtype --dst-type":
			for _, t := range strings.Split(v, ",") {
				if !addrTypeKnown(t) {
					return syntaxf("unknown address type %q", t)
				}
			}
		case "mark --mark", "connmark --mark":
			if _, _, err := ParseMark(v); err != nil {
				return err
			}
		case "conntrack --ctstate", "state --state":
			for _, st := range strings.Split(v, ",") {
				if !ctStateKnown(st) {
					return syntaxf("bad ctstate %q", st)
				}
			}
		case "conntrack --ctorigsrc", "conntrack --ctorigdst", "conntrack --ctreplsrc", "conntrack --ctrepldst":
			if _, err := ParseAddress(v, opts.Family); err != nil {
				return err
			}
		case "statistic --mode":
			if v != "random" && v != "nth" {
				return syntaxf("bad statistic mode %q", v)
			}
		case "statistic --probability":
			p, err := strconv.ParseFloat(v, 64)
			if err != nil || p < 0 || p > 1 {
				return syntaxf("--probability must be between 0 and 1, not %q", v)
			}
		case "statistic --every", "statistic --packet":
			if _, err := strconv.ParseUint(v, 10, 32); err != nil {
				return syntaxf("bad %s %q", o.Name, v)
			}
		case "recent --set", "recent --rcheck", "recent --update", "recent --remove":
			seen++
		case "recent --name":
			if v == "" || len(v) >= 200 {
				return syntaxf("bad recent list name %q", v)
			}
		case "recent --seconds", "recent --hitcount":
			if _, err := strconv.ParseUint(v, 10, 32); err != nil {
				return syntaxf("bad %s %q", o.Name, v)
			}
		}
	}
	switch m.Module {
	case "statistic":
		mode, _ := m.Option("--mode")
		_, hasP := m.Option("--probability")
		_, hasE := m.Option("--every")
		switch {
		case mode.Value() == "random" && !hasP:
			return syntaxf("--mode random needs --probability")
		case mode.Value() == "nth" && !hasE:
			return syntaxf("--mode nth needs --every")
		case mode.Value() == "":
			return syntaxf("--mode is required")
		}
	case "recent":
		if seen != 1 {
			return syntaxf("exactly one of --set, --rcheck, --update or --remove is required")
		}
	case "comment":
		if _, ok := m.Option("--comment"); !ok {
			return syntaxf("--comment is required")
		}
	}
	return nil
}

func validateTarget(s *Spec, opts Options) error {
	switch s.Target {
	case "DNAT", "SNAT":
		name := "--to-destination"
		if s.Target == "SNAT" {
			name = "--to-source"
		}
		o, ok := s.TargetOption(name)
		if !ok {
			return syntaxf("%s is required", name)
		}
		if _, err := ParseNATRange(o.Value(), opts.Family); err != nil {
			return err
		}
	case "MARK":
		n := 0
		for _, o := range s.TargetOptions {
			n++
			if _, _, err := ParseMark(o.Value()); err != nil {
				return err
			}
		}
		if n != 1 {
			return syntaxf("exactly one of --set-xmark, --set-mark, --and-mark, --or-mark or --xor-mark is required")
		}
	case "REJECT":
		if o, ok := s.TargetOption("--reject-with"); ok && !rejectWithKnown(o.Value(), opts.Family) {
			return syntaxf("unknown reject type %q", o.Value())
		}
	case "MASQUERADE", "REDIRECT":
		if o, ok := s.TargetOption("--to-ports"); ok {
			if _, _, err := parseRange(o.Value(), '-'); err != nil {
				return err
			}
		}
	}
	if opts.Strict && !knownTarget(s.Target) && len(s.TargetOptions) > 0 {
		return syntaxf("unknown option %q", s.TargetOptions[0].Name)
	}
	return nil
}

func addrTypeKnown(t string) bool {
	switch t {
	case "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
		"UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE":
		return true
	}
	return false
}

func ctStateKnown(s string) bool {
	switch s {
	case "INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT":
		return true
	}
	return false
}

func rejectWithKnown(t string, f Family) bool {
	switch t {
	case "tcp-reset", "tcp-rst":
		return true
	case "icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable", "icmp-proto-unreachable",
		"icmp-net-prohibited", "icmp-host-prohibited", "icmp-admin-prohibited",
		"net-unreach", "host-unreach", "port-unreach", "proto-unreach", "net-prohib", "host-prohib", "admin-prohib":
		return f != FamilyIPv6
	case "icmp6-no-route", "no-route", "icmp6-adm-prohibited", "adm-prohibited", "icmp6-addr-unreachable",
		"addr-unreach", "icmp6-port-unreachable", "icmp6-policy-fail", "policy-fail", "icmp6-reject-route", "reject-route":
		return f != FamilyIPv4
	}
	return false
}

// ParseAddress parses the argument of -s or -d: an address, or an address
// with a prefix length or (IPv4) a contiguous dotted netmask. Like iptables
// it masks the address ("10.1.2.3/8" is 10.0.0.0/8). Host names are not
// resolved. family restricts the accepted family unless it is FamilyAny.
func ParseAddress(v string, family Family) (netip.Prefix, error) {
	addrPart, maskPart, hasMask := strings.Cut(v, "/")
	addr, err := netip.ParseAddr(addrPart)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, syntaxf("bad address %q", v)
	}
	addr = addr.Unmap()
	if err := checkFamily(addr, family, v); err != nil {
		return netip.Prefix{}, err
	}
	bits := addr.BitLen()
	if hasMask {
		if n, err := strconv.Atoi(maskPart); err == nil && maskPart[0] != '+' && maskPart[0] != '-' {
			if n < 0 || n > addr.BitLen() {
				return netip.Prefix{}, syntaxf("bad prefix length in %q", v)
			}
			bits = n
		} else {
			m, err := netip.ParseAddr(maskPart)
			if err != nil || !m.Is4() || !addr.Is4() {
				return netip.Prefix{}, syntaxf("bad netmask in %q", v)
			}
			b := m.As4()
			x := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			ones := 0
			for x&0x80000000 != 0 {
				ones++
				x <<= 1
			}
			if x != 0 {
				return netip.Prefix{}, syntaxf("non-contiguous netmask in %q is not supported", v)
			}
			bits = ones
		}
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, syntaxf("bad address %q", v)
	}
	return p, nil
}

func checkFamily(addr netip.Addr, family Family, v string) error {
	switch {
	case family == FamilyIPv4 && !addr.Is4():
		return fmt.Errorf("%q in an IPv4 ruleset: %w", v, ErrFamily)
	case family == FamilyIPv6 && !addr.Is6():
		return fmt.Errorf("%q in an IPv6 ruleset: %w", v, ErrFamily)
	}
	return nil
}

// ParsePortRange parses a port or a port range ("80", "1000:2000", ":1024",
// "1024:") as written after --dport or --sport. Service names are not
// looked up.
func ParsePortRange(v string) (lo, hi int, err error) {
	return parseRange(v, ':')
}

func parseRange(v string, sep byte) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(v, string(sep))
	lo, hi = 0, 65535
	if a != "" || !isRange {
		if lo, err = parsePort(a); err != nil {
			return 0, 0, syntaxf("bad port %q", v)
		}
	}
	if !isRange {
		return lo, lo, nil
	}
	if b != "" {
		if hi, err = parsePort(b); err != nil {
			return 0, 0, syntaxf("bad port %q", v)
		}
	}
	if lo > hi {
		return 0, 0, syntaxf("bad port range %q", v)
	}
	return lo, hi, nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || s[0] == '+' || s[0] == '-' {
		return 0, ErrSyntax
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, ErrSyntax
	}
	return n, nil
}

// ParseMark parses "value" or "value/mask" (decimal or 0x hex) as written
// after --mark or the options of the MARK target. A missing mask is
// 0xffffffff.
func ParseMark(v string) (value, mask uint32, err error) {
	a, b, hasMask := strings.Cut(v, "/")
	x, err := strconv.ParseUint(a, 0, 32)
	if err != nil {
		return 0, 0, syntaxf("bad mark %q", v)
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(b, 0, 32); err != nil {
			return 0, 0, syntaxf("bad mark mask %q", v)
		}
	}
	return uint32(x), uint32(m), nil
}

// NATRange is the argument of --to-destination or --to-source: an address
// range and an optional port range.
type NATRange struct {
	// MinAddr and MaxAddr bound the address range; they are equal for a
	// single address.
	MinAddr, MaxAddr netip.Addr
	// MinPort and MaxPort bound the port range; both are 0 when no port is
	// given (the port is not changed).
	MinPort, MaxPort int
}

// ParseNATRange parses "addr[-addr][:port[-port]]"; IPv6 addresses with a
// port are written in brackets ("[fd00::1]:80").
func ParseNATRange(v string, family Family) (NATRange, error) {
	var r NATRange
	addrs, ports := v, ""
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return r, syntaxf("bad NAT address %q", v)
		}
		addrs = v[1:end]
		rest := v[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return r, syntaxf("bad NAT address %q", v)
			}
			ports = rest[1:]
			if ports == "" {
				return r, syntaxf("bad NAT port in %q", v)
			}
		}
	} else if strings.Count(v, ":") == 1 {
		addrs, ports, _ = strings.Cut(v, ":")
		if ports == "" {
			return r, syntaxf("bad NAT port in %q", v)
		}
	}
	a, b, isRange := strings.Cut(addrs, "-")
	var err error
	if r.MinAddr, err = netip.ParseAddr(a); err != nil {
		return r, syntaxf("bad NAT address %q", v)
	}
	r.MaxAddr = r.MinAddr
	if isRange {
		if r.MaxAddr, err = netip.ParseAddr(b); err != nil || r.MaxAddr.Less(r.MinAddr) || r.MaxAddr.Is4() != r.MinAddr.Is4() {
			return r, syntaxf("bad NAT address range %q", v)
		}
	}
	if r.MinAddr.Zone() != "" {
		return r, syntaxf("bad NAT address %q", v)
	}
	if err := checkFamily(r.MinAddr, family, v); err != nil {
		return r, err
	}
	if ports != "" {
		if r.MinPort, r.MaxPort, err = parseRange(ports, '-'); err != nil {
			return r, err
		}
		if r.MinPort == 0 {
			return r, syntaxf("bad NAT port in %q", v)
		}
	}
	return r, nil
}

// key renders the spec canonically for comparing rules the way iptables
// does for -D and -C: base options in a fixed order with addresses
// normalized, then the matches (implicit ones written out), then the
// target.
func (s *Spec) key() string {
	var b strings.Builder
	for _, name := range [...]string{"-s", "-d", "-i", "-o", "-p", "-f"} {
		o, ok := s.BaseOption(name)
		if !ok {
			continue
		}
		if (name == "-s" || name == "-d") && len(o.Values) == 1 {
			if p, err := ParseAddress(o.Values[0], FamilyAny); err == nil {
				o.Values = []string{p.String()}
			}
		}
		if name == "-p" && len(o.Values) == 1 {
			o.Values = []string{strings.ToLower(o.Values[0])}
		}
		o.write(&b)
		b.WriteByte(' ')
	}
	for _, m := range s.Matches {
		b.WriteString("-m ")
		b.WriteString(Quote(m.Module))
		for _, o := range m.Options {
			b.WriteByte(' ')
			o.write(&b)
		}
		b.WriteByte(' ')
	}
	if s.Target != "" {
		if s.Goto {
			b.WriteString("-g ")
		} else {
			b.WriteString("-j ")
		}
		b.WriteString(Quote(s.Target))
		for _, o := range s.TargetOptions {
			b.WriteByte(' ')
			o.write(&b)
		}
	}
	return b.String()
}
