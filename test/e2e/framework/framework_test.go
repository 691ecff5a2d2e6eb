package framework_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/iptproxy/iptproxy/test/e2e/echo"
	"github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestControlPlane checks that the apiserver runs with RBAC and accepts a
// Service and an EndpointSlice from a ServiceAccount token, and writes
// correct Node objects.
func TestControlPlane(t *testing.T) {
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 1, DualStack: true})
	ctx := t.Context()
	admin := c.Client()

	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-service-writer"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "create"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "create"}},
		},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := c.CreateServiceAccount(t, "e2e", "writer", role.Name)
	// Use the kubeconfig file, as a daemon would.
	cfg, err := clientcmd.BuildConfigFromFlags("", sa.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = c.RESTConfig().Dial
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	svc := framework.NewService("e2e", "web", framework.ServicePort("http", v1.ProtocolTCP, 80, 8080))
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	created, err := cs.CoreV1().Services("e2e").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a Service with the ServiceAccount token: %v", err)
	}
	if len(created.Spec.ClusterIPs) != 2 {
		t.Fatalf("cluster IPs %v, want one per family", created.Spec.ClusterIPs)
	}
	for i, cidr := range c.ServiceCIDRs() {
		if ip := netip.MustParseAddr(created.Spec.ClusterIPs[i]); !cidr.Contains(ip) {
			t.Errorf("cluster IP %v outside %v", ip, cidr)
		}
	}
	node := c.Nodes()[0]
	es, err := framework.NewEndpointSlice(created, v1.IPv4Protocol, node.Backend())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("e2e").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating an EndpointSlice with the ServiceAccount token: %v", err)
	}
	// RBAC is enforced: the role does not cover Secrets.
	if _, err := cs.CoreV1().Secrets("e2e").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing Secrets as %s: %v, want Forbidden", sa.Name, err)
	}
	got, err := admin.DiscoveryV1().EndpointSlices("e2e").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=web"})
	if err != nil || len(got.Items) != 1 {
		t.Fatalf("EndpointSlices of web: %v, %v", got, err)
	}

	// SetEndpoints writes one slice per family and replaces them.
	slices2 := c.SetEndpoints(t, created, node.Backend())
	if len(slices2) != 2 || len(slices2[1].Endpoints) != 1 || slices2[1].Endpoints[0].Addresses[0] != node.IP(v1.IPv6Protocol).String() {
		t.Errorf("SetEndpoints: %+v", slices2)
	}
	if s := c.SetEndpoints(t, created); len(s[0].Endpoints) != 0 {
		t.Errorf("SetEndpoints with no backends left %v", s[0].Endpoints)
	}

	// The Node object.
	obj, err := admin.CoreV1().Nodes().Get(ctx, node.Name(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var internal []string
	for _, a := range obj.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	if want := []string{"198.18.0.11", "fd00:198:18::11"}; !slices.Equal(internal, want) {
		t.Errorf("InternalIPs %v, want %v", internal, want)
	}
	if want := []string{"198.18.129.0/24", "fd00:198:18:129::/64"}; !slices.Equal(obj.Spec.PodCIDRs, want) {
		t.Errorf("podCIDRs %v, want %v", obj.Spec.PodCIDRs, want)
	}
	if obj.Labels[framework.LabelZone] != "zone-a" || obj.Labels[framework.LabelHostname] != "node-1" {
		t.Errorf("labels %v", obj.Labels)
	}
}

// TestPodNetwork checks that pods reach each other by pod IP, on the same
// node and across nodes, over every protocol and both families, with their
// own address as the source, and that pods reach the control plane.
func TestPodNetwork(t *testing.T) {
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 2, DualStack: true})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	a := n1.AddPod(t, "pod-a")
	b := n2.AddPod(t, "pod-b")
	same := n1.AddPod(t, "pod-c")
	for _, p := range []*framework.Pod{a, b, same} {
		p.StartEcho(t, framework.EchoOn(8080))
	}
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP} {
		t.Run(string(proto), func(t *testing.T) {
			if proto == v1.ProtocolSCTP {
				framework.RequireSCTP(t)
			}
			for _, family := range c.IPFamilies() {
				for _, dst := range []*framework.Pod{b, same} {
					r := a.MustRequest(t, proto, netip.AddrPortFrom(dst.IP(family), 8080))
					if r.Name != dst.Name() || r.Source.Addr() != a.IP(family) {
						t.Errorf("%s %s -> %s: reply %v, want %s from %v", family, a.Name(), dst.Name(), r, dst.Name(), a.IP(family))
					}
				}
				// A node reaches a pod on another node from its node IP.
				r := n1.MustRequest(t, proto, netip.AddrPortFrom(b.IP(family), 8080))
				if r.Source.Addr() != n1.IP(family) {
					t.Errorf("%s node-1 -> pod-b: source %v, want %v", family, r.Source, n1.IP(family))
				}
			}
		})
	}
	// A held connection keeps answering.
	conn, err := a.Connect(t.Context(), v1.ProtocolTCP, netip.AddrPortFrom(b.IP(v1.IPv4Protocol), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 3 {
		if _, err := conn.Request(t.Context()); err != nil {
			t.Fatalf("held connection: %v", err)
		}
	}
	// Pods reach the apiserver (through their node).
	for _, family := range c.IPFamilies() {
		addr := netip.AddrPortFrom(c.Host().IP(family), framework.APIServerPort)
		nc, err := b.DialContext(t.Context(), "tcp", addr.String())
		if err != nil {
			t.Errorf("pod-b -> apiserver %v: %v", addr, err)
			continue
		}
		nc.Close()
	}
	// Nothing listens on 9999: refused, not timeout.
	_, err = a.Request(t.Context(), v1.ProtocolTCP, netip.AddrPortFrom(b.IP(v1.IPv4Protocol), 9999))
	if !errors.Is(err, echo.ErrRefused) {
		t.Errorf("request to a closed port: %v, want refused", err)
	}
	// Hairpin mode is on for pod ports.
	out := n1.Exec(t, "ip", "-d", "link", "show", "vp1")
	if !strings.Contains(out, "hairpin on") {
		t.Errorf("pod port vp1 has no hairpin:\n%s", out)
	}
}

// TestOutsideClient checks that an outside client reaches a node IP, sees its
// own address, and has no route to pods.
func TestOutsideClient(t *testing.T) {
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 1, DualStack: true})
	n := c.Nodes()[0]
	client := c.AddClient(t, "outside")
	n.StartEcho(t, framework.EchoOptions{TCP: []int{9000}, UDP: []int{9000}})
	pod := n.AddPod(t, "pod-a")
	pod.StartEcho(t, framework.EchoOn(8080))
	for _, family := range c.IPFamilies() {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			r := client.MustRequest(t, proto, netip.AddrPortFrom(n.IP(family), 9000))
			if r.Name != n.Name() || r.Source.Addr() != client.IP(family) {
				t.Errorf("%s %s client -> node: %v", family, proto, r)
			}
		}
		_, err := client.Request(t.Context(), v1.ProtocolTCP, netip.AddrPortFrom(pod.IP(family), 8080))
		if !errors.Is(err, echo.ErrUnreachable) {
			t.Errorf("%s client -> pod IP: %v, want unreachable (no route)", family, err)
		}
	}
	// With a route through the node, the client reaches the pod.
	client.AddRoute(t, n.PodCIDRs()[0], n.IP(v1.IPv4Protocol))
	if r := client.MustRequest(t, v1.ProtocolTCP, netip.AddrPortFrom(pod.IP(v1.IPv4Protocol), 8080)); r.Name != "pod-a" {
		t.Errorf("client -> pod via route: %v", r)
	}
}

// TestSingleStackIPv6 checks an IPv6-only cluster.
func TestSingleStackIPv6(t *testing.T) {
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 1, IPFamilies: []v1.IPFamily{v1.IPv6Protocol}})
	svc := c.CreateService(t, framework.NewService("default", "v6", framework.ServicePort("tcp", v1.ProtocolTCP, 80, 8080)))
	if len(svc.Spec.ClusterIPs) != 1 || !c.ServiceCIDRs()[0].Contains(netip.MustParseAddr(svc.Spec.ClusterIP)) {
		t.Errorf("cluster IPs %v, want one in %v", svc.Spec.ClusterIPs, c.ServiceCIDRs())
	}
	if got := c.Nodes()[0].IPs(); len(got) != 1 || !got[0].Is6() {
		t.Errorf("node IPs %v", got)
	}
	if !strings.HasPrefix(c.APIServerURL(), "https://[fd00:198:18::1]") {
		t.Errorf("apiserver URL %s", c.APIServerURL())
	}
}

// TestUpstreamKubeProxy runs upstream kube-proxy on two nodes through the
// same harness iptproxy uses: it checks the generated configuration, the
// ServiceAccount credentials and the EndpointSlices, with real traffic to a
// ClusterIP and a NodePort.
func TestUpstreamKubeProxy(t *testing.T) {
	framework.RequireKubeProxy(t)
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 2, DualStack: true})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	a := n1.AddPod(t, "web-a")
	b := n2.AddPod(t, "web-b")
	src := n1.AddPod(t, "src")
	for _, p := range []*framework.Pod{a, b} {
		p.StartEcho(t, framework.EchoOptions{TCP: []int{8080}, UDP: []int{8080}})
	}
	svc := framework.NewService("e2e", "web",
		framework.ServicePort("tcp", v1.ProtocolTCP, 80, 8080),
		framework.ServicePort("udp", v1.ProtocolUDP, 80, 8080))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	svc = c.CreateService(t, svc)
	c.SetEndpoints(t, svc, a.Backend(), b.Backend())

	var daemons []*framework.Daemon
	for _, n := range c.Nodes() {
		daemons = append(daemons, n.StartKubeProxy(t, "--v=2"))
	}
	for _, d := range daemons {
		d.WaitHealthy(t, 60*time.Second)
	}
	for _, family := range c.IPFamilies() {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			src.WaitForBackends(t, proto, framework.ServiceAddr(svc, family, 80), []string{"web-a", "web-b"}, 30*time.Second)
		}
	}
	client := c.AddClient(t, "outside")
	nodePort := svc.Spec.Ports[0].NodePort
	for _, family := range c.IPFamilies() {
		r := client.MustRequest(t, v1.ProtocolTCP, netip.AddrPortFrom(n2.IP(family), uint16(nodePort)))
		if r.Name != "web-a" && r.Name != "web-b" {
			t.Errorf("NodePort reply %v", r)
		}
	}
	rules := n1.IPTablesSave(t, v1.IPv4Protocol, "nat")
	if !strings.Contains(rules, "KUBE-SERVICES") || !strings.Contains(rules, "e2e/web:tcp") {
		t.Errorf("no kube-proxy rules for e2e/web in node-1's nat table:\n%s", rules)
	}
	daemons[0].Restart(t)
	daemons[0].WaitHealthy(t, 60*time.Second)
	src.MustRequest(t, v1.ProtocolTCP, framework.ServiceAddr(svc, v1.IPv4Protocol, 80))
}

// helperEnv tells TestHelperCluster what to do when run by TestTeardown.
const helperEnv = "IPTPROXY_E2E_SELFTEST_HELPER"

// TestHelperCluster is not a test on its own: TestTeardown runs it in a
// child process to check cleanup after a failure and after SIGKILL.
func TestHelperCluster(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestTeardown")
	}
	c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 1})
	p := c.Nodes()[0].AddPod(t, "pod-a")
	p.StartEcho(t, framework.EchoOptions{TCP: []int{8080}})
	fmt.Printf("RUN %s %s\n", c.RunID(), c.Dir())
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "hang":
		time.Sleep(time.Hour)
	}
}

// TestTeardown checks that nothing of a run survives: neither a passing run
// (in a subtest here), nor a failing one, nor one killed with SIGKILL (which
// the next run's CleanupStale removes).
func TestTeardown(t *testing.T) {
	framework.RequireCluster(t)
	var runID, dir string
	t.Run("pass", func(t *testing.T) {
		c := framework.NewCluster(t, framework.ClusterOptions{Nodes: 1})
		c.AddClient(t, "client")
		c.Nodes()[0].AddPod(t, "pod-a").StartEcho(t, framework.EchoOptions{UDP: []int{53}})
		runID, dir = c.RunID(), c.Dir()
		if got := len(c.NetNSNames()); got != 4 {
			t.Errorf("%d namespaces, want 4: %v", got, c.NetNSNames())
		}
	})
	assertGone(t, runID, dir)

	t.Run("fail", func(t *testing.T) {
		out, id, d := runHelper(t, "fail", nil)
		if !strings.Contains(out, "failing on purpose") {
			t.Fatalf("helper output:\n%s", out)
		}
		assertGone(t, id, d)
	})
	t.Run("sigkill", func(t *testing.T) {
		_, id, d := runHelper(t, "hang", func(cmd *exec.Cmd) {
			_ = cmd.Process.Signal(syscall.SIGKILL)
		})
		if !hasNetNS(t, id) {
			t.Fatalf("the killed run left no namespaces; the test checks nothing")
		}
		removed, err := framework.CleanupStale(t.Context(), false)
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) == 0 {
			t.Errorf("CleanupStale removed nothing")
		}
		assertGone(t, id, d)
	})
}

// runHelper runs TestHelperCluster in a child process; once it printed its
// run ID, onRun (if set) is called. It returns the output, run ID and dir.
func runHelper(t *testing.T, mode string, onRun func(*exec.Cmd)) (string, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperCluster$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var id, dir string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if f := strings.Fields(line); len(f) == 3 && f[0] == "RUN" && id == "" {
			id, dir = f[1], f[2]
			if onRun != nil {
				onRun(cmd)
			}
		}
	}
	_ = cmd.Wait()
	if id == "" {
		t.Fatalf("helper printed no run ID:\n%s", out.String())
	}
	return out.String(), id, dir
}

func hasNetNS(t *testing.T, runID string) bool {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), framework.NetNSPrefix+runID+"-") {
			return true
		}
	}
	return false
}

// assertGone checks that no namespace, process, registry record or work
// directory of the run is left.
func assertGone(t *testing.T, runID, dir string) {
	t.Helper()
	if runID == "" {
		t.Fatal("no run ID")
	}
	if hasNetNS(t, runID) {
		t.Errorf("namespaces of run %s left", runID)
	}
	if _, err := os.Stat(filepath.Join(framework.RegistryDir, runID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry record of run %s left: %v", runID, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("work directory %s left: %v", dir, err)
	}
	// Every process the harness starts has the work directory on its
	// command line.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if strings.Contains(string(stat), ") Z ") {
			continue // a zombie has no resources left
		}
		t.Errorf("process of run %s left: %s: %s", runID, p, strings.ReplaceAll(string(b), "\x00", " "))
	}
}
