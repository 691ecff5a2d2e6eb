// Command demo shows iptproxy at work in a throw-away cluster made of network
// namespaces: it starts etcd and kube-apiserver, two nodes, iptproxy on each
// node, a Service with three backend pods, and sends requests through the
// Service to show which backend answered. hack/demo.sh builds and runs it
// (as root).
//
//	demo [--keep] [--proxy iptproxy|kube-proxy] [--requests 300]
//
// With --keep it keeps everything running and prints how to reach it until
// Ctrl-C. Everything is removed on exit, also on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

func main() {
	keep := flag.Bool("keep", false, "keep the cluster running until Ctrl-C and print how to reach it")
	proxy := flag.String("proxy", "iptproxy", "proxy to run on the nodes: iptproxy or kube-proxy (upstream, for comparison)")
	requests := flag.Int("requests", 300, "number of requests to send through the Service (each way)")
	flag.Parse()
	if *proxy != "iptproxy" && *proxy != "kube-proxy" {
		fmt.Fprintf(os.Stderr, "unknown --proxy %q\n", *proxy)
		os.Exit(2)
	}

	s := framework.NewSession("demo", os.Stdout)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var waiting atomic.Bool // --keep: set while waiting for Ctrl-C
	stop := make(chan struct{})
	go func() {
		sig := <-sigs
		// A second Ctrl-C kills the demo at once (the next run, or
		// hack/e2e-cleanup.sh, removes what is left).
		signal.Reset(syscall.SIGINT, syscall.SIGTERM)
		if waiting.Load() {
			close(stop)
			return
		}
		fmt.Printf("\n%s: cleaning up (Ctrl-C again to abort)...\n", sig)
		s.Close()
		fmt.Println("cleaned up")
		os.Exit(130)
	}()

	run(s, *proxy, *requests, *keep)
	if *keep && !s.Failed() {
		waiting.Store(true)
		<-stop
	}
	fmt.Println("\ncleaning up...")
	s.Close()
	if s.Failed() {
		fmt.Println("cleaned up; the demo FAILED (see the errors above)")
		os.Exit(1)
	}
	fmt.Println("cleaned up")
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

// run builds the cluster and sends the requests; with --keep, printHowTo
// follows.
func run(s *framework.Session, proxy string, requests int, keep bool) {
	step("starting etcd, kube-apiserver and two nodes (dual-stack)")
	c := framework.NewCluster(s, framework.ClusterOptions{Nodes: 2, DualStack: true})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	for _, n := range c.Nodes() {
		fmt.Printf("    %-8s netns %-26s IPs %v, pod CIDRs %v, zone %s\n", n.Name(), n.NetNS.Name(), n.IPs(), n.PodCIDRs(), n.Zone())
	}

	step("creating three backend pods and a client pod")
	backends := []*framework.Pod{n1.AddPod(s, "web-1"), n2.AddPod(s, "web-2"), n2.AddPod(s, "web-3")}
	client := n1.AddPod(s, "client")
	for _, p := range backends {
		p.StartEcho(s, framework.EchoOptions{TCP: []int{8080}, UDP: []int{8080}})
		fmt.Printf("    %-8s on %s, netns %-26s IPs %v, echo server on TCP and UDP 8080\n", p.Name(), p.Node().Name(), p.NetNS.Name(), p.IPs())
	}
	fmt.Printf("    %-8s on %s, netns %-26s IPs %v\n", client.Name(), client.Node().Name(), client.NetNS.Name(), client.IPs())

	step("creating Service demo/web (NodePort, dual-stack) and its EndpointSlices")
	svc := framework.NewService("demo", "web",
		framework.ServicePort("tcp", v1.ProtocolTCP, 80, 8080),
		framework.ServicePort("udp", v1.ProtocolUDP, 80, 8080))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
	svc = c.CreateService(s, svc)
	var eps []framework.Backend
	for _, p := range backends {
		eps = append(eps, p.Backend())
	}
	c.SetEndpoints(s, svc, eps...)
	nodePort := svc.Spec.Ports[0].NodePort
	fmt.Printf("    cluster IPs %v, port 80 -> 8080, node port %d\n", svc.Spec.ClusterIPs, nodePort)

	step("starting %s on each node", proxy)
	var daemons []*framework.Daemon
	for _, n := range c.Nodes() {
		var d *framework.Daemon
		if proxy == "kube-proxy" {
			d = n.StartKubeProxy(s, "--v=2")
		} else {
			d = n.StartIPTProxy(s, "--v=2")
		}
		daemons = append(daemons, d)
		fmt.Printf("    %s on %s (pid %d), config %s\n", d.Name(), n.Name(), d.Process().PID(), d.ConfigPath())
	}
	for _, d := range daemons {
		d.WaitHealthy(s, 60*time.Second)
	}
	names := []string{"web-1", "web-2", "web-3"}
	v4 := framework.ServiceAddr(svc, v1.IPv4Protocol, 80)
	client.WaitForBackends(s, v1.ProtocolTCP, v4, names, 60*time.Second)

	step("sending %d TCP requests from pod client to %s", requests, v4)
	sendRequests(s, client.NS, v1.ProtocolTCP, v4, requests, names)
	if v6 := framework.ServiceAddr(svc, v1.IPv6Protocol, 80); v6.IsValid() {
		client.WaitForBackends(s, v1.ProtocolUDP, v6, names, 30*time.Second)
		step("sending %d UDP requests from pod client to %s", requests, v6)
		sendRequests(s, client.NS, v1.ProtocolUDP, v6, requests, names)
	}
	outside := c.AddClient(s, "outside")
	np := netip.AddrPortFrom(n2.IP(v1.IPv4Protocol), uint16(nodePort))
	outside.WaitForBackends(s, v1.ProtocolTCP, np, names, 60*time.Second)
	step("sending %d TCP requests from outside client (%v, not a node) to node port %s", requests, outside.IP(v1.IPv4Protocol), np)
	fmt.Println("    (traffic from outside the cluster CIDR is masqueraded: backends see an address of node-2)")
	sendRequests(s, outside.NS, v1.ProtocolTCP, np, requests, names)

	// show and trace come with iptproxy; they read kube-proxy's rules too.
	bin := framework.RequireIPTProxy(s)
	showService(s, n1, bin, daemons[0].ConfigPath())
	traceOne(s, n1, bin, client, v4)

	step("the raw rules behind it: what %s wrote for demo/web on node-1", proxy)
	fmt.Println("    (the chains of the drawing above, as iptables-save prints them; each rule's comment names the Service)")
	fmt.Printf("    $ ip netns exec %s iptables-save -t nat | grep KUBE | grep demo/web\n", n1.NetNS.Name())
	for _, l := range strings.Split(n1.IPTablesSave(s, v1.IPv4Protocol, "nat"), "\n") {
		if strings.Contains(l, "KUBE") && strings.Contains(l, "demo/web") {
			fmt.Println("    " + l)
		}
	}

	if !keep {
		return
	}
	printHowTo(c, svc, client, outside, daemons)
}

// sendRequests sends n requests from ns to addr, prints the first answers
// and then how the answers spread over the backends.
func sendRequests(s *framework.Session, ns *framework.NS, proto v1.Protocol, addr netip.AddrPort, n int, backends []string) {
	const shown = 3
	counts := map[string]int{}
	for i := 1; i <= n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := ns.Request(ctx, proto, addr)
		cancel()
		if err != nil {
			fmt.Printf("    %3d: error: %v\n", i, err)
			counts["(error)"]++
			continue
		}
		if i <= shown {
			fmt.Printf("    %3d: answered by %-6s (it saw the request come from %s)\n", i, r.Name, r.Source)
		}
		counts[r.Name]++
	}
	if n > shown {
		fmt.Printf("    ... and %d more\n", n-shown)
	}
	spread(counts, backends, n)
	if counts["(error)"] > 0 {
		s.Errorf("%d of %d requests failed", counts["(error)"], n)
	}
}

func printHowTo(c *framework.Cluster, svc *v1.Service, client *framework.Pod, outside *framework.Client, daemons []*framework.Daemon) {
	env, _ := framework.LoadEnv()
	echoclient := filepath.Join(env.HelperDir(), "echoclient")
	cp := filepath.Join(c.Dir(), "control-plane")
	step("the cluster keeps running; press Ctrl-C to remove it")
	fmt.Printf(`
Network namespaces (ip netns list):
`)
	for _, n := range c.NetNSNames() {
		fmt.Println("    " + n)
	}
	fmt.Printf(`
Addresses: node network 198.18.0.0/24 + fd00:198:18::/64 (apiserver on %s),
pods 198.18.128.0/17 + fd00:198:18:100::/56, Services 198.19.0.0/16 + fd00:198:19::/112.

Admin kubeconfig (usable from inside a namespace): %s
    ip netns exec %s kubectl --kubeconfig %s get svc,endpointslices -A
    ip netns exec %s curl -s --cacert %s/ca.crt --cert %s/admin.crt --key %s/admin.key %s/api/v1/nodes

Send requests through the Service:
    ip netns exec %s %s --count 9 %s
    ip netns exec %s %s --proto udp --count 9 %s
    ip netns exec %s %s --count 3 %s:%d
    ip netns exec %s ncat %s 80 <<<hello

Look at the rules and connections:
    ip netns exec %s iptables-save -t nat | grep KUBE
    ip netns exec %s ip6tables-save -t nat | grep KUBE
    ip netns exec %s conntrack -L
`,
		c.APIServerURL(), c.AdminKubeconfig(),
		c.Host().NetNS.Name(), c.AdminKubeconfig(),
		c.Host().NetNS.Name(), cp, cp, cp, c.APIServerURL(),
		client.NetNS.Name(), echoclient, framework.ServiceAddr(svc, v1.IPv4Protocol, 80),
		client.NetNS.Name(), echoclient, framework.ServiceAddr(svc, v1.IPv6Protocol, 80),
		outside.NetNS.Name(), echoclient, c.Nodes()[0].IP(v1.IPv4Protocol), svc.Spec.Ports[0].NodePort,
		client.NetNS.Name(), svc.Spec.ClusterIP,
		c.Nodes()[0].NetNS.Name(), c.Nodes()[0].NetNS.Name(), c.Nodes()[0].NetNS.Name())
	fmt.Println("\nDaemon logs:")
	for _, d := range daemons {
		fmt.Printf("    %s\n", d.Process().LogPath())
	}
	fmt.Println()
}
