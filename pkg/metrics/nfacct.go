package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Names of the nfacct objects kube-proxy's iptables rules count packets in.
// The rules reference them with "-m nfacct --nfacct-name <name>"; whoever
// writes those rules must create the objects first.
const (
	// CTStateInvalidDroppedNFAcctCounter counts packets dropped because
	// conntrack marked them INVALID.
	CTStateInvalidDroppedNFAcctCounter = "ct_state_invalid_dropped_pkts"
	// LocalhostNodePortAcceptedNFAcctCounter counts packets accepted on
	// NodePorts of the loopback interface.
	LocalhostNodePortAcceptedNFAcctCounter = "localhost_nps_accepted_pkts"
)

// NFAcctReader reads the packet count of a named nfacct object. The real
// implementation talks netfilter netlink (NFNL_SUBSYS_ACCT); tests use a fake.
type NFAcctReader interface {
	// Packets returns the packet count of the nfacct object called name.
	Packets(name string) (uint64, error)
}

// RegisterNFAcct adds kube-proxy's two nfacct-backed counters,
// kubeproxy_iptables_ct_state_invalid_dropped_packets_total and
// kubeproxy_iptables_localhost_nodeports_accepted_packets_total, read from r
// at every scrape. kube-proxy registers them only when it could open an
// nfacct client, so call this only when r works. Failures to read a counter
// during a scrape are logged with logger and the sample is left out.
func (m *Metrics) RegisterNFAcct(logger klog.Logger, r NFAcctReader) error {
	cs := []prometheus.Collector{
		&nfacctCollector{
			logger:  logger,
			reader:  r,
			counter: CTStateInvalidDroppedNFAcctCounter,
			desc: prometheus.NewDesc(
				"kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
				"[ALPHA] packets dropped by iptables to work around conntrack problems",
				nil, nil),
		},
		&nfacctCollector{
			logger:  logger,
			reader:  r,
			counter: LocalhostNodePortAcceptedNFAcctCounter,
			desc: prometheus.NewDesc(
				"kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
				"[ALPHA] Number of packets accepted on nodeports of loopback interface",
				nil, nil),
		},
	}
	for i, c := range cs {
		if err := m.registry.Register(c); err != nil {
			for _, done := range cs[:i] {
				m.registry.Unregister(done)
			}
			return fmt.Errorf("registering nfacct metrics: %w", err)
		}
	}
	return nil
}

// nfacctCollector exports one nfacct object's packet count as a counter.
type nfacctCollector struct {
	logger  klog.Logger
	reader  NFAcctReader
	counter string
	desc    *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *nfacctCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
}

// Collect implements prometheus.Collector.
func (c *nfacctCollector) Collect(ch chan<- prometheus.Metric) {
	packets, err := c.reader.Packets(c.counter)
	if err != nil {
		c.logger.Error(err, "Failed to collect nfacct counter", "counter", c.counter)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(packets))
}
