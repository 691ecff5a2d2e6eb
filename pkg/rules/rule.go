package rules

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// rule builds one rule in the canonical order iptables-save prints:
// source, destination, interfaces, protocol, then matches in the order
// given, then the target.
type rule struct {
	src, dst       string
	notSrc, notDst bool
	in             string
	notIn          bool
	proto          string
	matches        []string
	target         string
}

// match appends match arguments ("-m x ...").
func (r *rule) match(args ...string) *rule {
	r.matches = append(r.matches, args...)
	return r
}

// comment appends a comment match with iptables-save's quoting.
func (r *rule) comment(text string) *rule {
	return r.match("-m", "comment", "--comment", quote(text))
}

// dport appends the protocol match with a destination port.
func (r *rule) dport(port int) *rule {
	return r.match("-m", r.proto, "--dport", strconv.Itoa(port))
}

// jump sets the target.
func (r *rule) jump(target string, args ...string) *rule {
	r.target = strings.Join(append([]string{"-j", target}, args...), " ")
	return r
}

// line renders the rule without the "-A CHAIN" prefix.
func (r *rule) line() string {
	var b strings.Builder
	add := func(neg bool, flag, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if neg {
			b.WriteString("! ")
		}
		b.WriteString(flag)
		b.WriteByte(' ')
		b.WriteString(v)
	}
	add(r.notSrc, "-s", r.src)
	add(r.notDst, "-d", r.dst)
	add(r.notIn, "-i", r.in)
	add(false, "-p", r.proto)
	for _, m := range r.matches {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(m)
	}
	if r.target != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.target)
	}
	return b.String()
}

// applyArgs folds matcher arguments such as "! -s 10.0.0.0/8" or
// "-i veth+" (from the local-traffic detector) into the rule's fields.
func (r *rule) applyArgs(args []string) *rule {
	neg := false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "!":
			neg = true
			continue
		case "-s", "--source":
			i++
			r.src, r.notSrc = prefixString(args[i]), neg
		case "-d", "--destination":
			i++
			r.dst, r.notDst = prefixString(args[i]), neg
		case "-i", "--in-interface":
			i++
			r.in, r.notIn = args[i], neg
		default:
			if neg {
				r.matches = append(r.matches, "!")
			}
			r.matches = append(r.matches, a)
		}
		neg = false
	}
	return r
}

// hostPrefix renders an address as iptables-save does (with /32 or /128).
func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// prefixString normalizes an address or CIDR to iptables-save's form.
func prefixString(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return hostPrefix(a)
	}
	return s
}

// Quote renders a string as iptables-save prints it (see quote), for code
// that builds a rule's canonical form outside the renderer.
func Quote(s string) string { return quote(s) }

// quote renders a string as iptables-save does: bare when it is only
// letters, digits, '-' and '_', otherwise double-quoted with \ escapes.
func quote(s string) string {
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

// probability renders 1/n as iptables-save prints the statistic match: the
// kernel keeps it as a 31-bit fixed-point fraction.
// kube-proxy writes 1/n with ten decimals; the kernel rounds that to a
// fraction of 2^31, which is what the tools print back.
func probability(n int) string {
	written, _ := strconv.ParseFloat(fmt.Sprintf("%0.10f", 1.0/float64(n)), 64)
	fixed := math.Round(float64(0x80000000) * written)
	return fmt.Sprintf("%.11f", fixed/float64(0x80000000))
}
