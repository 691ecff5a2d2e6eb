package scale

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Address ranges of the benchmark's endpoints. Each is made local in one
// backend namespace with an AnyIP route ("ip route add local <range> dev
// lo"), so that one echo server answers on every address, and nodes route it
// there.
const (
	// EndpointRange holds the initial endpoints (room for 1,048,576 - a
	// little: 254 per /24).
	EndpointRange = "10.64.0.0/12"
	// FreshRange holds the endpoints the change phases put in; its
	// namespace answers with another name, so a probe knows when a change
	// took effect.
	FreshRange = "10.96.0.0/16"
)

// NthAddr returns the i-th (0-based) host address of prefix, skipping
// addresses whose last byte is 0 or 255 (254 per /24), or an error when
// the prefix has no such address.
func NthAddr(prefix netip.Prefix, i int) (netip.Addr, error) {
	if !prefix.Addr().Is4() || i < 0 {
		return netip.Addr{}, fmt.Errorf("NthAddr(%s, %d): want an IPv4 prefix and i >= 0", prefix, i)
	}
	base := prefix.Masked().Addr().As4()
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v := uint64(b) + uint64(i/254)*256 + uint64(i%254) + 1
	if v > 0xffffffff {
		return netip.Addr{}, fmt.Errorf("NthAddr(%s, %d): beyond the address space", prefix, i)
	}
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if !prefix.Contains(a) {
		return netip.Addr{}, fmt.Errorf("NthAddr(%s, %d): %s is outside the prefix", prefix, i, a)
	}
	return a, nil
}

// Size is a benchmark size: Services x endpoints per Service.
type Size struct {
	Services, Endpoints int
}

// String formats the size as ParseSizes reads it ("1000x10").
func (s Size) String() string { return fmt.Sprintf("%dx%d", s.Services, s.Endpoints) }

// ParseSizes parses a comma-separated list such as "1000x10,10000x10".
func ParseSizes(s string) ([]Size, error) {
	var out []Size
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, m, ok := strings.Cut(strings.ToLower(f), "x")
		if !ok {
			return nil, fmt.Errorf("size %q: want <services>x<endpoints>, for example 1000x10", f)
		}
		sv, err1 := strconv.Atoi(n)
		ep, err2 := strconv.Atoi(m)
		if err1 != nil || err2 != nil || sv < 1 || ep < 1 {
			return nil, fmt.Errorf("size %q: want two positive numbers", f)
		}
		if sv > 60000 {
			return nil, fmt.Errorf("size %q: at most 60000 Services fit the Service CIDR", f)
		}
		if ep > 1000 {
			return nil, fmt.Errorf("size %q: at most 1000 endpoints per Service (one EndpointSlice)", f)
		}
		out = append(out, Size{Services: sv, Endpoints: ep})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes in %q", s)
	}
	return out, nil
}

// ParseList parses a comma-separated list, checking every item against
// allowed.
func ParseList(s string, allowed ...string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == f
		}
		if !ok {
			return nil, fmt.Errorf("%q: want one of %s", f, strings.Join(allowed, ", "))
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list %q", s)
	}
	return out, nil
}
