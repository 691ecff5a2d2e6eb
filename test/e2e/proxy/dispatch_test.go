package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestIPTProxyDispatchTree runs real traffic through the dispatch tree:
// with 40 dual-stack Services (a port per protocol) KUBE-SERVICES and
// KUBE-NODEPORTS no longer fit one leaf, and every Service must still
// reach its own backend, from a pod and from a node, in both families, and
// through its NodePort from outside.
func TestIPTProxyDispatchTree(t *testing.T) {
	w := newWorld(t)
	const n = 40
	var svcs []*v1.Service
	for i := 0; i < n; i++ {
		var mutate func(*v1.Service)
		if i%4 == 3 { // enough NodePorts to split KUBE-NODEPORTS as well
			mutate = func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }
		}
		svcs = append(svcs, w.service(t, fmt.Sprintf("tree-%d", i), mutate, w.pods[i%3].Backend()))
	}

	fw.Eventually(t, converge, func(ctx context.Context) error {
		code, body, err := w.d1.Get(ctx, 10249, "/debug/rules")
		if err != nil || code != 200 {
			return fmt.Errorf("/debug/rules: %d %v", code, err)
		}
		if !strings.Contains(body, "-A KUBE-SERVICES -d ") || !strings.Contains(body, "-A KUBE-NODEPORTS -p tcp -j KUBE-SVC-DSP-") {
			return fmt.Errorf("no dispatch tree in the rules yet")
		}
		return nil
	})

	for i, svc := range svcs {
		if i%4 != 0 {
			continue // a sample keeps the test short
		}
		want := names(w.pods[i%3])
		for _, fam := range w.c.IPFamilies() {
			addr := fw.ServiceAddr(svc, fam, 80)
			w.pods[0].WaitForBackends(t, v1.ProtocolTCP, addr, want, converge)
			w.n2.WaitForBackends(t, v1.ProtocolUDP, addr, want, converge)
		}
	}
	for _, i := range []int{3, 19, 39} {
		port := uint16(svcs[i].Spec.Ports[0].NodePort)
		addr := netip.AddrPortFrom(w.n1.IP(w.v4), port)
		w.client.WaitForBackends(t, svcs[i].Spec.Ports[0].Protocol, addr, names(w.pods[i%3]), converge)
	}
}
