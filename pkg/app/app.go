// Package app wires iptproxy together: API clients and informers, one
// proxier per IP family, the health, metrics and health-check servers. It
// is the one place real things (clients, kernel runners, listeners) are
// built; everything it composes can be tested alone.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/iptproxy/iptproxy/pkg/conntrack"
	"github.com/iptproxy/iptproxy/pkg/healthcheck"
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/localdetect"
	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// Timeouts for the node's own object at start, as kube-proxy's.
const (
	nodeIPsTimeout  = 30 * time.Second
	podCIDRsTimeout = 5 * time.Minute
)

// Run runs iptproxy until ctx ends or a fatal condition (the node's IPs
// changed, the node was deleted) asks for a restart.
func Run(ctx context.Context, o *options.Options) error {
	logger := klog.FromContext(ctx)
	cfg := o.Config
	backend, err := iptables.ChooseBackend(ctx, string(o.IPTablesBackend))
	if err != nil {
		return err
	}
	if o.CleanupAndExit {
		return Cleanup(ctx)
	}

	restCfg, err := o.RESTConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("creating API client: %w", err)
	}
	nodeName, err := o.NodeName()
	if err != nil {
		return err
	}
	logger = klog.LoggerWithValues(logger, "node", nodeName)
	ctx = klog.NewContext(ctx, logger)

	if err := checkPermissions(ctx, client, nodeName); err != nil {
		return err
	}

	adjustOOMScore(logger, cfg.OOMScoreAdj)
	applyConntrackSysctls(ctx, cfg.Conntrack)

	detectCfg := o.LocalDetectConfig()
	node, err := waitForNode(ctx, client, nodeName, detectCfg.NeedsPodCIDRs(), nodeIPsTimeout, podCIDRsTimeout)
	if err != nil {
		return err
	}
	primary, nodeIPs := primaryFamily(logger, node.ips, cfg.BindAddress)
	logger.Info("Node addresses", "primaryFamily", primary, "nodeIPs", node.ips)
	detectors := localdetect.Resolve(logger, detectCfg, primary, node.podCIDRs)

	m := metrics.New()
	counters := setupNFAcct(logger, m)
	health := healthcheck.NewProxyHealth(healthTimeout(cfg), clock.RealClock{}, m)
	if node.node != nil {
		health.SyncNode(node.node)
	}

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	recorder := broadcaster.NewRecorder(scheme.Scheme, "kube-proxy")

	var proxiers []*proxier.Proxier
	rulesConfigs := map[v1.IPFamily]rules.Config{}
	var svcHealth []*healthcheck.ServiceHealthServer
	families, err := servedFamilies(ctx, primary, func(ctx context.Context, fam v1.IPFamily) error {
		return iptables.Present(ctx, fam, backend)
	})
	if err != nil {
		return err
	}
	// One journal for both families: it tells iptproxy's own nftables
	// commits from everyone else's (see iptables.Journal).
	journal := iptables.NewJournal()
	for _, fam := range families {
		ipt, err := iptables.New(fam, backend, iptables.WithLogger(logger), iptables.WithJournal(journal))
		if err != nil {
			return err
		}
		detector := detectors[fam]
		rcfg := familyRulesConfig(logger, o, NodeFacts{Name: nodeName, Node: node.node, TCPBeLiberal: conntrackLiberal(cfg)},
			node, fam, nodeIPs[fam], detector)
		// Count in the nfacct objects only where they could be created.
		rcfg.NFAcctLocalhostNodePorts = counters.enabled(rcfg.NFAcctLocalhostNodePorts)
		rcfg.NFAcctInvalidDropped = counters.enabled(rcfg.NFAcctInvalidDropped)
		zone, npAddrs, localhostNP := rcfg.Zone, rcfg.NodePortAddresses, rcfg.LocalhostNodePorts
		rulesConfigs[fam] = rcfg
		if localhostNP {
			logger.Info("Setting route_localnet=1 to allow node-ports on localhost; to change this either disable iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses (--nodeport-addresses) to filter loopback addresses")
			if err := iptables.EnsureSysctl(ctx, "net/ipv4/conf/all/route_localnet", 1); err != nil {
				return err
			}
		}
		sh, err := healthcheck.NewServiceHealthServer(logger, healthcheck.ServiceHealthConfig{
			NodeName:          nodeName,
			Family:            fam,
			NodePortAddresses: expandPrimary(cfg.NodePortAddresses, nodeIPs[fam]),
			Recorder:          recorder,
			Health:            health,
		})
		if err != nil {
			return err
		}
		svcHealth = append(svcHealth, sh)
		p := proxier.New(logger, proxier.Options{
			Rules:         rcfg,
			SyncPeriod:    cfg.IPTables.SyncPeriod.Duration,
			MinSyncPeriod: cfg.IPTables.MinSyncPeriod.Duration,
			IPTables:      ipt,
			Metrics:       m,
			Health:        health,
			ServiceHealth: sh,
			Conntrack:     conntrack.Netlink{},
		})
		p.OnNodeUpdate(zone, familyIPs(node.ips, fam))
		proxiers = append(proxiers, p)
		logger.Info("Using iptables proxier", "ipFamily", fam, "backend", backend, "localTraffic", detector.String(),
			"nodePortAddresses", npAddrs, "localhostNodePorts", localhostNP)
	}

	handlers := make([]EventHandler, len(proxiers))
	for i, p := range proxiers {
		handlers[i] = p
	}
	serviceWatch, err := newAPIWatch(logger, client, handlers)
	if err != nil {
		return err
	}
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, cfg.ConfigSyncPeriod.Duration,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}),
		informers.WithTransform(trimObject))
	fatal := make(chan error, 1)
	watcher := &nodeWatcher{
		logger:       logger,
		initial:      node,
		watchPodCIDR: detectCfg.NeedsPodCIDRs(),
		health:       health,
		proxiers:     proxiers,
		fatal:        fatal,
	}
	if _, err := nodeFactory.Core().V1().Nodes().Informer().AddEventHandler(watcher.handlers()); err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	broadcaster.StartRecordingToSink(ctx.Done())
	defer broadcaster.Shutdown()

	healthz := healthcheck.NewHealthzServer(cfg.HealthzBindAddress, health)
	metricsServer := metrics.NewServer(cfg.MetricsBindAddress, m)
	metricsServer.SetZPages(zpages(o))
	servicesDebug := &servicesDebug{logger: logger, proxiers: proxiers, configs: rulesConfigs,
		client: client}
	if err := mountDebug(metricsServer, o, proxiers, servicesDebug); err != nil {
		return err
	}
	if cfg.HealthzBindAddress != "" {
		g.Go(func() error { return serve(ctx, "healthz", healthz.Run, cfg.BindAddressHardFail) })
	}
	if cfg.MetricsBindAddress != "" {
		g.Go(func() error { return serve(ctx, "metrics", metricsServer.Run, cfg.BindAddressHardFail) })
	}
	for _, sh := range svcHealth {
		g.Go(func() error { return sh.Run(ctx) })
	}
	for _, p := range proxiers {
		g.Go(func() error { p.Run(ctx); return nil })
	}
	g.Go(func() error { serviceWatch.Run(ctx); return nil })
	g.Go(func() error {
		nodeFactory.Start(ctx.Done())
		if !cache.WaitForNamedCacheSyncWithContext(ctx, serviceWatch.ServicesSynced, serviceWatch.SlicesSynced) {
			return ctx.Err()
		}
		for _, p := range proxiers {
			p.OnServicesSynced()
			p.OnEndpointSlicesSynced()
		}
		<-ctx.Done()
		nodeFactory.Shutdown()
		return nil
	})
	g.Go(func() error {
		select {
		case err := <-fatal:
			return err
		case <-ctx.Done():
			return nil
		}
	})
	recorder.Eventf(&v1.ObjectReference{Kind: "Node", Name: nodeName, UID: nodeUID(node)}, nil, v1.EventTypeNormal, "Starting", "StartKubeProxy", "")
	return g.Wait()
}

// serve runs a server; a bind failure is fatal only with
// --bind-address-hard-fail, as in kube-proxy.
func serve(ctx context.Context, name string, run func(context.Context) error, hardFail bool) error {
	err := run(ctx)
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	if hardFail {
		return fmt.Errorf("%s server: %w", name, err)
	}
	klog.FromContext(ctx).Error(err, "Server failed; continuing without it", "server", name)
	return nil
}

func otherFamily(f v1.IPFamily) v1.IPFamily {
	if f == v1.IPv4Protocol {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func familyIPs(ips []netip.Addr, fam v1.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if proxy.FamilyOf(ip) == fam {
			out = append(out, ip)
		}
	}
	return out
}

// expandPrimary replaces the "primary" keyword by the node IPs given.
func expandPrimary(addrs []string, nodeIPs ...netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		if a != "primary" || len(nodeIPs) == 0 {
			out = append(out, a)
			continue
		}
		for _, ip := range nodeIPs {
			if ip.IsValid() && !ip.IsLoopback() {
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()).String())
			}
		}
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// healthTimeout is kube-proxy's healthz window: twice the sync period.
func healthTimeout(cfg *v1alpha1.KubeProxyConfiguration) time.Duration {
	return 2 * cfg.IPTables.SyncPeriod.Duration
}

func conntrackLiberal(cfg *v1alpha1.KubeProxyConfiguration) bool {
	if cfg.Conntrack.TCPBeLiberal {
		return true
	}
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	if err != nil {
		return false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && v != 0
}

// adjustOOMScore sets the process's oom_score_adj; failures are logged,
// as kube-proxy does in containers that may not lower it.
func adjustOOMScore(logger klog.Logger, score *int32) {
	if score == nil {
		return
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(*score))), 0o644); err != nil {
		logger.V(2).Info("Failed to apply oom_score_adj", "value", *score, "err", err.Error())
	}
}

func nodeUID(n *nodeInfo) types.UID {
	if n == nil || n.node == nil {
		return ""
	}
	return n.node.UID
}
