package app

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/iptables/memory"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// TestDebugServices serves /debug/services from a proxier synced into the
// fake and checks the report against the endpoints, and the loopback guard.
func TestDebugServices(t *testing.T) {
	logger, ctx := ktesting.NewTestContext(t)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "172.30.0.10", ClusterIPs: []string{"172.30.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{
			{Addresses: []string{"10.244.1.1"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-a")},
			{Addresses: []string{"10.244.2.1"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-b")},
			{Addresses: []string{"10.244.2.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false)}, NodeName: ptr.To("node-b")},
		},
	}
	cfg := rules.Config{Family: v1.IPv4Protocol, NodeName: "node-a", NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, MasqueradeBit: 14}
	p := proxier.New(logger, proxier.Options{Rules: cfg, IPTables: memory.New(v1.IPv4Protocol)})
	p.OnServiceUpdate(nil, svc)
	p.OnEndpointSliceUpdate(slice, false)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	other := svc.DeepCopy()
	other.Name, other.Labels = "other", map[string]string{proxy.LabelServiceProxyName: "elsewhere"}
	client := fake.NewClientset(svc, slice, other)
	s := metrics.NewServer("127.0.0.1:0", metrics.New())
	sd := &servicesDebug{logger: logger, proxiers: []*proxier.Proxier{p}, configs: map[v1.IPFamily]rules.Config{v1.IPv4Protocol: cfg},
		client: client}
	if err := mountDebug(s, options.NewOptions(), []*proxier.Proxier{p}, sd); err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	get := func(path, remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	tests := []struct {
		name, path, remote string
		code               int
	}{
		{"report", "/debug/services/ns/web?output=json", "127.0.0.1:4000", http.StatusOK},
		{"text", "/debug/services/ns/web", "[::1]:4000", http.StatusOK},
		{"missing Service", "/debug/services/ns/nope", "127.0.0.1:4000", http.StatusNotFound},
		{"Service of another proxy", "/debug/services/ns/other", "127.0.0.1:4000", http.StatusNotFound},
		{"not from loopback", "/debug/services/ns/web", "192.0.2.7:4000", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := get(tc.path, tc.remote)
			if rec.Code != tc.code {
				t.Fatalf("%s: %d, want %d: %s", tc.path, rec.Code, tc.code, rec.Body)
			}
			if tc.code != http.StatusOK || tc.name != "report" {
				return
			}
			var r explain.ServiceReport
			if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
				t.Fatalf("%v: %s", err, rec.Body)
			}
			if len(r.Ports) != 1 || len(r.Ports[0].Endpoints) != 2 || len(r.Ports[0].LeftOut) != 1 {
				t.Fatalf("report %s", rec.Body)
			}
			for _, ep := range r.Ports[0].Endpoints {
				if ep.Probability[0] < 0.4999 || ep.Probability[0] > 0.5001 {
					t.Errorf("%s: p=%v, want 0.5", ep.Address, ep.Probability[0])
				}
			}
			if lo := r.Ports[0].LeftOut[0]; lo.Address != "10.244.2.2:8080" || lo.Reason != "not ready" {
				t.Errorf("left out %+v", lo)
			}
		})
	}
}

// TestProfiling checks that /debug/pprof is served only with
// enableProfiling (kube-proxy's --profiling), and only to loopback clients
// like the other debug endpoints.
func TestProfiling(t *testing.T) {
	tests := []struct {
		name      string
		profiling bool
		remote    string
		code      int
	}{
		{"off by default", false, "127.0.0.1:4000", http.StatusNotFound},
		{"on, from loopback", true, "127.0.0.1:4000", http.StatusOK},
		{"on, from elsewhere", true, "192.0.2.7:4000", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := options.NewOptions()
			o.Config.EnableProfiling = tc.profiling
			s := metrics.NewServer("127.0.0.1:0", metrics.New())
			if err := mountDebug(s, o, nil, nil); err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/debug/pprof/heap?debug=1", nil)
			req.RemoteAddr = tc.remote
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.code {
				t.Fatalf("/debug/pprof/heap: %d, want %d: %.200s", rec.Code, tc.code, rec.Body)
			}
			if tc.code == http.StatusOK && !strings.Contains(rec.Body.String(), "heap profile") {
				t.Fatalf("not a heap profile: %.200s", rec.Body)
			}
		})
	}
}
