package trace

import (
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
)

// kubeProxyRules is a payload in the shape kube-proxy (iptables mode)
// writes, with the jumps from the built-in chains that it installs
// separately. The node is 192.168.0.2, the cluster CIDR 10.0.0.0/8.
//
//   - ns1/svc1: ClusterIP 172.30.0.41:80, three endpoints.
//   - ns2/svc2: ClusterIP 172.30.0.42:80, external IP 192.168.99.22,
//     load balancer 1.2.3.4 with source ranges 203.0.113.0/25, NodePort
//     3001, externalTrafficPolicy Local; endpoints 10.180.0.2 (on this
//     node) and 10.180.1.2; health check node port 30000.
//   - ns3/svc3: ClusterIP 172.30.0.43:80, NodePort 3003, one endpoint.
//   - ns4/svc4: ClusterIP 172.30.0.46:80, NodePort 3004, no endpoints.
//   - ns5/svc5: ClusterIP 172.30.0.45:80, ClientIP affinity, two endpoints.
const kubeProxyRules = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3004 -j REJECT
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns2/svc2:p80 traffic not accepted by KUBE-FW-GNZ" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-GNZ - [0:0]
:KUBE-EXT-SVC3 - [0:0]
:KUBE-FW-GNZ - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-GNZLOCAL - [0:0]
:KUBE-SEP-GNZREMOTE - [0:0]
:KUBE-SEP-SVC1A - [0:0]
:KUBE-SEP-SVC1B - [0:0]
:KUBE-SEP-SVC1C - [0:0]
:KUBE-SEP-SVC3A - [0:0]
:KUBE-SEP-SVC5A - [0:0]
:KUBE-SEP-SVC5B - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-GNZ - [0:0]
:KUBE-SVC-SVC1 - [0:0]
:KUBE-SVC-SVC3 - [0:0]
:KUBE-SVC-SVC5 - [0:0]
:KUBE-SVL-GNZ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-EXT-GNZ -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZ
-A KUBE-EXT-GNZ -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZ -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZ
-A KUBE-EXT-GNZ -j KUBE-SVL-GNZ
-A KUBE-EXT-SVC3 -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-SVC3 -j KUBE-SVC-SVC3
-A KUBE-FW-GNZ -m comment --comment "ns2/svc2:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-GNZ
-A KUBE-FW-GNZ -m comment --comment "other traffic to ns2/svc2:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZ
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-SVC3
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-GNZLOCAL -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-GNZLOCAL -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-GNZREMOTE -m comment --comment ns2/svc2:p80 -s 10.180.1.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-GNZREMOTE -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.1.2:80
-A KUBE-SEP-SVC1A -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC1A -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-SVC1B -m comment --comment ns1/svc1:p80 -s 10.180.1.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC1B -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.1.1:80
-A KUBE-SEP-SVC1C -m comment --comment ns1/svc1:p80 -s 10.180.2.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC1C -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.2.1:80
-A KUBE-SEP-SVC3A -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC3A -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-SVC5A -m comment --comment ns5/svc5:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC5A -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-SVC5A --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-SVC5B -m comment --comment ns5/svc5:p80 -s 10.180.1.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-SVC5B -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-SVC5B --set -m tcp -p tcp -j DNAT --to-destination 10.180.1.5:80
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-SVC1
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZ
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZ
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-FW-GNZ
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-SVC3
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-SVC5
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-GNZ -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZ -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-GNZLOCAL
-A KUBE-SVC-GNZ -m comment --comment "ns2/svc2:p80 -> 10.180.1.2:80" -j KUBE-SEP-GNZREMOTE
-A KUBE-SVC-SVC1 -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-SVC1 -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-SVC1A
-A KUBE-SVC-SVC1 -m comment --comment "ns1/svc1:p80 -> 10.180.1.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SVC1B
-A KUBE-SVC-SVC1 -m comment --comment "ns1/svc1:p80 -> 10.180.2.1:80" -j KUBE-SEP-SVC1C
-A KUBE-SVC-SVC3 -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-SVC3 -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-SVC3A
-A KUBE-SVC-SVC5 -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-SVC5 -m comment --comment "ns5/svc5:p80 -> 10.180.0.5:80" -m recent --name KUBE-SEP-SVC5A --rcheck --seconds 10800 --reap -j KUBE-SEP-SVC5A
-A KUBE-SVC-SVC5 -m comment --comment "ns5/svc5:p80 -> 10.180.1.5:80" -m recent --name KUBE-SEP-SVC5B --rcheck --seconds 10800 --reap -j KUBE-SEP-SVC5B
-A KUBE-SVC-SVC5 -m comment --comment "ns5/svc5:p80 -> 10.180.0.5:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SVC5A
-A KUBE-SVC-SVC5 -m comment --comment "ns5/svc5:p80 -> 10.180.1.5:80" -j KUBE-SEP-SVC5B
-A KUBE-SVL-GNZ -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-GNZLOCAL
COMMIT
`

var (
	node     = Node{LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	nodeIP   = netip.MustParseAddr("192.168.0.2")
	pod      = netip.MustParseAddr("10.0.0.2")
	outside  = netip.MustParseAddr("198.51.100.7")
	allowed  = netip.MustParseAddr("203.0.113.10")
	loopback = netip.MustParseAddr("127.0.0.1")
)

func loadRules(t *testing.T, payload string) *ruleset.Ruleset {
	t.Helper()
	rs := ruleset.New(ruleset.Options{Strict: true, Family: ruleset.FamilyIPv4})
	if err := rs.Restore([]byte(payload), true); err != nil {
		t.Fatalf("restore: %v", err)
	}
	return rs
}

// mustTrace traces pkt and checks what must hold for every result.
func mustTrace(t *testing.T, rs *ruleset.Ruleset, n Node, pkt Packet, opts Options) *Result {
	t.Helper()
	r, err := TraceWithOptions(rs, n, pkt, opts)
	if err != nil {
		t.Fatalf("Trace(%s): %v", pkt, err)
	}
	sum := 0.0
	for _, o := range r.Outcomes {
		sum += o.Probability
		if o.Probability <= 0 {
			t.Errorf("outcome with probability %v", o.Probability)
		}
		if len(o.Steps) == 0 {
			t.Errorf("outcome without steps")
		}
		if (o.Verdict == Accept) != (o.Delivery != DeliveryNone) {
			t.Errorf("outcome %s has delivery %q", o.Verdict, o.Delivery)
		}
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("outcome probabilities sum to %v, want 1:\n%s", sum, r)
	}
	return r
}

func tcp(src, dst netip.Addr, port int) Packet {
	return Packet{Protocol: "tcp", Src: src, Dst: dst, DstPort: port, SrcPort: 40000, InInterface: "eth0"}
}

func local(src, dst netip.Addr, port int) Packet {
	return Packet{Protocol: "tcp", Src: src, Dst: dst, DstPort: port, SrcPort: 40000, Local: true}
}

func fromPod(src netip.Addr, dst netip.Addr, port int) Packet {
	p := tcp(src, dst, port)
	p.InInterface = "cni0"
	return p
}

func TestTraceKubeProxyRules(t *testing.T) {
	rs := loadRules(t, kubeProxyRules)
	third := 1.0 / 3
	tests := []struct {
		name string
		pkt  Packet
		// want is Result.Destinations.
		want map[string]float64
		// masq is the probability that the packet is masqueraded.
		masq float64
		// delivery, if set, is the delivery of every accepted outcome.
		delivery Delivery
	}{
		{
			name:     "pod to ClusterIP is spread over the endpoints, not masqueraded",
			pkt:      fromPod(pod, netip.MustParseAddr("172.30.0.41"), 80),
			want:     map[string]float64{"10.180.0.1:80": third, "10.180.1.1:80": third, "10.180.2.1:80": third},
			delivery: DeliveryForward,
		},
		{
			name:     "ClusterIP from outside the cluster CIDR is masqueraded",
			pkt:      tcp(outside, netip.MustParseAddr("172.30.0.41"), 80),
			want:     map[string]float64{"10.180.0.1:80": third, "10.180.1.1:80": third, "10.180.2.1:80": third},
			masq:     1,
			delivery: DeliveryForward,
		},
		{
			name:     "ClusterIP from the node itself is masqueraded",
			pkt:      local(nodeIP, netip.MustParseAddr("172.30.0.41"), 80),
			want:     map[string]float64{"10.180.0.1:80": third, "10.180.1.1:80": third, "10.180.2.1:80": third},
			masq:     1,
			delivery: DeliveryOutput,
		},
		{
			name: "hairpin: an endpoint reaching itself through the ClusterIP is masqueraded",
			pkt:  fromPod(netip.MustParseAddr("10.180.0.1"), netip.MustParseAddr("172.30.0.41"), 80),
			want: map[string]float64{"10.180.0.1:80": third, "10.180.1.1:80": third, "10.180.2.1:80": third},
			masq: third,
		},
		{
			name:     "other port of a ClusterIP is not translated",
			pkt:      fromPod(pod, netip.MustParseAddr("172.30.0.41"), 81),
			want:     map[string]float64{"172.30.0.41:81": 1},
			delivery: DeliveryForward,
		},
		{
			name: "UDP to a TCP ClusterIP is not translated",
			pkt:  Packet{Protocol: "udp", Src: pod, Dst: netip.MustParseAddr("172.30.0.41"), DstPort: 80, InInterface: "cni0"},
			want: map[string]float64{"172.30.0.41:80": 1},
		},
		{
			name: "no endpoints: ClusterIP is rejected from a pod",
			pkt:  fromPod(pod, netip.MustParseAddr("172.30.0.46"), 80),
			want: map[string]float64{"REJECT": 1},
		},
		{
			name: "no endpoints: ClusterIP is rejected from the node",
			pkt:  local(nodeIP, netip.MustParseAddr("172.30.0.46"), 80),
			want: map[string]float64{"REJECT": 1},
		},
		{
			name: "no endpoints: NodePort is rejected",
			pkt:  tcp(outside, nodeIP, 3004),
			want: map[string]float64{"REJECT": 1},
		},
		{
			name:     "NodePort with cluster policy is masqueraded",
			pkt:      tcp(outside, nodeIP, 3003),
			want:     map[string]float64{"10.180.0.3:80": 1},
			masq:     1,
			delivery: DeliveryForward,
		},
		{
			name:     "NodePort on localhost from the node",
			pkt:      local(loopback, loopback, 3003),
			want:     map[string]float64{"10.180.0.3:80": 1},
			masq:     1,
			delivery: DeliveryOutput,
		},
		{
			name:     "NodePort of the node's own IP from the node",
			pkt:      local(nodeIP, nodeIP, 3003),
			want:     map[string]float64{"10.180.0.3:80": 1},
			masq:     1,
			delivery: DeliveryOutput,
		},
		{
			name:     "NodePort with local policy keeps the client address",
			pkt:      tcp(outside, nodeIP, 3001),
			want:     map[string]float64{"10.180.0.2:80": 1},
			delivery: DeliveryForward,
		},
		{
			name: "NodePort with local policy from a pod uses all endpoints",
			pkt:  fromPod(pod, nodeIP, 3001),
			want: map[string]float64{"10.180.0.2:80": 0.5, "10.180.1.2:80": 0.5},
		},
		{
			name:     "external IP with local policy from the node is masqueraded and uses all endpoints",
			pkt:      local(nodeIP, netip.MustParseAddr("192.168.99.22"), 80),
			want:     map[string]float64{"10.180.0.2:80": 0.5, "10.180.1.2:80": 0.5},
			masq:     1,
			delivery: DeliveryOutput,
		},
		{
			name: "load balancer IP from an allowed source",
			pkt:  tcp(allowed, netip.MustParseAddr("1.2.3.4"), 80),
			want: map[string]float64{"10.180.0.2:80": 1},
		},
		{
			name: "load balancer IP from a source outside loadBalancerSourceRanges is dropped",
			pkt:  tcp(outside, netip.MustParseAddr("1.2.3.4"), 80),
			want: map[string]float64{"DROP": 1},
		},
		{
			name:     "health check node port is accepted locally",
			pkt:      tcp(outside, nodeIP, 30000),
			want:     map[string]float64{"192.168.0.2:30000": 1},
			delivery: DeliveryLocal,
		},
		{
			name: "localnet from outside without DNAT is dropped by KUBE-FIREWALL",
			pkt:  tcp(outside, loopback, 9999),
			want: map[string]float64{"DROP": 1},
		},
		{
			name: "localnet NodePort from outside is DNATed, so KUBE-FIREWALL lets it through",
			pkt:  tcp(outside, loopback, 3003),
			want: map[string]float64{"10.180.0.3:80": 1},
			masq: 1,
		},
		{
			name: "session affinity: a new client is spread",
			pkt:  fromPod(pod, netip.MustParseAddr("172.30.0.45"), 80),
			want: map[string]float64{"10.180.0.5:80": 0.5, "10.180.1.5:80": 0.5},
		},
		{
			name: "session affinity: a known client sticks to its endpoint",
			pkt: func() Packet {
				p := fromPod(pod, netip.MustParseAddr("172.30.0.45"), 80)
				p.Recent = []string{"KUBE-SEP-SVC5B"}
				return p
			}(),
			want: map[string]float64{"10.180.1.5:80": 1},
		},
		{
			name: "session affinity: a client last seen before the timeout is spread again",
			pkt: func() Packet {
				p := fromPod(pod, netip.MustParseAddr("172.30.0.45"), 80)
				p.Recent, p.RecentAge = []string{"KUBE-SEP-SVC5B"}, 10800
				return p
			}(),
			want: map[string]float64{"10.180.0.5:80": 0.5, "10.180.1.5:80": 0.5},
		},
		{
			name:     "unrelated traffic is forwarded untouched",
			pkt:      fromPod(pod, netip.MustParseAddr("10.0.0.3"), 80),
			want:     map[string]float64{"10.0.0.3:80": 1},
			delivery: DeliveryForward,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustTrace(t, rs, node, tc.pkt, Options{})
			got := r.Destinations()
			if !sameDist(got, tc.want) {
				t.Errorf("destinations = %v, want %v\n%s", got, tc.want, r)
			}
			if m := r.MasqueradedProbability(); math.Abs(m-tc.masq) > 1e-6 {
				t.Errorf("masqueraded with probability %v, want %v\n%s", m, tc.masq, r)
			}
			for _, o := range r.Outcomes {
				if tc.delivery != "" && o.Verdict == Accept && o.Delivery != tc.delivery {
					t.Errorf("delivery = %q, want %q", o.Delivery, tc.delivery)
				}
				if o.Masqueraded && o.Mark&0x4000 != 0 {
					t.Errorf("KUBE-POSTROUTING should have cleared the masquerade mark, mark = %#x", o.Mark)
				}
				if o.Verdict == Accept && o.DNAT.IsValid() != (o.Dst != netip.AddrPortFrom(tc.pkt.Dst, uint16(tc.pkt.DstPort))) {
					t.Errorf("DNAT %v inconsistent with destination %v", o.DNAT, o.Dst)
				}
			}
		})
	}
}

func sameDist(got, want map[string]float64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-6 {
			return false
		}
	}
	return true
}

func TestTracePath(t *testing.T) {
	rs := loadRules(t, kubeProxyRules)
	r := mustTrace(t, rs, node, tcp(outside, netip.MustParseAddr("172.30.0.41"), 80), Options{})
	if len(r.Outcomes) != 3 {
		t.Fatalf("%d outcomes, want 3:\n%s", len(r.Outcomes), r)
	}
	// The first outcome takes the first endpoint: the path is, rule by rule,
	// what kube-proxy's rules do.
	o := r.Outcomes[0]
	if o.DNAT != netip.MustParseAddrPort("10.180.0.1:80") {
		t.Fatalf("first outcome DNAT = %v, want the first endpoint", o.DNAT)
	}
	var got []string
	for _, s := range o.Steps {
		got = append(got, s.String()[:strings.Index(s.String()+"    [", "    [")])
	}
	want := []string{
		"nat/PREROUTING #1: jump KUBE-SERVICES",
		"nat/KUBE-SERVICES #1: jump KUBE-SVC-SVC1",
		"nat/KUBE-SVC-SVC1 #1: jump KUBE-MARK-MASQ",
		"nat/KUBE-MARK-MASQ #1: mark 0x0 -> 0x4000",
		"nat/KUBE-MARK-MASQ: return end of chain",
		"nat/KUBE-SVC-SVC1 #2: jump KUBE-SEP-SVC1A (p=0.3333)",
		"nat/KUBE-SEP-SVC1A #2: dnat 172.30.0.41:80 -> 10.180.0.1:80",
		"route 10.180.0.1 is not local: forward",
		"filter/FORWARD #1: jump KUBE-PROXY-FIREWALL",
		"filter/KUBE-PROXY-FIREWALL: return end of chain",
		"filter/FORWARD #2: jump KUBE-FORWARD",
		"filter/KUBE-FORWARD #2: accept",
		"nat/POSTROUTING #1: jump KUBE-POSTROUTING",
		"nat/KUBE-POSTROUTING #2: mark 0x4000 -> 0x0",
		"nat/KUBE-POSTROUTING #3: masquerade",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("path:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s := o.Steps[0]; s.Table != "nat" || s.Chain != "PREROUTING" || s.Rule != 1 || s.Depth != 0 ||
		s.Text != `-m comment --comment "kubernetes service portals" -j KUBE-SERVICES` {
		t.Errorf("first step = %+v", s)
	}
	if s := o.Steps[2]; s.Depth != 2 {
		t.Errorf("depth of a rule two jumps deep = %d", s.Depth)
	}
	// The paths that skip the first endpoint say so.
	if s := r.Outcomes[1].Steps[5]; s.Action != ActionSkip || math.Abs(s.Branch-2.0/3) > 1e-6 {
		t.Errorf("second outcome step 6 = %+v, want the skipped branch", s)
	}
	if !strings.Contains(r.String(), "outcome 3: p=0.3333 ACCEPT forward to 10.180.2.1:80 (DNAT), masqueraded") {
		t.Errorf("String() =\n%s", r)
	}
	if got, want := r.Summary(), "10.180.0.1:80 0.3333 (masq), 10.180.1.1:80 0.3333 (masq), 10.180.2.1:80 0.3333 (masq)"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

func TestTraceMisses(t *testing.T) {
	rs := loadRules(t, kubeProxyRules)
	r := mustTrace(t, rs, node, fromPod(pod, netip.MustParseAddr("172.30.0.43"), 80), Options{Misses: true})
	var skips []string
	for _, s := range r.Outcomes[0].Steps {
		if s.Action == ActionSkip && s.Chain == "KUBE-SERVICES" && s.Table == "nat" {
			skips = append(skips, s.Detail)
		}
	}
	if len(skips) != 4 || skips[0] != "no match: -d 172.30.0.41" {
		t.Errorf("misses in nat/KUBE-SERVICES = %q", skips)
	}
}

func TestTraceHelpers(t *testing.T) {
	rs := loadRules(t, kubeProxyRules)
	rejected := mustTrace(t, rs, node, fromPod(pod, netip.MustParseAddr("172.30.0.46"), 80), Options{})
	if !rejected.AllRejected() || rejected.AllDropped() || rejected.AllAccepted() {
		t.Errorf("helpers wrong for a rejected packet: %s", rejected)
	}
	dropped := mustTrace(t, rs, node, tcp(outside, netip.MustParseAddr("1.2.3.4"), 80), Options{})
	if !dropped.AllDropped() || dropped.Verdicts()[Drop] != 1 {
		t.Errorf("helpers wrong for a dropped packet: %s", dropped)
	}
	masq := mustTrace(t, rs, node, tcp(outside, nodeIP, 3003), Options{})
	if !masq.AllMasqueraded() || masq.NoneMasqueraded() || !masq.AllAccepted() {
		t.Errorf("helpers wrong for a masqueraded packet: %s", masq)
	}
	if p := masq.Probability(func(o *Outcome) bool { return o.Delivery == DeliveryForward }); p != 1 {
		t.Errorf("forward probability = %v", p)
	}
	// JSON: zero DNAT is left out, the rest is there.
	b, err := json.Marshal(rejected)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"dnat"`) || !strings.Contains(s, `"verdict":"REJECT"`) || !strings.Contains(s, `"src":"10.0.0.2"`) {
		t.Errorf("JSON = %s", s)
	}
	b, _ = json.Marshal(masq)
	if !strings.Contains(string(b), `"dnat":"10.180.0.3:80"`) {
		t.Errorf("JSON = %s", b)
	}
}

func TestTraceForwardPolicyDrop(t *testing.T) {
	// With FORWARD's policy DROP, masqueraded service traffic still gets
	// through thanks to KUBE-FORWARD's mark rule; unmarked traffic does not.
	rs := loadRules(t, kubeProxyRules)
	if err := rs.Restore([]byte("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"), true); err != nil {
		t.Fatal(err)
	}
	r := mustTrace(t, rs, node, tcp(outside, netip.MustParseAddr("172.30.0.41"), 80), Options{})
	if !r.AllAccepted() {
		t.Errorf("marked traffic not forwarded:\n%s", r)
	}
	r = mustTrace(t, rs, node, fromPod(pod, netip.MustParseAddr("172.30.0.41"), 80), Options{})
	if !r.AllDropped() {
		t.Errorf("unmarked traffic forwarded despite the DROP policy:\n%s", r)
	}
	last := r.Outcomes[0].Steps[len(r.Outcomes[0].Steps)-1]
	if last.Action != ActionPolicy || last.Chain != "FORWARD" || last.Detail != "DROP" {
		t.Errorf("last step = %+v, want the FORWARD policy", last)
	}
}

func TestTraceSemantics(t *testing.T) {
	tests := []struct {
		name    string
		rules   string
		pkt     Packet
		want    map[string]float64
		mark    uint32
		wantErr string
	}{
		{
			name: "goto returns to the caller of the chain",
			rules: `*filter
:A - [0:0]
:B - [0:0]
-A INPUT -j A
-A INPUT -j DROP
-A A -g B
-A A -j ACCEPT
-A B -j RETURN
COMMIT
`,
			pkt:  tcp(outside, nodeIP, 80),
			want: map[string]float64{"DROP": 1},
		},
		{
			name: "RETURN in a built-in chain applies the policy",
			rules: `*filter
:INPUT DROP [0:0]
-A INPUT -j RETURN
-A INPUT -j ACCEPT
COMMIT
`,
			pkt:  tcp(outside, nodeIP, 80),
			want: map[string]float64{"DROP": 1},
		},
		{
			name: "marks: set-xmark, and, or and the mark match",
			rules: `*nat
:M - [0:0]
-A PREROUTING -j MARK --set-xmark 0x10/0xf0
-A PREROUTING -j MARK --or-mark 0x1
-A PREROUTING -j MARK --and-mark 0x11
-A PREROUTING -m mark --mark 0x11 -j M
-A M -p tcp -j DNAT --to-destination 10.9.9.9
COMMIT
`,
			pkt:  tcp(outside, netip.MustParseAddr("10.1.1.1"), 80),
			want: map[string]float64{"10.9.9.9:80": 1},
			mark: 0x11,
		},
		{
			name: "negated statistic and interfaces with wildcards",
			rules: `*filter
-A FORWARD -i eth+ -m statistic --mode random ! --probability 0.25 -j DROP
-A FORWARD ! -i eth+ -j REJECT
COMMIT
`,
			pkt:  tcp(outside, netip.MustParseAddr("10.1.1.1"), 80),
			want: map[string]float64{"DROP": 0.75, "10.1.1.1:80": 0.25},
		},
		{
			name: "multiport, iprange and tcp flags",
			rules: `*filter
-A FORWARD -p tcp -m multiport --dports 22,8000:9000 -m iprange --src-range 198.51.100.1-198.51.100.9 -m tcp --tcp-flags SYN,ACK SYN -j REJECT
COMMIT
`,
			pkt:  tcp(outside, netip.MustParseAddr("10.1.1.1"), 8080),
			want: map[string]float64{"REJECT": 1},
		},
		{
			name: "DNAT in POSTROUTING is refused",
			rules: `*nat
-A POSTROUTING -p tcp -j DNAT --to-destination 10.9.9.9:80
COMMIT
`,
			pkt:     tcp(outside, netip.MustParseAddr("10.1.1.1"), 80),
			wantErr: "not valid in POSTROUTING",
		},
		{
			name: "unsupported match extension is an error",
			rules: `*filter
-A FORWARD -m owner --uid-owner 0 -j DROP
COMMIT
`,
			pkt:     tcp(outside, netip.MustParseAddr("10.1.1.1"), 80),
			wantErr: "owner",
		},
		{
			name: "unsupported match extension after a failed match is not reached",
			rules: `*filter
-A FORWARD -s 1.1.1.1 -m owner --uid-owner 0 -j DROP
COMMIT
`,
			pkt:  tcp(outside, netip.MustParseAddr("10.1.1.1"), 80),
			want: map[string]float64{"10.1.1.1:80": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := loadRules(t, tc.rules)
			if tc.wantErr != "" {
				_, err := Trace(rs, node, tc.pkt)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Trace error = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			r := mustTrace(t, rs, node, tc.pkt, Options{})
			if got := r.Destinations(); !sameDist(got, tc.want) {
				t.Errorf("destinations = %v, want %v\n%s", got, tc.want, r)
			}
			if tc.mark != 0 && r.Outcomes[0].Mark != tc.mark {
				t.Errorf("mark = %#x, want %#x", r.Outcomes[0].Mark, tc.mark)
			}
		})
	}
}

func TestTraceUnknownModule(t *testing.T) {
	// A lenient ruleset (read from a machine) may hold extensions the
	// tracer does not know: tracing through them fails clearly.
	rs, err := ruleset.Parse([]byte(`*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m frobnicate --level 3 -j ACCEPT
COMMIT
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Trace(rs, node, tcp(outside, netip.MustParseAddr("10.1.1.1"), 80))
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "frobnicate") || !strings.Contains(err.Error(), "filter/FORWARD rule 1") {
		t.Errorf("error = %v, want an ErrUnsupported naming the module and the rule", err)
	}
}

func TestTraceIPv6(t *testing.T) {
	rs := ruleset.New(ruleset.Options{Strict: true, Family: ruleset.FamilyIPv6})
	err := rs.Restore([]byte(`*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-V6 - [0:0]
:KUBE-SEP-V6 - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -m tcp -p tcp -d fd00:30::10 --dport 80 -j KUBE-SVC-V6
-A KUBE-SERVICES -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-MARK-MASQ
-A KUBE-SVC-V6 ! -s fd00:10::/64 -j KUBE-MARK-MASQ
-A KUBE-SVC-V6 -j KUBE-SEP-V6
-A KUBE-SEP-V6 -m tcp -p tcp -j DNAT --to-destination [fd00:10::5]:8080
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
COMMIT
`), true)
	if err != nil {
		t.Fatal(err)
	}
	n6 := Node{LocalAddrs: []netip.Addr{netip.MustParseAddr("2001:db8::2")}}
	r := mustTrace(t, rs, n6, Packet{Protocol: "tcp", Src: netip.MustParseAddr("fd00:10::7"), Dst: netip.MustParseAddr("fd00:30::10"), DstPort: 80, InInterface: "cni0"}, Options{})
	if got := r.Destinations(); !sameDist(got, map[string]float64{"[fd00:10::5]:8080": 1}) || r.Outcomes[0].Mark != 0 {
		t.Errorf("IPv6 ClusterIP: %v\n%s", got, r)
	}
	r = mustTrace(t, rs, n6, Packet{Protocol: "tcp", Src: netip.MustParseAddr("2001:db8::9"), Dst: netip.MustParseAddr("2001:db8::2"), DstPort: 22, InInterface: "eth0"}, Options{})
	if o := r.Outcomes[0]; o.Delivery != DeliveryLocal || o.Mark != 0x4000 {
		t.Errorf("IPv6 local delivery: %+v", o)
	}
}

func TestTraceBadPackets(t *testing.T) {
	rs := loadRules(t, kubeProxyRules)
	for _, p := range []Packet{
		{Protocol: "icmp", Src: pod, Dst: nodeIP, DstPort: 1},
		{Protocol: "tcp", Src: pod, Dst: netip.MustParseAddr("fd00::1"), DstPort: 80},
		{Protocol: "tcp", Src: pod, Dst: nodeIP},
		{Protocol: "tcp", Dst: nodeIP, DstPort: 80},
		{Protocol: "tcp", Src: pod, Dst: nodeIP, DstPort: 80, Local: true, InInterface: "eth0"},
	} {
		if _, err := Trace(rs, node, p); err == nil {
			t.Errorf("Trace(%+v) succeeded", p)
		}
	}
}

func BenchmarkTraceKubeProxyRules(b *testing.B) {
	rs := ruleset.New(ruleset.Options{Strict: true, Family: ruleset.FamilyIPv4})
	if err := rs.Restore([]byte(kubeProxyRules), true); err != nil {
		b.Fatal(err)
	}
	pkt := tcp(outside, netip.MustParseAddr("172.30.0.41"), 80)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Trace(rs, node, pkt); err != nil {
			b.Fatal(err)
		}
	}
}
