package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestIPTProxySmoke runs iptproxy on two nodes of a dual-stack cluster and
// checks that it becomes healthy and that a ClusterIP (from a pod) and a
// NodePort (from an outside client) reach both backends. It skips when
// bin/iptproxy (or $IPTPROXY_BIN) does not exist.
func TestIPTProxySmoke(t *testing.T) {
	framework.RequireIPTProxy(t)
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 2, DualStack: true})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	a := n1.AddPod(t, "web-a")
	b := n2.AddPod(t, "web-b")
	src := n1.AddPod(t, "src")
	for _, p := range []*framework.Pod{a, b} {
		p.StartEcho(t, framework.EchoOn(8080))
	}
	svc := framework.NewService("smoke", "web",
		framework.ServicePort("tcp", v1.ProtocolTCP, 80, 8080),
		framework.ServicePort("udp", v1.ProtocolUDP, 80, 8080))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	svc = c.CreateService(t, svc)
	c.SetEndpoints(t, svc, a.Backend(), b.Backend())

	var daemons []*framework.Daemon
	for _, n := range c.Nodes() {
		daemons = append(daemons, n.StartIPTProxy(t, "--v=2"))
	}
	for _, d := range daemons {
		d.WaitHealthy(t, 60*time.Second)
	}
	want := []string{"web-a", "web-b"}
	for _, family := range c.IPFamilies() {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			src.WaitForBackends(t, proto, framework.ServiceAddr(svc, family, 80), want, 30*time.Second)
		}
	}
	client := c.AddClient(t, "outside")
	for _, family := range c.IPFamilies() {
		addr := netip.AddrPortFrom(n2.IP(family), uint16(svc.Spec.Ports[0].NodePort))
		client.WaitForBackends(t, v1.ProtocolTCP, addr, want, 30*time.Second)
	}
	if rules := n1.IPTablesSave(t, v1.IPv4Protocol, "nat"); !strings.Contains(rules, "KUBE-SERVICES") {
		t.Errorf("no KUBE-SERVICES chain in node-1's nat table:\n%s", rules)
	}
}
