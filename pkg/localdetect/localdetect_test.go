package localdetect

import (
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"
)

func TestResolve(t *testing.T) {
	type want struct {
		ifLocal, ifNotLocal []string // nil: not implemented
	}
	none := want{}
	tests := []struct {
		name      string
		config    Config
		primary   v1.IPFamily
		podCIDRs  []string
		v4, v6    want
		wantLog   string
		needsNode bool
	}{
		{
			name:    "ClusterCIDR IPv4",
			config:  Config{Mode: ModeClusterCIDR, ClusterCIDRs: []string{"10.244.0.0/16"}},
			primary: v1.IPv4Protocol,
			v4:      want{[]string{"-s", "10.244.0.0/16"}, []string{"!", "-s", "10.244.0.0/16"}},
			v6:      none,
		},
		{
			name:    "ClusterCIDR dual-stack, host bits and blanks",
			config:  Config{Mode: ModeClusterCIDR, ClusterCIDRs: []string{"10.1.2.3/8", " fd00:10::/48"}},
			primary: v1.IPv6Protocol,
			v4:      want{[]string{"-s", "10.0.0.0/8"}, []string{"!", "-s", "10.0.0.0/8"}},
			v6:      want{[]string{"-s", "fd00:10::/48"}, []string{"!", "-s", "fd00:10::/48"}},
		},
		{
			name:    "ClusterCIDR without CIDRs",
			config:  Config{Mode: ModeClusterCIDR},
			primary: v1.IPv4Protocol,
			v4:      none,
			v6:      none,
			wantLog: "no cluster CIDR specified for primary IP family",
		},
		{
			name:    "ClusterCIDR missing the primary family",
			config:  Config{Mode: ModeClusterCIDR, ClusterCIDRs: []string{"fd00::/48"}},
			primary: v1.IPv4Protocol,
			v4:      none,
			v6:      want{[]string{"-s", "fd00::/48"}, []string{"!", "-s", "fd00::/48"}},
			wantLog: "no cluster CIDR specified for primary IP family",
		},
		{
			name:      "NodeCIDR uses the Node's podCIDRs",
			config:    Config{Mode: ModeNodeCIDR, ClusterCIDRs: []string{"10.0.0.0/8"}},
			primary:   v1.IPv4Protocol,
			podCIDRs:  []string{"10.244.1.0/24", "fd00:1::/64", "10.244.9.0/24"},
			v4:        want{[]string{"-s", "10.244.1.0/24"}, []string{"!", "-s", "10.244.1.0/24"}},
			v6:        want{[]string{"-s", "fd00:1::/64"}, []string{"!", "-s", "fd00:1::/64"}},
			needsNode: true,
		},
		{
			name:      "NodeCIDR before a PodCIDR is assigned",
			config:    Config{Mode: ModeNodeCIDR},
			primary:   v1.IPv4Protocol,
			v4:        none,
			v6:        none,
			wantLog:   "no PodCIDR defined at node",
			needsNode: true,
		},
		{
			name:    "BridgeInterface",
			config:  Config{Mode: ModeBridgeInterface, BridgeInterface: "cbr0"},
			primary: v1.IPv4Protocol,
			v4:      want{[]string{"-i", "cbr0"}, []string{"!", "-i", "cbr0"}},
			v6:      want{[]string{"-i", "cbr0"}, []string{"!", "-i", "cbr0"}},
		},
		{
			name:    "InterfaceNamePrefix",
			config:  Config{Mode: ModeInterfaceNamePrefix, InterfaceNamePrefix: "veth"},
			primary: v1.IPv4Protocol,
			v4:      want{[]string{"-i", "veth+"}, []string{"!", "-i", "veth+"}},
			v6:      want{[]string{"-i", "veth+"}, []string{"!", "-i", "veth+"}},
		},
		{
			name:    "unknown mode",
			config:  Config{Mode: "Magic", ClusterCIDRs: []string{"10.0.0.0/8"}},
			primary: v1.IPv4Protocol,
			v4:      none,
			v6:      none,
			wantLog: "Defaulting to no-op detect-local",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			got := Resolve(logger, tc.config, tc.primary, tc.podCIDRs)
			for family, w := range map[v1.IPFamily]want{v1.IPv4Protocol: tc.v4, v1.IPv6Protocol: tc.v6} {
				d := got[family]
				if d.Implemented() != (w.ifLocal != nil) {
					t.Errorf("%s: Implemented() = %v, want %v", family, d.Implemented(), w.ifLocal != nil)
				}
				if !slices.Equal(d.IfLocal(), w.ifLocal) || !slices.Equal(d.IfNotLocal(), w.ifNotLocal) {
					t.Errorf("%s: IfLocal() = %q, IfNotLocal() = %q; want %q, %q", family, d.IfLocal(), d.IfNotLocal(), w.ifLocal, w.ifNotLocal)
				}
			}
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if tc.wantLog != "" && !strings.Contains(logs, tc.wantLog) {
				t.Errorf("log does not mention %q:\n%s", tc.wantLog, logs)
			}
			if tc.config.NeedsPodCIDRs() != tc.needsNode {
				t.Errorf("NeedsPodCIDRs() = %v, want %v", tc.config.NeedsPodCIDRs(), tc.needsNode)
			}
		})
	}
}

func TestDetectorArgsAreCopies(t *testing.T) {
	d := ByCIDR("10.0.0.0/8")
	args := d.IfLocal()
	args[0] = "-d"
	if got := d.IfLocal(); got[0] != "-s" {
		t.Errorf("modifying the returned slice changed the detector: %q", got)
	}
	if s := d.String(); s != "-s 10.0.0.0/8" {
		t.Errorf("String() = %q", s)
	}
	if s := NoOp().String(); s != "none" {
		t.Errorf("NoOp().String() = %q", s)
	}
}
