package rules_test

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	rt "github.com/iptproxy/iptproxy/pkg/proxier/proxiertest"
)

// TestUpdates changes Services and slices one sync after another (partial
// syncs that rewrite only what changed) and checks where packets go after
// each step.
func TestUpdates(t *testing.T) {
	svc := rt.Service("ns/u", "172.30.2.1", rt.NodePort(30200))
	other := rt.Service("ns/o", "172.30.2.2")
	sliceA := rt.Slice("ns/u", "u-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName))
	sliceB := rt.Slice("ns/u", "u-2", tcpPorts(8080), rt.Endpoint(podB, "node-b"))
	otherSlice := rt.Slice("ns/o", "o-1", tcpPorts(9090), rt.Endpoint(podC, "node-c"))
	c := cluster(t, v4, svc, sliceA, other, otherSlice)

	toSvc := fromPod("tcp", "172.30.2.1:80")
	toNodePort := fromOutside("tcp", rt.NodeIP+":30200")
	toOther := fromPod("tcp", "172.30.2.2:80")
	steps := []struct {
		name   string
		apply  []runtime.Object
		delete []runtime.Object
		cases  []tcase
	}{
		{"initial", nil, nil, []tcase{
			{"service", toSvc, onlyA},
			{"other", toOther, rt.Where{podC + ":9090": 1}},
		}},
		{"a second slice", []runtime.Object{sliceB}, nil, []tcase{
			{"service", toSvc, both},
			{"NodePort", toNodePort, bothMasq},
			{"other unchanged", toOther, rt.Where{podC + ":9090": 1}},
		}},
		{"first endpoint terminating", []runtime.Object{rt.Slice("ns/u", "u-1", tcpPorts(8080), rt.Endpoint(podA, rt.NodeName, rt.Terminating(true)))}, nil, []tcase{
			{"service", toSvc, rt.Where{podB + ":8080": 1}},
		}},
		{"ETP Local", []runtime.Object{rt.Service("ns/u", "172.30.2.1", rt.NodePort(30200), rt.ExternalLocal(32200))}, nil, []tcase{
			// The local endpoint is terminating and no other is local:
			// the serving-terminating fallback.
			{"NodePort", toNodePort, onlyA},
			{"service", toSvc, rt.Where{podB + ":8080": 1}},
		}},
		{"slices deleted", nil, []runtime.Object{sliceA, sliceB}, []tcase{
			{"service", toSvc, reject},
			{"NodePort", toNodePort, reject},
			{"other unchanged", toOther, rt.Where{podC + ":9090": 1}},
		}},
		{"endpoints back", []runtime.Object{sliceB}, nil, []tcase{
			{"service", toSvc, rt.Where{podB + ":8080": 1}},
			{"NodePort: no local endpoint", toNodePort, drop},
		}},
		{"port renumbered", []runtime.Object{rt.Service("ns/u", "172.30.2.1", rt.Ports(rt.Port("p", 81, v1.ProtocolTCP, 30201)),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })}, nil, []tcase{
			{"new port", fromPod("tcp", "172.30.2.1:81"), rt.Where{podB + ":8080": 1}},
			{"old port", toSvc, untouched("172.30.2.1:80")},
			{"new NodePort", fromOutside("tcp", rt.NodeIP+":30201"), rt.Where{podB + ":8080 masq": 1}},
			{"old NodePort", toNodePort, untouched(rt.NodeIP + ":30200")},
		}},
		{"service deleted", nil, []runtime.Object{svc}, []tcase{
			{"service", fromPod("tcp", "172.30.2.1:81"), untouched("172.30.2.1:81")},
			{"other unchanged", toOther, rt.Where{podC + ":9090": 1}},
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			c.Apply(st.apply...)
			c.Delete(st.delete...)
			c.Sync()
			check(t, c, st.cases)
		})
	}
}

// TestSameNodePortNumberTCPAndUDP serves one port number over both
// protocols, as DNS does.
func TestSameNodePortNumberTCPAndUDP(t *testing.T) {
	c := cluster(t, v4,
		rt.Service("ns/dns", "172.30.2.10", rt.Ports(rt.Port("dns", 53, v1.ProtocolUDP, 30053), rt.Port("dns-tcp", 53, v1.ProtocolTCP, 30053)),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }),
		rt.Slice("ns/dns", "dns-1", []discovery.EndpointPort{rt.SlicePort("dns", 5353, v1.ProtocolUDP), rt.SlicePort("dns-tcp", 5354, v1.ProtocolTCP)},
			rt.Endpoint(podA, rt.NodeName)),
	)
	check(t, c, []tcase{
		{"udp cluster IP", fromPod("udp", "172.30.2.10:53"), rt.Where{podA + ":5353": 1}},
		{"tcp cluster IP", fromPod("tcp", "172.30.2.10:53"), rt.Where{podA + ":5354": 1}},
		{"udp NodePort", fromOutside("udp", rt.NodeIP+":30053"), rt.Where{podA + ":5353 masq": 1}},
		{"tcp NodePort", fromOutside("tcp", rt.NodeIP+":30053"), rt.Where{podA + ":5354 masq": 1}},
		{"sctp NodePort is untouched", fromOutside("sctp", rt.NodeIP+":30053"), untouched(rt.NodeIP + ":30053")},
	})
}

// TestLargeCluster crosses kube-proxy's large-cluster threshold (1000
// endpoints, when per-endpoint comments are left out): packets still
// spread evenly over every endpoint.
func TestLargeCluster(t *testing.T) {
	const n = 1001
	var eps []discovery.Endpoint
	want := rt.Where{}
	for i := range n {
		ip := fmt.Sprintf("10.245.%d.%d", i/250, i%250+1)
		eps = append(eps, rt.Endpoint(ip, "node-b"))
		want[ip+":8080"] = 1.0 / n
	}
	c := cluster(t, v4, rt.Service("ns/big", "172.30.3.1"), rt.Slice("ns/big", "big-1", tcpPorts(8080), eps...))
	check(t, c, []tcase{{"spread over every endpoint", fromPod("tcp", "172.30.3.1:80"), want}})
}
