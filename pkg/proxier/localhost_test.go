package proxier_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// TestLocalhostNodePorts traces where packets to 127.0.0.1 go, with
// localhost NodePorts on and off, as kube-proxy decides it: the node itself
// reaches NodePorts on 127.0.0.1 only when they are on (and only on IPv4);
// another host's packets to a port bound to 127.0.0.1 on the node (possible
// once route_localnet is set) are dropped by the anti-martian rule, which
// exists only when localhost NodePorts are on.
func TestLocalhostNodePorts(t *testing.T) {
	const nodePort = 30080
	loopback := netip.MustParseAddr("127.0.0.1")
	remote := netip.MustParseAddr("198.51.100.7")
	tests := []struct {
		name      string
		localhost bool
		pkt       trace.Packet
		// want is the DNAT target, "DROP", or "" for delivered untouched.
		want string
	}{
		{"on: node to 127.0.0.1:NodePort is DNATed", true,
			trace.Packet{Protocol: "tcp", Src: loopback, Dst: loopback, DstPort: nodePort, Local: true}, "10.1.0.1:8080"},
		{"off: node to 127.0.0.1:NodePort is left alone", false,
			trace.Packet{Protocol: "tcp", Src: loopback, Dst: loopback, DstPort: nodePort, Local: true}, ""},
		{"on: another host to 127.0.0.1:22 is dropped (anti-martian)", true,
			trace.Packet{Protocol: "tcp", Src: remote, SrcPort: 40000, Dst: loopback, DstPort: 22, InInterface: "eth0"}, "DROP"},
		{"on: the node's own loopback traffic is untouched", true,
			trace.Packet{Protocol: "tcp", Src: loopback, Dst: loopback, DstPort: 22, Local: true}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			fake := memory.New(v1.IPv4Protocol)
			p := proxier.New(logger, proxier.Options{
				Rules: rules.Config{Family: v1.IPv4Protocol, NodeName: "node-a", MasqueradeBit: 14,
					NodeIPs: []netip.Addr{netip.MustParseAddr(hostileNodeIP)}, LocalhostNodePorts: tc.localhost},
				SyncPeriod: time.Minute,
				IPTables:   fake,
			})
			p.OnServiceUpdate(nil, hSvc("ns", "np", "172.30.0.20", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = nodePort
			}))
			p.OnEndpointSliceUpdate(hSlice("ns", "np", "np-1", 8080, "10.1.0.1"), false)
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
			if err := p.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			res, err := fake.Trace(trace.Node{LocalAddrs: []netip.Addr{netip.MustParseAddr(hostileNodeIP)}}, tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range res.Outcomes {
				got := ""
				switch {
				case o.Verdict != trace.Accept:
					got = string(o.Verdict)
				case o.DNAT.IsValid():
					got = o.DNAT.String()
				}
				if got != tc.want {
					t.Errorf("%v: got %q, want %q\n%s", tc.pkt, got, tc.want, res.Summary())
				}
			}
			// kube-proxy creates KUBE-FIREWALL and its jumps in every case;
			// the anti-martian rule in it only with localhost NodePorts.
			hasFirewall := len(fake.Ruleset().ChainRules("filter", rules.ChainKubeletFirewall)) > 0
			if hasFirewall != tc.localhost {
				t.Errorf("anti-martian rule in KUBE-FIREWALL = %v with localhost NodePorts %v", hasFirewall, tc.localhost)
			}
		})
	}
}
