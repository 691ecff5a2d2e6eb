package app

import (
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	rt "github.com/iptproxy/iptproxy/pkg/proxier/proxiertest"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

const (
	podA = "10.244.1.5"
	podB = "10.244.2.5"
	podC = "10.244.3.5"
)

func tcpPorts() []discovery.EndpointPort {
	return []discovery.EndpointPort{rt.SlicePort("p", 8080, v1.ProtocolTCP)}
}

func labelled(s *discovery.EndpointSlice, key string) *discovery.EndpointSlice {
	s.Labels[key] = ""
	return s
}

// TestInformersIgnoreLabelledObjects feeds the proxier from the informers
// the daemon uses, over a fake clientset: EndpointSlices labelled headless
// or service-proxy-name, and Services labelled service-proxy-name, never
// reach the rules.
func TestInformersIgnoreLabelledObjects(t *testing.T) {
	objs := []runtime.Object{
		rt.Service("ns/a", "172.30.0.1"),
		rt.Slice("ns/a", "a-1", tcpPorts(), rt.Endpoint(podA, rt.NodeName)),
		labelled(rt.Slice("ns/a", "a-headless", tcpPorts(), rt.Endpoint(podB, "node-b")), proxy.LabelHeadless),
		labelled(rt.Slice("ns/a", "a-other", tcpPorts(), rt.Endpoint(podC, "node-c")), proxy.LabelServiceProxyName),
		rt.Service("ns/b", "172.30.0.2", rt.Label(proxy.LabelServiceProxyName, "other")),
		rt.Slice("ns/b", "b-1", tcpPorts(), rt.Endpoint(podA, rt.NodeName)),
		rt.Service("ns/c", "172.30.0.3"),
		labelled(rt.Slice("ns/c", "c-headless", tcpPorts(), rt.Endpoint(podB, "node-b")), proxy.LabelHeadless),
	}
	c := rt.NewCluster(t, rt.DefaultConfig(v1.IPv4Protocol), nil)
	startAPIWatch(t, fake.NewClientset(objs...), c.Proxier())
	c.Sync()
	tests := []struct {
		name string
		dst  string
		want rt.Where
	}{
		{"only the unlabelled slice's endpoint", "172.30.0.1:80", rt.Where{podA + ":8080": 1}},
		{"Service of another proxy is untouched", "172.30.0.2:80", rt.Where{"172.30.0.2:80": 1}},
		{"Service with only a headless-labelled slice has no endpoints", "172.30.0.3:80", rt.Where{"REJECT": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.Where(rt.In("cni0", "tcp", "10.244.1.7", tt.dst)); !got.Equal(tt.want) {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestRelistRemovesRules cuts the daemon's watches off while a Service and
// an EndpointSlice are deleted, then ends them with "too old resource
// version": the relists must remove the deleted Service's rules and the
// deleted endpoint, from what the watch kept of them.
func TestRelistRemovesRules(t *testing.T) {
	client := fake.NewClientset(
		rt.Service("ns/a", "172.30.0.1"),
		rt.Slice("ns/a", "a-1", tcpPorts(), rt.Endpoint(podA, rt.NodeName)),
		rt.Slice("ns/a", "a-2", tcpPorts(), rt.Endpoint(podB, "node-b")),
		rt.Service("ns/b", "172.30.0.2"),
		rt.Slice("ns/b", "b-1", tcpPorts(), rt.Endpoint(podC, "node-c")),
	)
	svcWatch, sliceWatch := stallFirstWatch(client, "services"), stallFirstWatch(client, "endpointslices")
	c := rt.NewCluster(t, rt.DefaultConfig(v1.IPv4Protocol), nil)
	startAPIWatch(t, client, c.Proxier())
	c.Sync()
	pkt := func(dst string) trace.Packet { return rt.In("cni0", "tcp", "10.244.1.7", dst) }
	if got, want := c.Where(pkt("172.30.0.1:80")), rt.Even(podA+":8080", podB+":8080"); !got.Equal(want) {
		t.Fatalf("before: ns/a goes to %s, want %s", got, want)
	}
	if got, want := c.Where(pkt("172.30.0.2:80")), (rt.Where{podC + ":8080": 1}); !got.Equal(want) {
		t.Fatalf("before: ns/b goes to %s, want %s", got, want)
	}
	for _, d := range []struct{ resource, name string }{{"endpointslices", "a-2"}, {"services", "b"}, {"endpointslices", "b-1"}} {
		gvr := discovery.SchemeGroupVersion.WithResource(d.resource)
		if d.resource == "services" {
			gvr = v1.SchemeGroupVersion.WithResource(d.resource)
		}
		if err := client.Tracker().Delete(gvr, "ns", d.name); err != nil {
			t.Fatal(err)
		}
	}
	expire(svcWatch)
	expire(sliceWatch)
	tests := []struct {
		name string
		dst  string
		want rt.Where
	}{
		{"the deleted endpoint is gone", "172.30.0.1:80", rt.Where{podA + ":8080": 1}},
		{"the deleted Service is not served", "172.30.0.2:80", rt.Where{"172.30.0.2:80": 1}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, tt := range tests {
		for {
			c.Sync()
			got := c.Where(pkt(tt.dst))
			if got.Equal(tt.want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s goes to %s after the relists, want %s", tt.name, tt.dst, got, tt.want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestNodePortAddressesResolve resolves nodePortAddresses against the
// addresses of a private network namespace, as the daemon does at start,
// and checks where NodePort packets go with the result.
func TestNodePortAddressesResolve(t *testing.T) {
	nodeIP := netip.MustParseAddr(rt.NodeIP)
	tests := []struct {
		name      string
		addrs     []string
		wantAddrs []netip.Addr // nil: every local address
		want      map[string]rt.Where
	}{
		{
			name:      "primary",
			addrs:     []string{"primary"},
			wantAddrs: []netip.Addr{nodeIP},
			want: map[string]rt.Where{
				rt.NodeIP:   rt.Even(podA+":8080 masq", podB+":8080 masq"),
				rt.NodeIP2:  {rt.NodeIP2 + ":30080": 1},
				"127.0.0.1": {"127.0.0.1:30080": 1},
			},
		},
		{
			name:      "a CIDR holding the second address",
			addrs:     []string{"192.168.1.0/24"},
			wantAddrs: []netip.Addr{netip.MustParseAddr(rt.NodeIP2)},
			want: map[string]rt.Where{
				rt.NodeIP:  {rt.NodeIP + ":30080": 1},
				rt.NodeIP2: rt.Even(podA+":8080 masq", podB+":8080 masq"),
			},
		},
		{
			name:      "loopback and a CIDR holding both node addresses",
			addrs:     []string{"127.0.0.0/8", "192.168.0.0/16"},
			wantAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), nodeIP, netip.MustParseAddr(rt.NodeIP2)},
			want: map[string]rt.Where{
				rt.NodeIP:   rt.Even(podA+":8080 masq", podB+":8080 masq"),
				rt.NodeIP2:  rt.Even(podA+":8080 masq", podB+":8080 masq"),
				"127.0.0.1": rt.Even(podA+":8080 masq", podB+":8080 masq"),
			},
		},
		{
			// As kube-proxy: a loopback CIDR turns localhost NodePorts
			// (and the anti-martian rule) on even when it holds no
			// interface address, so no NodePort answers anywhere.
			name:      "a loopback CIDR without an interface address",
			addrs:     []string{"127.0.0.2/32"},
			wantAddrs: []netip.Addr{},
			want: map[string]rt.Where{
				rt.NodeIP:   {rt.NodeIP + ":30080": 1},
				"127.0.0.1": {"127.0.0.1:30080": 1},
				"martian":   {"DROP": 1},
			},
		},
		{
			name:  "only IPv6 CIDRs: every IPv4 address",
			addrs: []string{"fd00::/8"},
			want: map[string]rt.Where{
				rt.NodeIP2:  rt.Even(podA+":8080 masq", podB+":8080 masq"),
				"127.0.0.1": rt.Even(podA+":8080 masq", podB+":8080 masq"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kerneltest.Enter(t)
			for _, args := range [][]string{
				{"link", "set", "lo", "up"},
				{"addr", "add", rt.NodeIP + "/24", "dev", "lo"},
				{"addr", "add", rt.NodeIP2 + "/24", "dev", "lo"},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, out)
				}
			}
			logger, _ := ktesting.NewTestContext(t)
			addrs, matchAll, loopback := nodePortAddresses(logger, expandPrimary(tt.addrs), v1.IPv4Protocol, nodeIP, nil)
			if matchAll != (tt.wantAddrs == nil) || !slices.Equal(addrs, tt.wantAddrs) {
				t.Fatalf("nodePortAddresses(%v) = %v (all: %v), want %v", tt.addrs, addrs, matchAll, tt.wantAddrs)
			}
			cfg := rt.DefaultConfig(v1.IPv4Protocol)
			cfg.NodePortAddresses = addrs
			cfg.LocalhostNodePorts = loopback // --iptables-localhost-nodeports=true
			c := rt.NewCluster(t, cfg, []string{rt.NodeIP2},
				rt.Service("ns/np", "172.30.0.4", rt.NodePort(30080)),
				rt.Slice("ns/np", "np-1", tcpPorts(), rt.Endpoint(podA, rt.NodeName), rt.Endpoint(podB, "node-b")))
			for dst, want := range tt.want {
				var pkt trace.Packet
				switch dst {
				case "127.0.0.1":
					pkt = rt.Local("tcp", "127.0.0.1", dst+":30080")
				case "martian": // the network reaching the node's loopback
					pkt = rt.In("eth0", "tcp", "203.0.113.50", "127.0.0.1:22")
				default:
					pkt = rt.In("eth0", "tcp", "203.0.113.50", dst+":30080")
				}
				if got := c.Where(pkt); !got.Equal(want) {
					t.Errorf("%s: got %s, want %s", pkt, got, want)
				}
			}
		})
	}
}
