package proxy

import (
	"bufio"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

const localhostNodePortsMetric = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total"

// TestLocalhostNodePortsCounted checks kube-proxy's nfacct-backed metric:
// connections to a NodePort on 127.0.0.1 are counted, connections to the
// node IP are not.
func TestLocalhostNodePortsCounted(t *testing.T) {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 1})
	n := c.Nodes()[0]
	pod := n.AddPod(t, "pod-a")
	pod.StartEcho(t, fw.EchoOn(echoPort))
	svc := fw.NewService("default", "np", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc = c.CreateService(t, svc)
	c.SetEndpoints(t, svc, pod.Backend())
	d := n.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 3 * time.Second}
	}})
	d.WaitHealthy(t, 60*time.Second)

	counted := func() float64 {
		t.Helper()
		code, body, err := d.Get(t.Context(), 10249, "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("GET /metrics: %d %v", code, err)
		}
		sc := bufio.NewScanner(strings.NewReader(body))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), localhostNodePortsMetric+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("%s value %q: %v", localhostNodePortsMetric, v, err)
				}
				return f
			}
		}
		t.Fatalf("/metrics has no %s (is nfacct available?)\n%s", localhostNodePortsMetric, d.Log())
		return 0
	}
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	byNodeIP := netip.AddrPortFrom(n.IP(v1.IPv4Protocol), nodePort)
	n.WaitForBackends(t, v1.ProtocolTCP, byNodeIP, []string{"pod-a"}, converge)
	before := counted()
	for range 3 {
		n.MustRequest(t, v1.ProtocolTCP, byNodeIP)
	}
	if got := counted(); got != before {
		t.Errorf("requests to the node IP changed %s from %v to %v", localhostNodePortsMetric, before, got)
	}
	localhost := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), nodePort)
	for range 3 {
		if r := n.MustRequest(t, v1.ProtocolTCP, localhost); r.Name != "pod-a" {
			t.Errorf("localhost NodePort reached %q, want pod-a", r.Name)
		}
	}
	// Each connection's packets go through nat only once: one per connection.
	if got := counted(); got != before+3 {
		t.Errorf("%s = %v after 3 localhost NodePort connections, want %v", localhostNodePortsMetric, got, before+3)
	}
}
