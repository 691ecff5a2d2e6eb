package trace

import (
	"math"
	"net/netip"
	"testing"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
)

// FuzzTrace traces arbitrary packets through the kube-proxy-shaped rules:
// the tracer must not fail on a valid packet, and the outcomes must be a
// probability distribution.
func FuzzTrace(f *testing.F) {
	f.Add([]byte{10, 0, 0, 2}, []byte{172, 30, 0, 41}, uint16(80), uint8(0), false, "cni0", uint32(0))
	f.Add([]byte{198, 51, 100, 7}, []byte{192, 168, 0, 2}, uint16(3001), uint8(0), false, "eth0", uint32(0))
	f.Add([]byte{127, 0, 0, 1}, []byte{127, 0, 0, 1}, uint16(3003), uint8(1), true, "", uint32(0x4000))
	f.Add([]byte{203, 0, 113, 10}, []byte{1, 2, 3, 4}, uint16(80), uint8(2), false, "eth1", uint32(0))
	rs := ruleset.New(ruleset.Options{Strict: true, Family: ruleset.FamilyIPv4})
	if err := rs.Restore([]byte(kubeProxyRules), true); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src, dst []byte, port uint16, proto uint8, isLocal bool, iface string, mark uint32) {
		s, ok1 := netip.AddrFromSlice(src)
		d, ok2 := netip.AddrFromSlice(dst)
		if !ok1 || !ok2 || !s.Is4() || !d.Is4() || port == 0 {
			return
		}
		p := Packet{Protocol: []string{"tcp", "udp", "sctp"}[proto%3], Src: s, Dst: d, DstPort: int(port), Mark: mark, Local: isLocal}
		if !isLocal {
			p.InInterface = iface
		}
		r, err := TraceWithOptions(rs, node, p, Options{Misses: proto&4 != 0})
		if err != nil {
			t.Fatalf("Trace(%s): %v", p, err)
		}
		sum := 0.0
		for _, o := range r.Outcomes {
			if o.Probability <= 0 || o.Probability > 1 {
				t.Fatalf("probability %v", o.Probability)
			}
			sum += o.Probability
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("probabilities sum to %v:\n%s", sum, r)
		}
	})
}
