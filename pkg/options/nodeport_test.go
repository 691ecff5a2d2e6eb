package options

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/localdetect"
)

func TestNodePortAddresses(t *testing.T) {
	dualNode := map[v1.IPFamily]net.IP{
		v1.IPv4Protocol: net.ParseIP("192.168.1.10"),
		v1.IPv6Protocol: net.ParseIP("fd00::10"),
	}
	v4Node := map[v1.IPFamily]net.IP{
		v1.IPv4Protocol: net.ParseIP("192.168.1.10"),
		v1.IPv6Protocol: net.IPv6loopback, // what kube-proxy assumes without an IPv6 node IP
	}
	tests := []struct {
		name        string
		addrs       []string
		nodeIPs     map[v1.IPFamily]net.IP
		wantPrimary bool
		wantV4      string // ForFamily result, comma-separated
		wantV6      string
		wantErr     string
	}{
		{name: "unset", nodeIPs: dualNode, wantV4: "0.0.0.0/0", wantV6: "::/0"},
		{name: "primary dual-stack", addrs: []string{"primary"}, nodeIPs: dualNode, wantPrimary: true,
			wantV4: "192.168.1.10/32", wantV6: "fd00::10/128"},
		{name: "primary on IPv4-only node", addrs: []string{"primary"}, nodeIPs: v4Node, wantPrimary: true,
			wantV4: "192.168.1.10/32", wantV6: "::/0"},
		{name: "primary before node IPs are known", addrs: []string{"primary"}, wantPrimary: true,
			wantV4: "0.0.0.0/0", wantV6: "::/0"},
		{name: "primary and CIDRs", addrs: []string{"10.0.0.0/8", "primary", "fd00:1::/64"}, nodeIPs: dualNode, wantPrimary: true,
			wantV4: "10.0.0.0/8,192.168.1.10/32", wantV6: "fd00:1::/64,fd00::10/128"},
		{name: "localhost", addrs: []string{"localhost"}, nodeIPs: dualNode, wantV4: "127.0.0.0/8", wantV6: "::1/128"},
		{name: "all", addrs: []string{"all", "10.0.0.0/8"}, nodeIPs: dualNode, wantV4: "0.0.0.0/0,10.0.0.0/8", wantV6: "::/0"},
		{name: "IPv4 only list", addrs: []string{"10.1.2.3/16"}, nodeIPs: dualNode, wantV4: "10.1.0.0/16", wantV6: "::/0"},
		{name: "IPv4-mapped CIDR counts as IPv4", addrs: []string{"::ffff:10.0.0.0/104"}, wantV4: "10.0.0.0/8", wantV6: "::/0"},
		{name: "invalid", addrs: []string{"10.0.0.1"}, wantErr: "neither a CIDR nor"},
	}
	join := func(ps []netip.Prefix) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = p.String()
		}
		return strings.Join(s, ",")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := ParseNodePortAddresses(tc.addrs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Primary != tc.wantPrimary {
				t.Errorf("Primary = %v, want %v", n.Primary, tc.wantPrimary)
			}
			if got := join(n.ForFamily(v1.IPv4Protocol, tc.nodeIPs)); got != tc.wantV4 {
				t.Errorf("IPv4 = %s, want %s", got, tc.wantV4)
			}
			if got := join(n.ForFamily(v1.IPv6Protocol, tc.nodeIPs)); got != tc.wantV6 {
				t.Errorf("IPv6 = %s, want %s", got, tc.wantV6)
			}
		})
	}
}

func TestMatchAll(t *testing.T) {
	tests := []struct {
		prefixes []string
		want     bool
	}{
		{[]string{"0.0.0.0/0"}, true},
		{[]string{"10.0.0.0/8", "::/0"}, true},
		{[]string{"10.0.0.0/8"}, false},
		{nil, false},
	}
	for _, tc := range tests {
		var ps []netip.Prefix
		for _, s := range tc.prefixes {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		if got := MatchAll(ps); got != tc.want {
			t.Errorf("MatchAll(%v) = %v, want %v", tc.prefixes, got, tc.want)
		}
	}
}

func TestLocalDetectConfig(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // IPv4 IfLocal, space-separated
	}{
		{name: "cluster CIDR", args: []string{"--cluster-cidr=10.0.0.0/8,fd00::/48"}, want: "-s 10.0.0.0/8"},
		{name: "bridge", args: []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=br0"}, want: "-i br0"},
		{name: "prefix", args: []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"}, want: "-i veth+"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := complete(t, "", tc.args...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if err := r.o.Validate(); err != nil {
				t.Fatal(err)
			}
			cfg := r.o.LocalDetectConfig()
			d := localdetect.Resolve(r.o.Logger, cfg, v1.IPv4Protocol, nil)[v1.IPv4Protocol]
			if got := strings.Join(d.IfLocal(), " "); got != tc.want {
				t.Errorf("IfLocal() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNodeIPs(t *testing.T) {
	ip := net.ParseIP
	tests := []struct {
		name        string
		raw         []net.IP
		bind        string
		wantPrimary v1.IPFamily
		wantV4      string
		wantV6      string
	}{
		{name: "no addresses", bind: "0.0.0.0", wantPrimary: v1.IPv4Protocol, wantV4: "127.0.0.1", wantV6: "::1"},
		{name: "IPv4 node", raw: []net.IP{ip("192.168.1.10")}, bind: "0.0.0.0", wantPrimary: v1.IPv4Protocol, wantV4: "192.168.1.10", wantV6: "::1"},
		{name: "IPv6-primary dual-stack", raw: []net.IP{ip("fd00::10"), ip("192.168.1.10")}, bind: "::", wantPrimary: v1.IPv6Protocol, wantV4: "192.168.1.10", wantV6: "fd00::10"},
		{name: "bind address overrides", raw: []net.IP{ip("fd00::10"), ip("192.168.1.10")}, bind: "10.0.0.7", wantPrimary: v1.IPv4Protocol, wantV4: "10.0.0.7", wantV6: "fd00::10"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			primary, ips := NodeIPs(ktesting.NewLogger(t, ktesting.NewConfig()), tc.raw, tc.bind)
			if primary != tc.wantPrimary || ips[v1.IPv4Protocol].String() != tc.wantV4 || ips[v1.IPv6Protocol].String() != tc.wantV6 {
				t.Errorf("NodeIPs() = %s, %v; want %s, %s/%s", primary, ips, tc.wantPrimary, tc.wantV4, tc.wantV6)
			}
		})
	}
}
