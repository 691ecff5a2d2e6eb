package framework

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

func TestAddressPlan(t *testing.T) {
	cluster4 := netip.MustParsePrefix(ClusterCIDRIPv4)
	cluster6 := netip.MustParsePrefix(ClusterCIDRIPv6)
	node4 := netip.MustParsePrefix(NodeNetworkIPv4)
	node6 := netip.MustParsePrefix(NodeNetworkIPv6)
	ext4 := netip.MustParsePrefix(ExternalCIDRIPv4)
	ext6 := netip.MustParsePrefix(ExternalCIDRIPv6)
	seen := map[netip.Addr]string{}
	add := func(what string, a netip.Addr) {
		if prev, dup := seen[a]; dup {
			t.Errorf("%s and %s share %v", prev, what, a)
		}
		seen[a] = what
	}
	h4, h6 := hostIPs()
	add("host", h4)
	add("host", h6)
	for i := 1; i <= MaxNodes; i++ {
		n4, n6 := nodeIPs(i)
		if !node4.Contains(n4) || !node6.Contains(n6) {
			t.Errorf("node %d IPs %v %v outside the node network", i, n4, n6)
		}
		add("node", n4)
		add("node", n6)
		p4, p6 := podCIDRs(i)
		if !cluster4.Contains(p4.Addr()) || !cluster6.Contains(p6.Addr()) || p4.Overlaps(node4) || p6.Overlaps(node6) {
			t.Errorf("node %d pod CIDRs %v %v not inside the cluster CIDRs", i, p4, p6)
		}
		for _, k := range []int{1, MaxPodsPerNode} {
			a4, a6 := podIPs(i, k)
			if !p4.Contains(a4) || !p6.Contains(a6) {
				t.Errorf("pod %d of node %d: %v %v outside %v %v", k, i, a4, a6, p4, p6)
			}
		}
	}
	for j := 1; j <= MaxClients; j++ {
		c4, c6 := clientIPs(j)
		if !node4.Contains(c4) || !node6.Contains(c6) {
			t.Errorf("client %d outside the node network", j)
		}
		add("client", c4)
		add("client", c6)
	}
	e4, e6 := externalIPs(254)
	if !ext4.Contains(e4) || !ext6.Contains(e6) || ext4.Overlaps(cluster4) || ext6.Overlaps(cluster6) {
		t.Errorf("external IPs %v %v misplaced", e4, e6)
	}
	if a, b := podIPs(1, 1); a.String() != "198.18.129.2" || b.String() != "fd00:198:18:129::2" {
		t.Errorf("pod 1 of node 1 is %v %v", a, b)
	}
}

func TestRenderKubeProxyConfiguration(t *testing.T) {
	cfg := &kpv1alpha1.KubeProxyConfiguration{
		BindAddress: "0.0.0.0",
		ClusterCIDR: "198.18.128.0/17,fd00:198:18:100::/56",
		Mode:        "iptables",
	}
	cfg.ClientConnection.Kubeconfig = "/tmp/kubeconfig"
	cfg.Conntrack.MaxPerCore = ptr.To[int32](0)
	cfg.IPTables.MasqueradeBit = ptr.To[int32](14)
	b, err := RenderKubeProxyConfiguration(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /tmp/kubeconfig
clusterCIDR: 198.18.128.0/17,fd00:198:18:100::/56
conntrack:
  maxPerCore: 0
iptables:
  masqueradeBit: 14
kind: KubeProxyConfiguration
mode: iptables
`
	if string(b) != want {
		t.Errorf("got\n%s\nwant\n%s", b, want)
	}
	var back kpv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(b, &back); err != nil && !strings.Contains(err.Error(), "apiVersion") && !strings.Contains(err.Error(), "kind") {
		t.Errorf("does not parse back: %v", err)
	}
}

func TestNewEndpointSlice(t *testing.T) {
	svc := NewService("ns", "web", ServicePort("http", v1.ProtocolTCP, 80, 8080), v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("dns")})
	svc.UID = "uid-1"
	pod := Backend{
		Name:       "pod-a",
		Addresses:  []netip.Addr{netip.MustParseAddr("198.18.129.2"), netip.MustParseAddr("fd00:198:18:129::2")},
		NodeName:   "node-1",
		Zone:       "zone-a",
		HintZones:  []string{"zone-a"},
		NamedPorts: map[string]int32{"dns": 5353},
	}
	term := Backend{Name: "pod-b", Addresses: []netip.Addr{netip.MustParseAddr("198.18.130.2")}, Terminating: true, NamedPorts: map[string]int32{"dns": 5353}}
	es, err := NewEndpointSlice(svc, v1.IPv4Protocol, pod, term)
	if err != nil {
		t.Fatal(err)
	}
	if es.Name != "web-ipv4" || es.Labels["kubernetes.io/service-name"] != "web" || len(es.OwnerReferences) != 1 {
		t.Errorf("metadata: %+v", es.ObjectMeta)
	}
	if len(es.Ports) != 2 || *es.Ports[0].Port != 8080 || *es.Ports[1].Port != 5353 || *es.Ports[1].Protocol != v1.ProtocolUDP {
		t.Errorf("ports: %+v", es.Ports)
	}
	if len(es.Endpoints) != 2 {
		t.Fatalf("endpoints: %+v", es.Endpoints)
	}
	a, b := es.Endpoints[0], es.Endpoints[1]
	if a.Addresses[0] != "198.18.129.2" || *a.NodeName != "node-1" || *a.Zone != "zone-a" || a.Hints.ForZones[0].Name != "zone-a" || !*a.Conditions.Ready || !*a.Conditions.Serving || *a.Conditions.Terminating {
		t.Errorf("endpoint a: %+v", a)
	}
	if *b.Conditions.Ready || !*b.Conditions.Serving || !*b.Conditions.Terminating {
		t.Errorf("terminating endpoint b conditions: %+v", b.Conditions)
	}
	es6, err := NewEndpointSlice(svc, v1.IPv6Protocol, pod, term)
	if err != nil {
		t.Fatal(err)
	}
	if len(es6.Endpoints) != 1 || es6.Endpoints[0].Addresses[0] != "fd00:198:18:129::2" {
		t.Errorf("IPv6 slice endpoints: %+v", es6.Endpoints)
	}
	notReady := Backend{Addresses: pod.Addresses, NotReady: true, NamedPorts: pod.NamedPorts}.conditions()
	if *notReady.Ready || *notReady.Serving || *notReady.Terminating {
		t.Errorf("not ready: %+v", notReady)
	}
	if _, err := NewEndpointSlice(svc, v1.IPv4Protocol, Backend{Name: "x", Addresses: pod.Addresses}); err == nil {
		t.Error("missing named port not reported")
	}
}

func TestServiceAddr(t *testing.T) {
	svc := &v1.Service{Spec: v1.ServiceSpec{ClusterIPs: []string{"198.19.0.10", "fd00:198:19::a"}}}
	if got := ServiceAddr(svc, v1.IPv6Protocol, 80); got.String() != "[fd00:198:19::a]:80" {
		t.Errorf("got %v", got)
	}
	if got := ServiceAddr(&v1.Service{}, v1.IPv4Protocol, 80); got.IsValid() {
		t.Errorf("got %v for no cluster IP", got)
	}
}
