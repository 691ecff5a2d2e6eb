package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one rule of a chain in canonical form: its String is exactly the
// body iptables-save prints after "-A CHAIN" (addresses with their prefix
// length, comments quoted as the tools quote them, matches in the order
// they print). Two rules are equal (==) when their texts are.
//
// A Rule keeps its text and the positions of the parts that matter to
// iptproxy (the jump or goto target and the comment), so that it costs no
// more memory than its text and a few offsets. The zero Rule is the empty
// rule (no match, no target).
type Rule struct {
	text string
	// tgt, tgtEnd and cmt, cmtEnd are offsets into text of the target
	// (the argument of -j or -g) and of the comment as printed (quoted or
	// bare); equal offsets mean absent.
	tgt, tgtEnd, cmt, cmtEnd uint16
}

// maxRuleLen is the longest rule text whose parts a Rule can locate. The
// kernel's limits keep real rules far below it.
const maxRuleLen = 1<<16 - 1

// String returns the rule's canonical text.
func (r Rule) String() string { return r.text }

// Target returns the argument of the rule's -j or -g: a chain name or a
// target extension (DNAT, MARK, ...); "" when the rule has none.
func (r Rule) Target() string { return r.text[r.tgt:r.tgtEnd] }

// Goto reports whether the rule's target is given with -g.
func (r Rule) Goto() bool {
	return r.tgt >= 3 && r.text[r.tgt-3:r.tgt] == "-g "
}

// Comment returns the text of the rule's comment match, unquoted; "" when
// it has none.
func (r Rule) Comment() string { return unquote(r.text[r.cmt:r.cmtEnd]) }

// HasComment reports whether the rule carries a comment match.
func (r Rule) HasComment() bool { return r.cmtEnd > r.cmt }

// ParseRule reads a rule body as iptables-save prints it (what follows
// "-A CHAIN"). The text is kept as given: it is canonical when it comes
// from iptables-save or from this package. Reading stops at the target:
// what follows it are the target's own options.
func ParseRule(body string) (Rule, error) {
	if len(body) > maxRuleLen {
		return Rule{}, fmt.Errorf("rule of %d bytes is too long", len(body))
	}
	r := Rule{text: body}
	prev := ""
	for i := 0; i < len(body); {
		if body[i] == ' ' {
			i++
			continue
		}
		start := i
		quoted := false
		for ; i < len(body) && (quoted || body[i] != ' '); i++ {
			switch body[i] {
			case '"':
				quoted = !quoted
			case '\\':
				if quoted {
					i++
				}
			}
		}
		if quoted {
			return Rule{}, fmt.Errorf("rule %q: unterminated quote", body)
		}
		end := min(i, len(body))
		switch prev {
		case "-j", "-g", "--jump", "--goto":
			r.tgt, r.tgtEnd = uint16(start), uint16(end)
			return r, nil
		case "--comment":
			if r.cmtEnd == 0 {
				r.cmt, r.cmtEnd = uint16(start), uint16(end)
			}
		}
		prev = body[start:end]
	}
	return r, nil
}

// MustParseRule is ParseRule for rules known to be valid (tests, constant
// rules); it panics on an error.
func MustParseRule(body string) Rule {
	r, err := ParseRule(body)
	if err != nil {
		panic(err)
	}
	return r
}

// Args returns the rule's arguments, unquoted, as iptables would receive
// them on its command line (for -C, -D and -I).
func (r Rule) Args() []string {
	var out []string
	_ = scanTokens(r.text, func(start, end int) { out = append(out, unquote(r.text[start:end])) })
	return out
}

// scanTokens calls fn with the bounds of each space-separated token of s,
// a double-quoted token (with backslash escapes) counting as one.
func scanTokens(s string, fn func(start, end int)) error {
	for i := 0; i < len(s); {
		if s[i] == ' ' {
			i++
			continue
		}
		start := i
		quoted := false
		for i < len(s) && (quoted || s[i] != ' ') {
			switch {
			case s[i] == '\\' && quoted:
				i++
			case s[i] == '"':
				quoted = !quoted
			}
			i++
		}
		if quoted {
			return fmt.Errorf("unterminated quote")
		}
		fn(start, min(i, len(s)))
	}
	return nil
}

// Strings returns the canonical texts of rules.
func Strings(rules []Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.text
	}
	return out
}

// Chain is a chain's name and rules, in order.
type Chain struct {
	Name  string
	Rules []Rule
}

// RuleBuilder writes a rule in the canonical order iptables-save prints:
// source, destination, in-interface, protocol, then the matches in the
// order given (comments quoted as the tools quote them), then the target.
// Build it with a literal of its exported fields and the chained methods,
// and finish it with Rule.
type RuleBuilder struct {
	Src, Dst       string
	NotSrc, NotDst bool
	In             string
	NotIn          bool
	Proto          string

	matches []string
	// trailing are the matches ApplyArgs found, written after matches.
	trailing []string
	target   []string
}

// Match appends match arguments ("-m x ...").
func (b *RuleBuilder) Match(args ...string) *RuleBuilder {
	b.matches = append(b.matches, args...)
	return b
}

// Comment appends a comment match.
func (b *RuleBuilder) Comment(text string) *RuleBuilder {
	return b.Match("-m", "comment", "--comment", Quote(text))
}

// DPort appends the protocol match with a destination port.
func (b *RuleBuilder) DPort(port int) *RuleBuilder {
	return b.Match("-m", b.Proto, "--dport", strconv.Itoa(port))
}

// Jump sets the target and its arguments.
func (b *RuleBuilder) Jump(target string, args ...string) *RuleBuilder {
	b.target = append([]string{target}, args...)
	return b
}

// ApplyArgs folds matcher arguments such as "! -s 10.0.0.0/8" or
// "-i veth+" (from the local-traffic detector) into the rule: addresses
// and the interface into their fields, anything else after the matches
// given with Match, whenever they are added.
func (b *RuleBuilder) ApplyArgs(args []string) *RuleBuilder {
	neg := false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "!":
			neg = true
			continue
		case "-s", "--source":
			i++
			b.Src, b.NotSrc = PrefixString(args[i]), neg
		case "-d", "--destination":
			i++
			b.Dst, b.NotDst = PrefixString(args[i]), neg
		case "-i", "--in-interface":
			i++
			b.In, b.NotIn = args[i], neg
		default:
			if neg {
				b.trailing = append(b.trailing, "!")
			}
			b.trailing = append(b.trailing, a)
		}
		neg = false
	}
	return b
}

// Rule returns the rule built.
func (b *RuleBuilder) Rule() Rule {
	var s strings.Builder
	var r Rule
	sep := func() {
		if s.Len() > 0 {
			s.WriteByte(' ')
		}
	}
	add := func(neg bool, flag, v string) {
		if v == "" {
			return
		}
		sep()
		if neg {
			s.WriteString("! ")
		}
		s.WriteString(flag)
		s.WriteByte(' ')
		s.WriteString(v)
	}
	add(b.NotSrc, "-s", b.Src)
	add(b.NotDst, "-d", b.Dst)
	add(b.NotIn, "-i", b.In)
	add(false, "-p", b.Proto)
	prev := ""
	for _, list := range [][]string{b.matches, b.trailing} {
		for _, m := range list {
			sep()
			if prev == "--comment" && r.cmtEnd == 0 {
				r.cmt = uint16(s.Len())
				r.cmtEnd = r.cmt + uint16(len(m))
			}
			s.WriteString(m)
			prev = m
		}
	}
	if len(b.target) > 0 {
		sep()
		s.WriteString("-j ")
		r.tgt = uint16(s.Len())
		r.tgtEnd = r.tgt + uint16(len(b.target[0]))
		for i, a := range b.target {
			if i > 0 {
				s.WriteByte(' ')
			}
			s.WriteString(a)
		}
	}
	if s.Len() > maxRuleLen {
		panic(fmt.Sprintf("iptables: rule of %d bytes", s.Len()))
	}
	r.text = s.String()
	return r
}

// Rebase returns r with its text replaced by text, which must be equal to
// r's (the renderer packs many rules' texts into one string).
func (r Rule) Rebase(text string) Rule {
	if text != r.text {
		panic("iptables: Rebase with a different text")
	}
	r.text = text
	return r
}

// HostPrefix renders an address as iptables-save does (with /32 or /128).
func HostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// PrefixString normalizes an address or CIDR to iptables-save's form.
func PrefixString(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return HostPrefix(a)
	}
	return s
}

// Quote renders a string as iptables-save does: bare when it is only
// letters, digits, '-' and '_', otherwise double-quoted with \ escapes.
func Quote(s string) string {
	bare := s != ""
	for _, c := range s {
		if !(c == '_' || c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
			bare = false
			break
		}
	}
	if bare {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	b.WriteByte('"')
	return b.String()
}

// unquote reverses Quote.
func unquote(s string) string {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return s
	}
	s = s[1 : len(s)-1]
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
