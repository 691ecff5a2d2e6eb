package ruleset

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		name string
		rule string
		want *Spec
	}{
		{
			name: "kube-proxy service rule",
			rule: `-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O`,
			want: &Spec{
				Base: []Option{{Name: "-p", Values: []string{"tcp"}}, {Name: "-d", Values: []string{"172.30.0.41"}}},
				Matches: []Match{
					{Module: "comment", Options: []Option{{Name: "--comment", Values: []string{"ns1/svc1:p80 cluster IP"}}}},
					{Module: "tcp", Options: []Option{{Name: "--dport", Values: []string{"80"}}}},
				},
				Target: "KUBE-SVC-XPGD46QRK7WJZT7O",
			},
		},
		{
			name: "negations, long names and target options",
			rule: `! --source 10.0.0.0/8 -m mark ! --mark 0x4000/0x4000 -j MARK --xor-mark 0x4000`,
			want: &Spec{
				Base:          []Option{{Name: "-s", Negated: true, Values: []string{"10.0.0.0/8"}}},
				Matches:       []Match{{Module: "mark", Options: []Option{{Name: "--mark", Negated: true, Values: []string{"0x4000/0x4000"}}}}},
				Target:        "MARK",
				TargetOptions: []Option{{Name: "--xor-mark", Values: []string{"0x4000"}}},
			},
		},
		{
			name: "implicit protocol match",
			rule: `-p udp --destination-port 53 -g KUBE-X`,
			want: &Spec{
				Base:    []Option{{Name: "-p", Values: []string{"udp"}}},
				Matches: []Match{{Module: "udp", Implicit: true, Options: []Option{{Name: "--dport", Values: []string{"53"}}}}},
				Target:  "KUBE-X",
				Goto:    true,
			},
		},
		{
			name: "options after the target belong to the right extension",
			rule: `-m recent --name KUBE-SEP-X --set -m tcp -p tcp -j DNAT --to-destination [fd00::1]:80`,
			want: &Spec{
				Base: []Option{{Name: "-p", Values: []string{"tcp"}}},
				Matches: []Match{
					{Module: "recent", Options: []Option{{Name: "--name", Values: []string{"KUBE-SEP-X"}}, {Name: "--set"}}},
					{Module: "tcp"},
				},
				Target:        "DNAT",
				TargetOptions: []Option{{Name: "--to-destination", Values: []string{"[fd00::1]:80"}}},
			},
		},
		{
			name: "no target",
			rule: `-m comment --comment "other traffic will be dropped"`,
			want: &Spec{Matches: []Match{{Module: "comment", Options: []Option{{Name: "--comment", Values: []string{"other traffic will be dropped"}}}}}},
		},
		{
			name: "unknown extension accepted generically",
			rule: `-m set --match-set KUBE-X dst,dst -m foo --bar 1 2 ! --baz -j ACCEPT`,
			want: &Spec{
				Matches: []Match{
					{Module: "set", Options: []Option{{Name: "--match-set", Values: []string{"KUBE-X", "dst,dst"}}}},
					{Module: "foo", Options: []Option{{Name: "--bar", Values: []string{"1", "2"}}, {Name: "--baz", Negated: true}}},
				},
				Target: "ACCEPT",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args, err := Tokenize(tc.rule)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseSpec(args)
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			normalize(got)
			normalize(tc.want)
			got.targetIndex, got.targetAfter = 0, 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseSpec(%q)\n got %+v\nwant %+v", tc.rule, got, tc.want)
			}
		})
	}
}

// normalize makes empty slices nil so that specs compare with DeepEqual.
func normalize(s *Spec) {
	if len(s.Base) == 0 {
		s.Base = nil
	}
	if len(s.Matches) == 0 {
		s.Matches = nil
	}
	if len(s.TargetOptions) == 0 {
		s.TargetOptions = nil
	}
	for i := range s.Base {
		if len(s.Base[i].Values) == 0 {
			s.Base[i].Values = nil
		}
	}
	for i := range s.Matches {
		if len(s.Matches[i].Options) == 0 {
			s.Matches[i].Options = nil
		}
		for j := range s.Matches[i].Options {
			if len(s.Matches[i].Options[j].Values) == 0 {
				s.Matches[i].Options[j].Values = nil
			}
		}
	}
	for i := range s.TargetOptions {
		if len(s.TargetOptions[i].Values) == 0 {
			s.TargetOptions[i].Values = nil
		}
	}
}

func TestParseSpecErrors(t *testing.T) {
	tests := []struct {
		name    string
		rule    string
		opts    Options
		wantErr error
		msg     string
	}{
		{name: "stray argument", rule: "-j ACCEPT foo", wantErr: ErrSyntax},
		{name: "missing argument", rule: "-s", wantErr: ErrSyntax},
		{name: "double negation", rule: "! ! -s 1.2.3.4", wantErr: ErrSyntax},
		{name: "trailing negation", rule: "-j ACCEPT !", wantErr: ErrSyntax},
		{name: "comment cannot be negated", rule: `-m comment ! --comment x`, wantErr: ErrSyntax},
		{name: "two targets", rule: "-j ACCEPT -j DROP", wantErr: ErrSyntax},
		{name: "repeated base option", rule: "-s 1.2.3.4 -s 1.2.3.5", wantErr: ErrSyntax},
		{name: "tcp match needs -p tcp", rule: "-m tcp --dport 80", wantErr: ErrSyntax, msg: `only valid with "-p tcp"`},
		{name: "tcp match with negated -p", rule: "! -p tcp -m tcp --dport 80", wantErr: ErrSyntax},
		{name: "bad port", rule: "-p tcp -m tcp --dport http", wantErr: ErrSyntax},
		{name: "bad address", rule: "-d localhost", wantErr: ErrSyntax},
		{name: "IPv6 address in IPv4 ruleset", rule: "-d fd00::1", opts: Options{Family: FamilyIPv4}, wantErr: ErrFamily},
		{name: "IPv4 DNAT in IPv6 ruleset", rule: "-p tcp -j DNAT --to-destination 10.0.0.1:80", opts: Options{Family: FamilyIPv6}, wantErr: ErrFamily},
		{name: "long comment", rule: "-m comment --comment " + strings.Repeat("x", 256), wantErr: ErrSyntax},
		{name: "statistic without probability", rule: "-m statistic --mode random", wantErr: ErrSyntax},
		{name: "probability out of range", rule: "-m statistic --mode random --probability 1.5", wantErr: ErrSyntax},
		{name: "recent without action", rule: "-m recent --name X --seconds 10", wantErr: ErrSyntax},
		{name: "DNAT without destination", rule: "-p tcp -j DNAT", wantErr: ErrSyntax},
		{name: "DNAT with empty port", rule: "-p tcp -j DNAT --to-destination 10.0.0.1:", wantErr: ErrSyntax},
		{name: "MARK with two operations", rule: "-j MARK --or-mark 1 --xor-mark 2", wantErr: ErrSyntax},
		{name: "bad mark", rule: "-m mark --mark zz", wantErr: ErrSyntax},
		{name: "bad ctstate", rule: "-m conntrack --ctstate NEWISH", wantErr: ErrSyntax},
		{name: "bad addrtype", rule: "-m addrtype --dst-type HOME", wantErr: ErrSyntax},
		{name: "unknown module in strict mode", rule: "-m foo --bar 1", opts: Options{Strict: true}, wantErr: ErrSyntax, msg: "unknown match extension"},
		{name: "unknown option of a known module", rule: "-p tcp -m tcp --dprot 80", wantErr: ErrSyntax, msg: "unknown option"},
		{name: "goto a verdict", rule: "-g ACCEPT", wantErr: ErrSyntax},
		{name: "target option without target", rule: "--to-destination 1.2.3.4", wantErr: ErrSyntax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args, err := Tokenize(tc.rule)
			if err != nil {
				t.Fatal(err)
			}
			err = parseSpec(&Spec{}, args, tc.opts)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("parseSpec(%q) error = %v, want %v", tc.rule, err, tc.wantErr)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestParseAddress(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"10.1.2.3", "10.1.2.3/32"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"10.0.0.0/255.255.0.0", "10.0.0.0/16"},
		{"fd00::1", "fd00::1/128"},
		{"fd00::1/64", "fd00::/64"},
		{"::1/128", "::1/128"},
	}
	for _, tc := range tests {
		got, err := ParseAddress(tc.in, FamilyAny)
		if err != nil {
			t.Errorf("ParseAddress(%q): %v", tc.in, err)
			continue
		}
		if got.String() != tc.want {
			t.Errorf("ParseAddress(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "10.0.0.0/255.0.255.0", "host", "fe80::1%eth0", "10.0.0.0/-1"} {
		if _, err := ParseAddress(bad, FamilyAny); err == nil {
			t.Errorf("ParseAddress(%q) succeeded", bad)
		}
	}
}

func TestParseNATRange(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in   string
		want NATRange
	}{
		{"10.0.0.1:80", NATRange{MinAddr: a("10.0.0.1"), MaxAddr: a("10.0.0.1"), MinPort: 80, MaxPort: 80}},
		{"10.0.0.1", NATRange{MinAddr: a("10.0.0.1"), MaxAddr: a("10.0.0.1")}},
		{"[fd00::1]:8080", NATRange{MinAddr: a("fd00::1"), MaxAddr: a("fd00::1"), MinPort: 8080, MaxPort: 8080}},
		{"fd00::1", NATRange{MinAddr: a("fd00::1"), MaxAddr: a("fd00::1")}},
		{"10.0.0.1-10.0.0.9:80-90", NATRange{MinAddr: a("10.0.0.1"), MaxAddr: a("10.0.0.9"), MinPort: 80, MaxPort: 90}},
	}
	for _, tc := range tests {
		got, err := ParseNATRange(tc.in, FamilyAny)
		if err != nil {
			t.Errorf("ParseNATRange(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseNATRange(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "10.0.0.1:", "10.0.0.1:0", "[fd00::1", "[fd00::1]80", "10.0.0.9-10.0.0.1", "10.0.0.1:90-80"} {
		if _, err := ParseNATRange(bad, FamilyAny); err == nil {
			t.Errorf("ParseNATRange(%q) succeeded", bad)
		}
	}
}
