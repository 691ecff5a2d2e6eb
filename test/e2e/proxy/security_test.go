package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestSecurity checks that iptproxy opens nothing kube-proxy would keep
// closed: localhost NodePorts only on IPv4 with route_localnet and the
// anti-martian rule (a crafted packet from another host to a port bound to
// 127.0.0.1 on the node is dropped), no localhost NodePorts at all when
// disabled, and the health, metrics and debug servers reachable only
// where configured.
func TestSecurity(t *testing.T) {
	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 2})
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	pod := n2.AddPod(t, "pod-a")
	pod.StartEcho(t, fw.EchoOn(echoPort))
	// A daemon on node-1 listening on every address, 127.0.0.1 included,
	// as a node-local service (kubelet's read-only port, a database) would.
	const localPort = 9099
	n1.StartEcho(t, fw.EchoOptions{Name: "node-1-local", TCP: []int{localPort}})
	client := c.AddClient(t, "outside")
	fam := v1.IPv4Protocol

	base := func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		cfg.IPTables.SyncPeriod = metav1.Duration{Duration: 3 * time.Second}
		cfg.IPTables.MinSyncPeriod = metav1.Duration{Duration: 0}
	}
	// node-1: defaults (localhost NodePorts on, metrics on 127.0.0.1).
	d1 := n1.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: base})
	// node-2: localhost NodePorts off, health on the node IP only, metrics
	// (and so the debug endpoints) on every address.
	d2 := n2.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Configure: func(cfg *kpv1alpha1.KubeProxyConfiguration) {
		base(cfg)
		cfg.IPTables.LocalhostNodePorts = ptr.To(false)
		cfg.HealthzBindAddress = n2.IP(fam).String() + ":10256"
		cfg.MetricsBindAddress = "0.0.0.0:10249"
	}})
	d1.WaitHealthy(t, 60*time.Second)

	svc := fw.NewService("sec", "np", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc = c.CreateService(t, svc)
	c.SetEndpoints(t, svc, pod.Backend())
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	localhostNP := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), nodePort)
	// The NodePort works on the node IP of both nodes.
	for _, n := range []*fw.Node{n1, n2} {
		client.WaitForBackends(t, v1.ProtocolTCP, netip.AddrPortFrom(n.IP(fam), nodePort), names(pod), converge)
	}

	t.Run("localhost NodePorts: IPv4 only, with route_localnet and the anti-martian rule", func(t *testing.T) {
		n1.WaitForBackends(t, v1.ProtocolTCP, localhostNP, names(pod), converge)
		if v, err := n1.Sysctl("net.ipv4.conf.all.route_localnet"); err != nil || v != "1" {
			t.Errorf("route_localnet on node-1 = %q (%v), want 1", v, err)
		}
		if dump := n1.IPTablesSave(t, fam, "filter"); !strings.Contains(dump,
			`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`) {
			t.Errorf("node-1 filter table lacks the anti-martian rule:\n%s", dump)
		}
		// ::1 is never a NodePort address.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if r, err := n1.Request(ctx, v1.ProtocolTCP, netip.AddrPortFrom(netip.MustParseAddr("::1"), nodePort)); err == nil {
			t.Errorf("[::1]:%d answered (%s); IPv6 localhost NodePorts must not exist", nodePort, r.Name)
		}
	})

	t.Run("another host cannot reach 127.0.0.1 on the node", func(t *testing.T) {
		// Let the client send packets to 127.0.0.0/8 out of eth0 to
		// node-1, as a neighbour on the node's L2 segment could
		// (CVE-2020-8558). The node cannot answer (the kernel never sends
		// a loopback source out of eth0), so delivery is judged on the
		// node: a SYN that reached the socket leaves a conntrack entry.
		routeLoopbackTo(t, client, n1.IP(fam))
		martian := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), localPort)
		delivered := func() int {
			out := n1.Exec(t, "conntrack", "-L", "-p", "tcp", "-s", client.IP(fam).String(), "-d", "127.0.0.1", "--dport", strconv.Itoa(localPort))
			return strings.Count(out, "dport="+strconv.Itoa(localPort)+" ")
		}
		requestFails(t, client.NS, martian, "a port bound to 127.0.0.1 on node-1, through route_localnet")
		if n := delivered(); n != 0 {
			t.Errorf("%d SYNs from another host reached 127.0.0.1:%d on node-1; the anti-martian rule must drop them", n, localPort)
		}
		if n := firewallDrops(t, n1); n == 0 {
			t.Errorf("the anti-martian rule dropped nothing")
		}

		// Control: without the anti-martian rule the same packets are
		// delivered, so the check above can fail. A restart's full sync
		// puts the rule back.
		n1.Exec(t, "iptables", "-t", "filter", "-F", "KUBE-FIREWALL")
		requestFails(t, client.NS, martian, "127.0.0.1 on node-1 (no reply can leave the node)")
		if n := delivered(); n == 0 {
			t.Fatalf("without the anti-martian rule the crafted SYNs were not delivered either: the control failed, the test proves nothing")
		}
		d1.Restart(t)
		d1.WaitHealthy(t, 60*time.Second)
		fw.Eventually(t, converge, func(context.Context) error {
			if firewallRules(t, n1) == 0 {
				return errors.New("KUBE-FIREWALL not restored")
			}
			return nil
		})

		// A NodePort on 127.0.0.1 from another host is DNATed like one on
		// the node IP, as in kube-proxy: the anti-martian rule exempts
		// DNAT, and the NodePort is reachable on the node IP anyway.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		r, err := client.Request(ctx, v1.ProtocolTCP, localhostNP)
		t.Logf("another host to 127.0.0.1:%d (NodePort): reply %q, error %v", nodePort, r.Name, err)
	})

	t.Run("localhost NodePorts disabled: no rule, no route_localnet", func(t *testing.T) {
		requestFails(t, n2.NS, localhostNP, "127.0.0.1:NodePort on a node with localhostNodePorts=false")
		if v, err := n2.Sysctl("net.ipv4.conf.all.route_localnet"); err != nil || v != "0" {
			t.Errorf("route_localnet on node-2 = %q (%v), want 0", v, err)
		}
		nat := n2.IPTablesSave(t, fam, "nat")
		if !strings.Contains(nat, `! -d 127.0.0.0/8 -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`) {
			t.Errorf("node-2 sends 127.0.0.0/8 to KUBE-NODEPORTS:\n%s", nat)
		}
		if filter := n2.IPTablesSave(t, fam, "filter"); strings.Contains(filter, "block incoming localnet connections") {
			t.Errorf("node-2 has an anti-martian rule although localhost NodePorts are off:\n%s", filter)
		}
	})

	t.Run("health and metrics servers bind only where configured", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			from   *fw.NS
			url    string
			wantOK bool
		}{
			{"node-1 healthz on every address (default)", client.NS, fmt.Sprintf("http://%s:10256/healthz", n1.IP(fam)), true},
			{"node-1 metrics on loopback only (default)", client.NS, fmt.Sprintf("http://%s:10249/metrics", n1.IP(fam)), false},
			{"node-1 metrics from the node", n1.NS, "http://127.0.0.1:10249/metrics", true},
			{"node-2 healthz on its node IP", client.NS, fmt.Sprintf("http://%s:10256/healthz", n2.IP(fam)), true},
			{"node-2 healthz not on loopback", n2.NS, "http://127.0.0.1:10256/healthz", false},
			{"node-2 metrics on every address", client.NS, fmt.Sprintf("http://%s:10249/metrics", n2.IP(fam)), true},
		} {
			r, err := httpGet(t.Context(), tc.from, tc.url)
			code := r.code
			if ok := err == nil && code == http.StatusOK; ok != tc.wantOK {
				t.Errorf("%s: GET %s from %s: %d %v; want reachable=%v", tc.name, tc.url, tc.from.Name(), code, err, tc.wantOK)
			}
		}
	})

	t.Run("debug endpoints refuse non-loopback clients", func(t *testing.T) {
		for _, path := range []string{"/debug/last-sync", "/debug/rules"} {
			r, err := httpGet(t.Context(), client.NS, fmt.Sprintf("http://%s:10249%s", n2.IP(fam), path))
			code := r.code
			if err != nil || code != http.StatusForbidden {
				t.Errorf("GET %s from another host: %d %v; want 403", path, code, err)
			}
			code, body, err := d2.Get(t.Context(), 10249, path)
			if err != nil || code != http.StatusOK || body == "" {
				t.Errorf("GET %s on the node's loopback: %d %v; want 200 with a body", path, code, err)
			}
		}
	})

	t.Run("runs with only the permissions it uses", func(t *testing.T) {
		// deploy/base/rbac.yaml's rules minus the Endpoints and ServiceCIDRs
		// grants kept only for parity with system:node-proxier.
		role := minimalRole(t)
		if _, err := c.Client().RbacV1().ClusterRoles().Create(t.Context(), role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		sa := c.CreateServiceAccount(t, "kube-system", "iptproxy-minimal", role.Name)
		d2.Stop(t)
		d3 := n2.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Kubeconfig: sa.Kubeconfig, Configure: base})
		d3.WaitHealthy(t, 60*time.Second)
		// A Service created now is served: list and watch work.
		late := fw.NewService("sec", "late", fw.ServicePort("tcp", v1.ProtocolTCP, 80, echoPort))
		late.Spec.Type = v1.ServiceTypeNodePort
		late = c.CreateService(t, late)
		c.SetEndpoints(t, late, pod.Backend())
		client.WaitForBackends(t, v1.ProtocolTCP, netip.AddrPortFrom(n2.IP(fam), uint16(late.Spec.Ports[0].NodePort)), names(pod), converge)
		if log := d3.Log(); strings.Contains(log, "forbidden") {
			t.Errorf("the daemon was refused something with the minimal role:\n%s", log)
		}
	})
}

// minimalRole reads the ClusterRole of deploy/base/rbac.yaml and drops the
// rules on Endpoints and ServiceCIDRs.
func minimalRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "base", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := strings.Cut(string(data), "\n---")
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(doc), &role); err != nil {
		t.Fatalf("parsing the ClusterRole: %v", err)
	}
	var kept []rbacv1.PolicyRule
	for _, r := range role.Rules {
		r.Resources = slices.DeleteFunc(r.Resources, func(res string) bool { return res == "endpoints" || res == "servicecidrs" })
		if len(r.Resources) > 0 {
			kept = append(kept, r)
		}
	}
	role.Rules = kept
	role.Name = "iptproxy-minimal"
	return &role
}

// routeLoopbackTo makes ns send packets for 127.0.0.0/8 out of eth0 via gw
// and accept the replies (which come from 127.0.0.0/8): it drops the
// loopback routes of its local table and sets route_localnet.
func routeLoopbackTo(t *testing.T, ns *fw.Client, gw netip.Addr) {
	t.Helper()
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.route_localnet", "1"}, {"net.ipv4.conf.eth0.route_localnet", "1"},
		{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.eth0.rp_filter", "0"},
	} {
		if err := ns.SetSysctl(kv[0], kv[1]); err != nil {
			t.Fatalf("%v", err)
		}
	}
	ctx := t.Context()
	for _, args := range [][]string{
		{"route", "del", "table", "local", "local", "127.0.0.0/8", "dev", "lo"},
		{"route", "del", "table", "local", "local", "127.0.0.1", "dev", "lo"},
		{"route", "add", "127.0.0.0/8", "via", gw.String(), "dev", "eth0"},
	} {
		if err := ns.NetNS.IP(ctx, args...); err != nil {
			t.Fatalf("crafting the loopback route in %s: %v", ns.Name(), err)
		}
	}
}

// requestFails checks that a TCP request from ns to addr gets no answer.
func requestFails(t *testing.T, ns *fw.NS, addr netip.AddrPort, what string) {
	t.Helper()
	for range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		r, err := ns.Request(ctx, v1.ProtocolTCP, addr)
		cancel()
		if err == nil {
			t.Fatalf("%s answered (%s from %v): want no answer", what, r.Name, addr)
		}
	}
}

// firewallDrops returns the packet count of the DROP rules in node n's
// filter KUBE-FIREWALL chain.
func firewallDrops(t *testing.T, n *fw.Node) int {
	t.Helper()
	total := 0
	for _, line := range strings.Split(n.Exec(t, "iptables", "-t", "filter", "-L", "KUBE-FIREWALL", "-v", "-x", "-n"), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "DROP" {
			if v, err := strconv.Atoi(f[0]); err == nil {
				total += v
			}
		}
	}
	return total
}

// firewallRules returns how many rules node n's KUBE-FIREWALL holds.
func firewallRules(t *testing.T, n *fw.Node) int {
	t.Helper()
	return strings.Count(n.Exec(t, "iptables", "-t", "filter", "-S", "KUBE-FIREWALL"), "-A KUBE-FIREWALL")
}
