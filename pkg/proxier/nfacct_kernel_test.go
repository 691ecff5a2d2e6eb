//go:build linux

package proxier_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/nfacct"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	rt "github.com/iptproxy/iptproxy/pkg/proxier/proxiertest"
)

// TestKernelNFAcctLocalhostNodePorts applies the rules with nfacct counting
// to the real kernel in a private network namespace and checks that
// packets to a localhost NodePort, and only those, are counted, as
// kube-proxy's kubeproxy_iptables_localhost_nodeports_accepted_packets_total
// counts them.
func TestKernelNFAcctLocalhostNodePorts(t *testing.T) {
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			kerneltest.Enter(t)
			ctx := context.Background()
			if err := iptables.Present(ctx, v1.IPv4Protocol, backend); err != nil {
				t.Skipf("iptables %s not usable here: %v", backend, err)
			}
			acct, err := nfacct.New()
			if errors.Is(err, nfacct.ErrUnsupported) {
				t.Skipf("kernel test: %v", err)
			} else if err != nil {
				t.Fatal(err)
			}
			defer acct.Close()
			for _, name := range []string{metrics.LocalhostNodePortAcceptedNFAcctCounter, metrics.CTStateInvalidDroppedNFAcctCounter} {
				if err := acct.Ensure(name); err != nil {
					t.Fatal(err)
				}
			}
			for _, args := range [][]string{
				{"link", "set", "lo", "up"},
				{"addr", "add", rt.NodeIP + "/32", "dev", "lo"},
			} {
				if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, out)
				}
			}
			ipt, err := iptables.New(v1.IPv4Protocol, backend)
			if err != nil {
				t.Fatal(err)
			}
			cfg := rt.DefaultConfig(v1.IPv4Protocol)
			cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(rt.NodeIP)}
			cfg.NFAcctLocalhostNodePorts = metrics.LocalhostNodePortAcceptedNFAcctCounter
			cfg.NFAcctInvalidDropped = metrics.CTStateInvalidDroppedNFAcctCounter
			logger, _ := ktesting.NewTestContext(t)
			p := proxier.New(logger, proxier.Options{Rules: cfg, IPTables: ipt})
			p.OnNodeUpdate("", cfg.NodeIPs)
			p.OnServiceUpdate(nil, rt.Service("ns/np", "172.30.0.1", rt.NodePort(30080)))
			p.OnEndpointSliceUpdate(rt.Slice("ns/np", "np-1", []discovery.EndpointPort{rt.SlicePort("p", 8080, v1.ProtocolTCP)},
				rt.Endpoint("10.244.2.5", "node-b")), false)
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("sync: %v", err)
			}
			// The rules read back as rendered: a full resync writes nothing.
			p.ForceFullSync()
			if err := p.Sync(ctx); err != nil {
				t.Fatalf("resync: %v", err)
			}
			if n := p.LastSync().RulesWritten; n != 0 {
				t.Errorf("full resync wrote %d rules, want 0 (rendered nfacct rules differ from iptables-save): %v", n, p.LastSync().ChainsWritten)
				for _, tbl := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
					save, _ := ipt.Save(ctx, tbl)
					t.Logf("iptables-save -t %s:\n%s", tbl, save)
				}
			}

			m := metrics.New()
			if err := m.RegisterNFAcct(logger, acct); err != nil {
				t.Fatal(err)
			}
			counted := func() float64 {
				t.Helper()
				mfs, err := m.Gatherer().Gather()
				if err != nil {
					t.Fatal(err)
				}
				for _, mf := range mfs {
					if mf.GetName() == "kubeproxy_iptables_localhost_nodeports_accepted_packets_total" {
						return mf.GetMetric()[0].GetCounter().GetValue()
					}
				}
				t.Fatal("no localhost NodePort metric")
				return 0
			}
			dial := func(addr string) {
				// The endpoint is unreachable: the first packet is what counts.
				if conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond); err == nil {
					conn.Close()
				}
			}
			if got := counted(); got != 0 {
				t.Fatalf("counted %v packets before any traffic", got)
			}
			dial(rt.NodeIP + ":30080")
			if got := counted(); got != 0 {
				t.Errorf("a NodePort packet to the node IP was counted (%v)", got)
			}
			dial("127.0.0.1:30080")
			if got := counted(); got < 1 {
				t.Errorf("localhost NodePort packets counted: %v, want at least 1", got)
			}
		})
	}
}
