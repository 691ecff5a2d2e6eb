// Package metrics holds iptproxy's Prometheus metrics and the metrics HTTP
// server.
//
// The kubeproxy_* metrics carry the same names, help texts, label names and
// buckets as kube-proxy v1.37 in iptables mode, so dashboards and alerts
// written for kube-proxy keep working. kube-proxy builds them with
// k8s.io/component-base/metrics, which prefixes the help text with the
// stability level ("[ALPHA] "); the help texts here include that prefix so a
// scrape reads byte for byte like kube-proxy's. Metrics that only iptproxy
// has use the iptproxy_ prefix.
//
// Everything lives in a Metrics value with its own registry; there is no
// package-level state.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label names used by the metrics in this package.
const (
	// LabelIPFamily is the IP family ("IPv4" or "IPv6") a metric refers to.
	LabelIPFamily = "ip_family"
	// LabelTable is the netfilter table ("filter" or "nat") a metric refers to.
	LabelTable = "table"
	// LabelTrafficPolicy is "internal" or "external" for the no-local-endpoints gauge.
	LabelTrafficPolicy = "traffic_policy"
	// LabelCode is the HTTP status code of a health probe answer.
	LabelCode = "code"
)

// Values of LabelTrafficPolicy, as kube-proxy uses them.
const (
	TrafficPolicyInternal = "internal"
	TrafficPolicyExternal = "external"
)

// Metrics is the set of metrics iptproxy exports. Every field is registered
// on the registry owned by this value; create one with New.
type Metrics struct {
	registry *prometheus.Registry
	started  time.Time

	// SyncProxyRulesLatency is kubeproxy_sync_proxy_rules_duration_seconds:
	// the duration of every sync, full or partial. Labels: ip_family.
	SyncProxyRulesLatency *prometheus.HistogramVec
	// SyncFullProxyRulesLatency is kubeproxy_sync_full_proxy_rules_duration_seconds:
	// the duration of full syncs. Labels: ip_family.
	SyncFullProxyRulesLatency *prometheus.HistogramVec
	// SyncPartialProxyRulesLatency is kubeproxy_sync_partial_proxy_rules_duration_seconds:
	// the duration of partial syncs. Labels: ip_family.
	SyncPartialProxyRulesLatency *prometheus.HistogramVec
	// SyncProxyRulesLastTimestamp is kubeproxy_sync_proxy_rules_last_timestamp_seconds:
	// when the rules were last synced successfully. Labels: ip_family.
	SyncProxyRulesLastTimestamp *prometheus.GaugeVec
	// SyncProxyRulesLastQueuedTimestamp is
	// kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds: when a sync
	// was last requested. Labels: ip_family.
	SyncProxyRulesLastQueuedTimestamp *prometheus.GaugeVec
	// NetworkProgrammingLatency is kubeproxy_network_programming_duration_seconds:
	// the time from a Service or EndpointSlice change (its trigger time) to
	// the sync that programmed it. Labels: ip_family.
	NetworkProgrammingLatency *prometheus.HistogramVec

	// EndpointChangesPending is kubeproxy_sync_proxy_rules_endpoint_changes_pending.
	EndpointChangesPending prometheus.Gauge
	// EndpointChangesTotal is kubeproxy_sync_proxy_rules_endpoint_changes_total.
	EndpointChangesTotal prometheus.Counter
	// ServiceChangesPending is kubeproxy_sync_proxy_rules_service_changes_pending.
	ServiceChangesPending prometheus.Gauge
	// ServiceChangesTotal is kubeproxy_sync_proxy_rules_service_changes_total.
	ServiceChangesTotal prometheus.Counter

	// IPTablesRestoreFailuresTotal is
	// kubeproxy_sync_proxy_rules_iptables_restore_failures_total. Labels: ip_family.
	IPTablesRestoreFailuresTotal *prometheus.CounterVec
	// IPTablesPartialRestoreFailuresTotal is
	// kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total: failed
	// partial restores that were retried as a full sync. Labels: ip_family.
	IPTablesPartialRestoreFailuresTotal *prometheus.CounterVec
	// IPTablesRulesTotal is kubeproxy_sync_proxy_rules_iptables_total: the
	// number of rules iptproxy owns. Labels: table, ip_family.
	IPTablesRulesTotal *prometheus.GaugeVec
	// IPTablesRulesLastSync is kubeproxy_sync_proxy_rules_iptables_last: the
	// number of rules written by the last sync. Labels: table, ip_family.
	IPTablesRulesLastSync *prometheus.GaugeVec
	// SyncProxyRulesNoLocalEndpointsTotal is
	// kubeproxy_sync_proxy_rules_no_local_endpoints_total: Services with a
	// Local traffic policy and no local endpoints. Labels: traffic_policy, ip_family.
	SyncProxyRulesNoLocalEndpointsTotal *prometheus.GaugeVec

	// ProxyHealthzTotal is kubeproxy_proxy_healthz_total: /healthz answers by
	// status code. Labels: code.
	ProxyHealthzTotal *prometheus.CounterVec
	// ProxyLivezTotal is kubeproxy_proxy_livez_total: /livez answers by status
	// code. Labels: code.
	ProxyLivezTotal *prometheus.CounterVec

	// ReconcileConntrackFlowsLatency is
	// kubeproxy_conntrack_reconciler_sync_duration_seconds. Labels: ip_family.
	ReconcileConntrackFlowsLatency *prometheus.HistogramVec
	// ReconcileConntrackFlowsDeletedEntriesTotal is
	// kubeproxy_conntrack_reconciler_deleted_entries_total. Labels: ip_family.
	ReconcileConntrackFlowsDeletedEntriesTotal *prometheus.CounterVec

	// SyncBytesWrittenTotal is iptproxy_sync_bytes_written_total: bytes of
	// iptables-restore input written. Labels: ip_family.
	SyncBytesWrittenTotal *prometheus.CounterVec
	// SyncChainsWrittenTotal is iptproxy_sync_chains_written_total: chains
	// (re)written by restores. Labels: table, ip_family.
	SyncChainsWrittenTotal *prometheus.CounterVec
	// SyncChainsDeletedTotal is iptproxy_sync_chains_deleted_total: chains
	// deleted by restores. Labels: table, ip_family.
	SyncChainsDeletedTotal *prometheus.CounterVec
	// DriftChecksTotal is iptproxy_drift_checks_total: comparisons of the
	// kernel's tables with what iptproxy wrote, between syncs. Labels:
	// ip_family.
	DriftChecksTotal *prometheus.CounterVec
	// DriftCheckDuration is iptproxy_drift_check_duration_seconds: how long
	// one comparison took (reading both tables and comparing). Labels:
	// ip_family.
	DriftCheckDuration *prometheus.HistogramVec
	// DriftChainsTotal is iptproxy_drift_chains_total: chains (and base
	// jumps) found changed by someone else and repaired. Labels: table,
	// ip_family.
	DriftChainsTotal *prometheus.CounterVec
}

// syncDurationBuckets are kube-proxy's buckets for sync and conntrack
// reconciler durations: 1ms doubling 15 times, up to 16.384s.
func syncDurationBuckets() []float64 {
	return prometheus.ExponentialBuckets(0.001, 2, 15)
}

// networkProgrammingBuckets are kube-proxy's buckets for
// kubeproxy_network_programming_duration_seconds. kube-proxy builds them with
// component-base's MergeBuckets, which starts from a 0 bucket, so the list
// starts at 0: 0, 0.25s, 0.5s, 1s..59s, 60s..115s by 5s, 120s..300s by 30s.
func networkProgrammingBuckets() []float64 {
	b := []float64{0}
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// New creates the metrics and registers them, together with the Go runtime
// and process collectors kube-proxy also exports, on a new registry.
func New() *Metrics {
	ipFamily := []string{LabelIPFamily}
	tableFamily := []string{LabelTable, LabelIPFamily}

	m := &Metrics{
		registry: prometheus.NewRegistry(),
		started:  time.Now(),

		SyncProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_proxy_rules_duration_seconds",
			Help:    "[ALPHA] SyncProxyRules latency in seconds",
			Buckets: syncDurationBuckets(),
		}, ipFamily),
		SyncFullProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_full_proxy_rules_duration_seconds",
			Help:    "[ALPHA] SyncProxyRules latency in seconds for full resyncs",
			Buckets: syncDurationBuckets(),
		}, ipFamily),
		SyncPartialProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
			Help:    "[ALPHA] SyncProxyRules latency in seconds for partial resyncs",
			Buckets: syncDurationBuckets(),
		}, ipFamily),
		SyncProxyRulesLastTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "[ALPHA] The last time proxy rules were successfully synced",
		}, ipFamily),
		SyncProxyRulesLastQueuedTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "[ALPHA] The last time a sync of proxy rules was queued",
		}, ipFamily),
		NetworkProgrammingLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Help:    "[ALPHA] In Cluster Network Programming Latency in seconds",
			Buckets: networkProgrammingBuckets(),
		}, ipFamily),

		EndpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
			Help: "[ALPHA] Pending proxy rules Endpoint changes",
		}),
		EndpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
			Help: "[ALPHA] Cumulative proxy rules Endpoint changes",
		}),
		ServiceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_pending",
			Help: "[ALPHA] Pending proxy rules Service changes",
		}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_total",
			Help: "[ALPHA] Cumulative proxy rules Service changes",
		}),

		IPTablesRestoreFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
			Help: "[ALPHA] Cumulative proxy iptables restore failures",
		}, ipFamily),
		IPTablesPartialRestoreFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
			Help: "[ALPHA] Cumulative proxy iptables partial restore failures",
		}, ipFamily),
		IPTablesRulesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_total",
			Help: "[ALPHA] Total number of iptables rules owned by kube-proxy",
		}, tableFamily),
		IPTablesRulesLastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_last",
			Help: "[ALPHA] Number of iptables rules written by kube-proxy in last sync",
		}, tableFamily),
		SyncProxyRulesNoLocalEndpointsTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
			Help: "[ALPHA] Number of services with a Local traffic policy and no endpoints",
		}, []string{LabelTrafficPolicy, LabelIPFamily}),

		ProxyHealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total",
			Help: "[ALPHA] Cumulative proxy healthz HTTP status",
		}, []string{LabelCode}),
		ProxyLivezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total",
			Help: "[ALPHA] Cumulative proxy livez HTTP status",
		}, []string{LabelCode}),

		ReconcileConntrackFlowsLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_conntrack_reconciler_sync_duration_seconds",
			Help:    "[ALPHA] ReconcileConntrackFlowsLatency latency in seconds",
			Buckets: syncDurationBuckets(),
		}, ipFamily),
		ReconcileConntrackFlowsDeletedEntriesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_conntrack_reconciler_deleted_entries_total",
			Help: "[ALPHA] Cumulative conntrack flows deleted by conntrack reconciler",
		}, ipFamily),

		SyncBytesWrittenTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iptproxy_sync_bytes_written_total",
			Help: "Cumulative bytes of iptables-restore input written by iptproxy",
		}, ipFamily),
		SyncChainsWrittenTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iptproxy_sync_chains_written_total",
			Help: "Cumulative iptables chains written (created or rewritten) by iptproxy",
		}, tableFamily),
		SyncChainsDeletedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iptproxy_sync_chains_deleted_total",
			Help: "Cumulative iptables chains deleted by iptproxy",
		}, tableFamily),
		DriftChecksTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iptproxy_drift_checks_total",
			Help: "Cumulative comparisons of the kernel's tables with what iptproxy wrote, made between syncs",
		}, ipFamily),
		DriftCheckDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "iptproxy_drift_check_duration_seconds",
			Help:    "Time taken to read the tables back and compare them with what iptproxy wrote",
			Buckets: syncDurationBuckets(),
		}, ipFamily),
		DriftChainsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iptproxy_drift_chains_total",
			Help: "Cumulative chains and base jumps found changed by someone else and repaired",
		}, tableFamily),
	}

	m.registry.MustRegister(
		// As kube-proxy's legacy registry does.
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)),

		m.SyncProxyRulesLatency,
		m.SyncFullProxyRulesLatency,
		m.SyncPartialProxyRulesLatency,
		m.SyncProxyRulesLastTimestamp,
		m.SyncProxyRulesLastQueuedTimestamp,
		m.NetworkProgrammingLatency,
		m.EndpointChangesPending,
		m.EndpointChangesTotal,
		m.ServiceChangesPending,
		m.ServiceChangesTotal,
		m.IPTablesRestoreFailuresTotal,
		m.IPTablesPartialRestoreFailuresTotal,
		m.IPTablesRulesTotal,
		m.IPTablesRulesLastSync,
		m.SyncProxyRulesNoLocalEndpointsTotal,
		m.ProxyHealthzTotal,
		m.ProxyLivezTotal,
		m.ReconcileConntrackFlowsLatency,
		m.ReconcileConntrackFlowsDeletedEntriesTotal,
		m.SyncBytesWrittenTotal,
		m.SyncChainsWrittenTotal,
		m.SyncChainsDeletedTotal,
		m.DriftChecksTotal,
		m.DriftCheckDuration,
		m.DriftChainsTotal,
	)
	return m
}

// Registerer returns the registry the metrics live in, for collectors other
// packages want to export next to them.
func (m *Metrics) Registerer() prometheus.Registerer {
	return m.registry
}

// Gatherer returns the registry the metrics live in, for reading them back.
func (m *Metrics) Gatherer() prometheus.Gatherer {
	return m.registry
}

// Handler returns the /metrics handler for this registry. Like kube-proxy's,
// it sets the Process-Start-Time-Unix header.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ProcessStartTime: m.started,
	})
}

// ObserveHealthz counts one /healthz answer with the given HTTP status code.
// With ObserveLivez it lets *Metrics count probes for the healthcheck package.
func (m *Metrics) ObserveHealthz(code int) {
	m.ProxyHealthzTotal.WithLabelValues(strconv.Itoa(code)).Inc()
}

// ObserveLivez counts one /livez answer with the given HTTP status code.
func (m *Metrics) ObserveLivez(code int) {
	m.ProxyLivezTotal.WithLabelValues(strconv.Itoa(code)).Inc()
}
