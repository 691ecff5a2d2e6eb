// Package proxy holds iptproxy's end-to-end tests: a real kube-apiserver, a
// two-node cluster of network namespaces running bin/iptproxy, and real TCP,
// UDP and SCTP packets.
package proxy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

const (
	echoPort = 8080
	converge = 20 * time.Second
)

// world is the shared cluster: two nodes with iptproxy, three backend pods
// (two on node-1, one on node-2), and an outside client.
type world struct {
	c            *fw.Cluster
	n1, n2       *fw.Node
	pods         []*fw.Pod
	client       *fw.Client
	d1, d2       *fw.Daemon
	v4           v1.IPFamily
	podsByName   []string
	podBackends  []fw.Backend
	externalBase int
}

func newWorld(t *testing.T) *world {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 2, DualStack: true})
	w := &world{c: c, n1: c.Nodes()[0], n2: c.Nodes()[1], v4: v1.IPv4Protocol}
	for i, n := range []*fw.Node{w.n1, w.n1, w.n2} {
		p := n.AddPod(t, []string{"pod-a", "pod-b", "pod-c"}[i])
		p.StartEcho(t, fw.EchoOn(echoPort))
		w.pods = append(w.pods, p)
		w.podsByName = append(w.podsByName, p.Name())
		w.podBackends = append(w.podBackends, p.Backend())
	}
	w.client = c.AddClient(t, "outside")
	// Real nodes have a default gateway; the Service CIDRs must be routable
	// for node-originated packets to reach the nat OUTPUT chain at all.
	for _, n := range []*fw.Node{w.n1, w.n2} {
		for _, cidr := range c.ServiceCIDRs() {
			fam := v1.IPv4Protocol
			if cidr.Addr().Is6() {
				fam = v1.IPv6Protocol
			}
			n.AddRoute(t, cidr, c.Host().IP(fam))
		}
	}
	configure := func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 3 * time.Second}
		cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
	}
	w.d1 = w.n1.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: configure})
	w.d2 = w.n2.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: configure})
	w.d1.WaitHealthy(t, 60*time.Second)
	w.d2.WaitHealthy(t, 60*time.Second)
	return w
}

// service creates a dual-stack Service with one port per protocol and the
// given backends.
func (w *world) service(t *testing.T, name string, mutate func(*v1.Service), backends ...fw.Backend) *v1.Service {
	var ports []v1.ServicePort
	for _, p := range fw.Protocols() {
		ports = append(ports, fw.ServicePort(strings.ToLower(string(p)), p, 80, echoPort))
	}
	svc := fw.NewService("default", name, ports...)
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
	if mutate != nil {
		mutate(svc)
	}
	svc = w.c.CreateService(t, svc)
	if len(backends) > 0 {
		w.c.SetEndpoints(t, svc, backends...)
	}
	return svc
}

func names(pods ...*fw.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name())
	}
	return out
}

func TestIPTProxy(t *testing.T) {
	w := newWorld(t)

	t.Run("ClusterIP from pods and nodes, every protocol, both families", func(t *testing.T) {
		svc := w.service(t, "web", nil, w.podBackends...)
		for _, fam := range w.c.IPFamilies() {
			addr := fw.ServiceAddr(svc, fam, 80)
			for _, proto := range fw.Protocols() {
				// From a pod on node-1, from node-2 itself.
				seen := w.pods[0].WaitForBackends(t, proto, addr, w.podsByName, converge)
				t.Logf("%s %s from pod-a: %v", fam, proto, seen)
				w.n2.WaitForBackends(t, proto, addr, w.podsByName, converge)
			}
		}
	})

	t.Run("pod traffic keeps its source, node traffic is masqueraded to a remote pod", func(t *testing.T) {
		svc := w.service(t, "src", nil, w.pods[2].Backend())
		addr := fw.ServiceAddr(svc, w.v4, 80)
		w.pods[0].WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		r := w.pods[0].MustRequest(t, v1.ProtocolTCP, addr)
		if r.Source.Addr() != w.pods[0].IP(w.v4) {
			t.Errorf("pod-to-Service source seen as %v, want the pod's own %v", r.Source.Addr(), w.pods[0].IP(w.v4))
		}
	})

	t.Run("hairpin: a pod reaching itself through its Service is masqueraded", func(t *testing.T) {
		svc := w.service(t, "hairpin", nil, w.pods[0].Backend())
		addr := fw.ServiceAddr(svc, w.v4, 80)
		w.pods[0].WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[0]), converge)
		r := w.pods[0].MustRequest(t, v1.ProtocolTCP, addr)
		if r.Source.Addr() == w.pods[0].IP(w.v4) {
			t.Errorf("hairpin source %v is the pod itself; want it masqueraded", r.Source.Addr())
		}
	})

	t.Run("no endpoints: connections are refused at once", func(t *testing.T) {
		svc := w.service(t, "empty", nil)
		addr := fw.ServiceAddr(svc, w.v4, 80)
		fw.Eventually(t, converge, func(ctx context.Context) error {
			start := time.Now()
			_, err := w.pods[0].Request(ctx, v1.ProtocolTCP, addr)
			if err == nil || !errors.Is(err, echo.ErrRefused) {
				return errors.New("want connection refused, got " + errString(err))
			}
			if d := time.Since(start); d > time.Second {
				return errors.New("refusal took " + d.String())
			}
			return nil
		})
	})

	t.Run("NodePort: Cluster policy masquerades, Local policy keeps the client address", func(t *testing.T) {
		cluster := w.service(t, "np-cluster", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }, w.pods[2].Backend())
		local := w.service(t, "np-local", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, w.pods[2].Backend())
		np := func(s *v1.Service) uint16 { return uint16(s.Spec.Ports[0].NodePort) }
		// Cluster policy, reached on node-1 whose pods are not backends.
		addr := netip.AddrPortFrom(w.n1.IP(w.v4), np(cluster))
		w.client.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		if r := w.client.MustRequest(t, v1.ProtocolTCP, addr); r.Source.Addr() == w.client.IP(w.v4) {
			t.Errorf("Cluster-policy NodePort kept the client source %v; want masquerade", r.Source.Addr())
		}
		// Local policy on node-2 (which has the backend): source preserved.
		addr = netip.AddrPortFrom(w.n2.IP(w.v4), np(local))
		w.client.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		if r := w.client.MustRequest(t, v1.ProtocolTCP, addr); r.Source.Addr() != w.client.IP(w.v4) {
			t.Errorf("Local-policy NodePort source %v, want the client's %v", r.Source.Addr(), w.client.IP(w.v4))
		}
		// Local policy on node-1 (no local backend): dropped.
		addr = netip.AddrPortFrom(w.n1.IP(w.v4), np(local))
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if r, err := w.client.Request(ctx, v1.ProtocolTCP, addr); err == nil {
			t.Errorf("Local-policy NodePort on a node without endpoints answered: %v", r)
		}
	})

	t.Run("endpoint changes converge", func(t *testing.T) {
		svc := w.service(t, "churn", nil, w.pods[0].Backend())
		addr := fw.ServiceAddr(svc, w.v4, 80)
		w.n2.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[0]), converge)
		start := time.Now()
		w.c.SetEndpoints(t, svc, w.pods[1].Backend())
		fw.Eventually(t, converge, func(ctx context.Context) error {
			r, err := w.n2.Request(ctx, v1.ProtocolTCP, addr)
			if err != nil {
				return err
			}
			if r.Name != w.pods[1].Name() {
				return errors.New("still answered by " + r.Name)
			}
			return nil
		})
		t.Logf("endpoint change converged on a remote node in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("restart keeps established connections", func(t *testing.T) {
		svc := w.service(t, "held", nil, w.pods[2].Backend())
		addr := fw.ServiceAddr(svc, w.v4, 80)
		w.pods[0].WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		conn, err := w.pods[0].Connect(t.Context(), v1.ProtocolTCP, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close() //nolint:errcheck
		if _, err := conn.Request(t.Context()); err != nil {
			t.Fatalf("before restart: %v", err)
		}
		w.d1.Restart(t)
		w.d1.WaitHealthy(t, 60*time.Second)
		if _, err := conn.Request(t.Context()); err != nil {
			t.Fatalf("held connection broke across the restart: %v", err)
		}
	})

	t.Run("flushed nat table is repaired within syncPeriod", func(t *testing.T) {
		svc := w.service(t, "flushed", nil, w.pods[2].Backend())
		addr := fw.ServiceAddr(svc, w.v4, 80)
		w.n1.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		w.n1.Exec(t, "iptables", "-t", "nat", "-F")
		w.n1.Exec(t, "iptables", "-t", "nat", "-X")
		start := time.Now()
		w.n1.WaitForBackends(t, v1.ProtocolTCP, addr, names(w.pods[2]), converge)
		t.Logf("repaired after %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("health, liveness and metrics endpoints", func(t *testing.T) {
		for path, port := range map[string]int{"/healthz": 10256, "/livez": 10256, "/metrics": 10249, "/proxyMode": 10249} {
			code, body, err := w.d1.Get(t.Context(), port, path)
			if err != nil || code != 200 {
				t.Errorf("GET %s: %d %v", path, code, err)
				continue
			}
			switch path {
			case "/healthz":
				if !strings.Contains(body, `"lastUpdated"`) {
					t.Errorf("/healthz body %q lacks lastUpdated", body)
				}
			case "/metrics":
				for _, m := range []string{"kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_sync_proxy_rules_iptables_total"} {
					if !strings.Contains(body, m) {
						t.Errorf("/metrics lacks %s", m)
					}
				}
			case "/proxyMode":
				if strings.TrimSpace(body) != "iptables" {
					t.Errorf("/proxyMode = %q", body)
				}
			}
		}
	})

	t.Run("cleanup leaves no KUBE chain", func(t *testing.T) {
		w.d2.Stop(t)
		w.n2.Exec(t, fw.RequireIPTProxy(t), "--cleanup")
		for _, fam := range w.c.IPFamilies() {
			for _, table := range []string{"nat", "filter", "mangle"} {
				if dump := w.n2.IPTablesSave(t, fam, table); strings.Contains(dump, "KUBE-") {
					t.Errorf("%s %s still has KUBE chains after --cleanup:\n%s", fam, table, dump)
				}
			}
		}
	})
}

func errString(err error) string {
	if err == nil {
		return "success"
	}
	return err.Error()
}
