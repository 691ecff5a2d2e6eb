package explain_test

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// syntheticCluster returns n ClusterIP Services with eps ready endpoints
// each, spread over 10 nodes.
func syntheticCluster(n, eps int) *explain.Objects {
	objs := &explain.Objects{}
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		ip := fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)
		objs.Services = append(objs.Services, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
			Spec: v1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
		})
		s := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		}
		for j := range eps {
			k := i*eps + j
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 64+k/65536, k/256%256, k%256)},
				Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
				NodeName:   ptr.To(fmt.Sprintf("node-%d", k%10)),
			})
		}
		objs.Slices = append(objs.Slices, s)
	}
	return objs
}

// BenchmarkExplain reports what the tools cost at cluster sizes: building
// the offline model (render), reloading a payload on the base chains (what
// trace --rules and /debug/services do), show of the last Service, and one
// trace. Run with -benchtime=1x for the large sizes.
func BenchmarkExplain(b *testing.B) {
	logger := klog.Background().V(100)
	for _, n := range []int{100, 1000, 10000} {
		objs := syntheticCluster(n, 10)
		cfg := testConfig()
		b.Run(fmt.Sprintf("render/services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := explain.Build(b.Context(), logger, objs, cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
		m, err := explain.Build(b.Context(), logger, objs, cfg)
		if err != nil {
			b.Fatal(err)
		}
		payload := m.Payload()
		b.Run(fmt.Sprintf("load-rules/services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := explain.LoadRules(b.Context(), logger, payload, cfg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(payload)), "payload-bytes")
		})
		last := types.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("svc-%d", n-1)}
		b.Run(fmt.Sprintf("show/services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := explain.ShowService([]*explain.Model{m}, last); err != nil {
					b.Fatal(err)
				}
			}
		})
		pkt := trace.Packet{Protocol: "tcp", Src: netip.MustParseAddr("10.0.0.1"), Local: true,
			Dst: m.State.ServicePorts[m.State.ServicePortNames(last)[0]].ClusterIP, DstPort: 80}
		b.Run(fmt.Sprintf("trace/services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := explain.Trace(m.Tables, m.Node, pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
