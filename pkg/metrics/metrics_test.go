package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/klog/v2/ktesting"
)

// syncBuckets is ExponentialBuckets(0.001, 2, 15) written out.
var syncBuckets = []float64{0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}

// programmingBuckets is kube-proxy's MergeBuckets(...) written out: note
// the leading 0, which MergeBuckets puts there.
func programmingBuckets() []float64 {
	b := []float64{0, 0.25, 0.5}
	for s := 1; s <= 59; s++ {
		b = append(b, float64(s))
	}
	for s := 60; s <= 115; s += 5 {
		b = append(b, float64(s))
	}
	for s := 120; s <= 300; s += 30 {
		b = append(b, float64(s))
	}
	return b
}

type wantFamily struct {
	name    string
	help    string
	typ     dto.MetricType
	labels  []string
	buckets []float64
}

// upstreamIPTablesFamilies is what kube-proxy v1.37.2 registers in iptables
// mode (pkg/proxy/metrics/metrics.go, RegisterMetrics with
// ProxyModeIPTables), checked against that file:
//
//	SyncProxyRulesLatency                       kubeproxy_sync_proxy_rules_duration_seconds
//	SyncProxyRulesLastQueuedTimestamp           kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds
//	SyncProxyRulesLastTimestamp                 kubeproxy_sync_proxy_rules_last_timestamp_seconds
//	EndpointChangesPending                      kubeproxy_sync_proxy_rules_endpoint_changes_pending
//	EndpointChangesTotal                        kubeproxy_sync_proxy_rules_endpoint_changes_total
//	ServiceChangesPending                       kubeproxy_sync_proxy_rules_service_changes_pending
//	ServiceChangesTotal                         kubeproxy_sync_proxy_rules_service_changes_total
//	ProxyHealthzTotal                           kubeproxy_proxy_healthz_total
//	ProxyLivezTotal                             kubeproxy_proxy_livez_total
//	NetworkProgrammingLatency                   kubeproxy_network_programming_duration_seconds
//	SyncProxyRulesNoLocalEndpointsTotal         kubeproxy_sync_proxy_rules_no_local_endpoints_total
//	SyncFullProxyRulesLatency                   kubeproxy_sync_full_proxy_rules_duration_seconds
//	SyncPartialProxyRulesLatency                kubeproxy_sync_partial_proxy_rules_duration_seconds
//	IPTablesRestoreFailuresTotal                kubeproxy_sync_proxy_rules_iptables_restore_failures_total
//	IPTablesPartialRestoreFailuresTotal         kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total
//	IPTablesRulesTotal                          kubeproxy_sync_proxy_rules_iptables_total
//	IPTablesRulesLastSync                       kubeproxy_sync_proxy_rules_iptables_last
//	ReconcileConntrackFlowsLatency              kubeproxy_conntrack_reconciler_sync_duration_seconds
//	ReconcileConntrackFlowsDeletedEntriesTotal  kubeproxy_conntrack_reconciler_deleted_entries_total
//	+ two nfacct collectors (only when nfacct works; see RegisterNFAcct):
//	  kubeproxy_iptables_ct_state_invalid_dropped_packets_total
//	  kubeproxy_iptables_localhost_nodeports_accepted_packets_total
//
// Not registered in iptables mode, so not here: the nftables, winkernel and
// localhost-nodeport-listener metrics. There is no "kubeproxy_proxy_healthz"
// gauge upstream, only the _total counter.
var upstreamIPTablesFamilies = []wantFamily{
	{"kubeproxy_sync_proxy_rules_duration_seconds", "[ALPHA] SyncProxyRules latency in seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}, syncBuckets},
	{"kubeproxy_sync_full_proxy_rules_duration_seconds", "[ALPHA] SyncProxyRules latency in seconds for full resyncs", dto.MetricType_HISTOGRAM, []string{"ip_family"}, syncBuckets},
	{"kubeproxy_sync_partial_proxy_rules_duration_seconds", "[ALPHA] SyncProxyRules latency in seconds for partial resyncs", dto.MetricType_HISTOGRAM, []string{"ip_family"}, syncBuckets},
	{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "[ALPHA] The last time proxy rules were successfully synced", dto.MetricType_GAUGE, []string{"ip_family"}, nil},
	{"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "[ALPHA] The last time a sync of proxy rules was queued", dto.MetricType_GAUGE, []string{"ip_family"}, nil},
	{"kubeproxy_network_programming_duration_seconds", "[ALPHA] In Cluster Network Programming Latency in seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}, programmingBuckets()},
	{"kubeproxy_sync_proxy_rules_endpoint_changes_pending", "[ALPHA] Pending proxy rules Endpoint changes", dto.MetricType_GAUGE, nil, nil},
	{"kubeproxy_sync_proxy_rules_endpoint_changes_total", "[ALPHA] Cumulative proxy rules Endpoint changes", dto.MetricType_COUNTER, nil, nil},
	{"kubeproxy_sync_proxy_rules_service_changes_pending", "[ALPHA] Pending proxy rules Service changes", dto.MetricType_GAUGE, nil, nil},
	{"kubeproxy_sync_proxy_rules_service_changes_total", "[ALPHA] Cumulative proxy rules Service changes", dto.MetricType_COUNTER, nil, nil},
	{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "[ALPHA] Cumulative proxy iptables restore failures", dto.MetricType_COUNTER, []string{"ip_family"}, nil},
	{"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", "[ALPHA] Cumulative proxy iptables partial restore failures", dto.MetricType_COUNTER, []string{"ip_family"}, nil},
	{"kubeproxy_sync_proxy_rules_iptables_total", "[ALPHA] Total number of iptables rules owned by kube-proxy", dto.MetricType_GAUGE, []string{"ip_family", "table"}, nil},
	{"kubeproxy_sync_proxy_rules_iptables_last", "[ALPHA] Number of iptables rules written by kube-proxy in last sync", dto.MetricType_GAUGE, []string{"ip_family", "table"}, nil},
	{"kubeproxy_sync_proxy_rules_no_local_endpoints_total", "[ALPHA] Number of services with a Local traffic policy and no endpoints", dto.MetricType_GAUGE, []string{"ip_family", "traffic_policy"}, nil},
	{"kubeproxy_proxy_healthz_total", "[ALPHA] Cumulative proxy healthz HTTP status", dto.MetricType_COUNTER, []string{"code"}, nil},
	{"kubeproxy_proxy_livez_total", "[ALPHA] Cumulative proxy livez HTTP status", dto.MetricType_COUNTER, []string{"code"}, nil},
	{"kubeproxy_conntrack_reconciler_sync_duration_seconds", "[ALPHA] ReconcileConntrackFlowsLatency latency in seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}, syncBuckets},
	{"kubeproxy_conntrack_reconciler_deleted_entries_total", "[ALPHA] Cumulative conntrack flows deleted by conntrack reconciler", dto.MetricType_COUNTER, []string{"ip_family"}, nil},
}

var iptproxyFamilies = []wantFamily{
	{"iptproxy_sync_bytes_written_total", "", dto.MetricType_COUNTER, []string{"ip_family"}, nil},
	{"iptproxy_sync_chains_written_total", "", dto.MetricType_COUNTER, []string{"ip_family", "table"}, nil},
	{"iptproxy_sync_chains_deleted_total", "", dto.MetricType_COUNTER, []string{"ip_family", "table"}, nil},
}

// touchAll gives every vector one child so that it shows up when gathered.
func touchAll(m *Metrics) {
	m.SyncProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncFullProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncPartialProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncProxyRulesLastTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	m.SyncProxyRulesLastQueuedTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	m.NetworkProgrammingLatency.WithLabelValues("IPv4").Observe(1.5)
	m.EndpointChangesPending.Set(1)
	m.EndpointChangesTotal.Inc()
	m.ServiceChangesPending.Set(1)
	m.ServiceChangesTotal.Inc()
	m.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4").Inc()
	m.IPTablesPartialRestoreFailuresTotal.WithLabelValues("IPv4").Inc()
	m.IPTablesRulesTotal.WithLabelValues("nat", "IPv4").Set(10)
	m.IPTablesRulesLastSync.WithLabelValues("nat", "IPv4").Set(2)
	m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(TrafficPolicyInternal, "IPv4").Set(0)
	m.ObserveHealthz(200)
	m.ObserveLivez(503)
	m.ReconcileConntrackFlowsLatency.WithLabelValues("IPv4").Observe(0.002)
	m.ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues("IPv4").Add(3)
	m.SyncBytesWrittenTotal.WithLabelValues("IPv4").Add(100)
	m.SyncChainsWrittenTotal.WithLabelValues("nat", "IPv4").Add(4)
	m.SyncChainsDeletedTotal.WithLabelValues("nat", "IPv4").Inc()
}

func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	return byName
}

func TestFamilies(t *testing.T) {
	m := New()
	touchAll(m)
	got := gather(t, m)

	for _, want := range slices.Concat(upstreamIPTablesFamilies, iptproxyFamilies) {
		t.Run(want.name, func(t *testing.T) {
			mf, ok := got[want.name]
			if !ok {
				t.Fatal("not exported")
			}
			if want.help != "" && mf.GetHelp() != want.help {
				t.Errorf("help %q, want %q", mf.GetHelp(), want.help)
			}
			if mf.GetType() != want.typ {
				t.Errorf("type %v, want %v", mf.GetType(), want.typ)
			}
			var labels []string
			for _, lp := range mf.GetMetric()[0].GetLabel() {
				labels = append(labels, lp.GetName())
			}
			if !slices.Equal(labels, want.labels) {
				t.Errorf("labels %v, want %v", labels, want.labels)
			}
			if want.buckets != nil {
				var bounds []float64
				for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
					bounds = append(bounds, b.GetUpperBound())
				}
				if !slices.Equal(bounds, want.buckets) {
					t.Errorf("buckets %v, want %v", bounds, want.buckets)
				}
			}
		})
	}

	// Nothing else under our prefixes: a new metric needs a test entry.
	known := map[string]bool{}
	for _, f := range slices.Concat(upstreamIPTablesFamilies, iptproxyFamilies) {
		known[f.name] = true
	}
	for name := range got {
		if (strings.HasPrefix(name, "kubeproxy_") || strings.HasPrefix(name, "iptproxy_")) && !known[name] {
			t.Errorf("unexpected metric %s", name)
		}
		if !strings.HasPrefix(name, "kubeproxy_") && !strings.HasPrefix(name, "iptproxy_") &&
			!strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s outside kubeproxy_, iptproxy_, go_ and process_", name)
		}
	}
}

func TestHandlerExposition(t *testing.T) {
	m := New()
	touchAll(m)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if rec.Header().Get("Process-Start-Time-Unix") == "" {
		t.Error("no Process-Start-Time-Unix header")
	}
	body := rec.Body.String()
	for _, line := range []string{
		"# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds",
		"# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.016"} 1`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0"} 0`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="2"} 1`,
		`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 10`,
		`kubeproxy_proxy_healthz_total{code="200"} 1`,
		`kubeproxy_proxy_livez_total{code="503"} 1`,
		"# TYPE go_goroutines gauge",
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("exposition lacks line %q", line)
		}
	}
}

func TestInstancesAreIndependent(t *testing.T) {
	a, b := New(), New()
	a.ServiceChangesTotal.Add(5)
	if got := counterValue(t, b.ServiceChangesTotal); got != 0 {
		t.Errorf("second instance sees %v, want 0", got)
	}
	if got := counterValue(t, a.ServiceChangesTotal); got != 5 {
		t.Errorf("first instance has %v, want 5", got)
	}
}

func TestProbeCounters(t *testing.T) {
	m := New()
	for _, code := range []int{200, 200, 503} {
		m.ObserveHealthz(code)
	}
	m.ObserveLivez(200)
	for _, tt := range []struct {
		name string
		got  float64
		want float64
	}{
		{"healthz 200", counterValue(t, m.ProxyHealthzTotal.WithLabelValues("200")), 2},
		{"healthz 503", counterValue(t, m.ProxyHealthzTotal.WithLabelValues("503")), 1},
		{"livez 200", counterValue(t, m.ProxyLivezTotal.WithLabelValues("200")), 1},
		{"livez 503", counterValue(t, m.ProxyLivezTotal.WithLabelValues("503")), 0},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

type fakeNFAcct map[string]uint64

func (f fakeNFAcct) Packets(name string) (uint64, error) {
	p, ok := f[name]
	if !ok {
		return 0, errors.New("no such counter")
	}
	return p, nil
}

func TestNFAcct(t *testing.T) {
	const (
		invalid   = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total"
		localhost = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total"
	)
	tests := []struct {
		name     string
		counters fakeNFAcct
		want     map[string]float64 // absent: no sample
	}{{
		name:     "both counters",
		counters: fakeNFAcct{CTStateInvalidDroppedNFAcctCounter: 7, LocalhostNodePortAcceptedNFAcctCounter: 3},
		want:     map[string]float64{invalid: 7, localhost: 3},
	}, {
		name:     "a counter that cannot be read is left out",
		counters: fakeNFAcct{CTStateInvalidDroppedNFAcctCounter: 1},
		want:     map[string]float64{invalid: 1},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			m := New()
			if err := m.RegisterNFAcct(logger, tt.counters); err != nil {
				t.Fatalf("RegisterNFAcct: %v", err)
			}
			got := gather(t, m)
			for _, name := range []string{invalid, localhost} {
				mf, ok := got[name]
				want, wantOK := tt.want[name]
				switch {
				case ok != wantOK:
					t.Errorf("%s exported %v, want %v", name, ok, wantOK)
				case ok && mf.GetMetric()[0].GetCounter().GetValue() != want:
					t.Errorf("%s = %v, want %v", name, mf.GetMetric()[0].GetCounter().GetValue(), want)
				case ok && !strings.HasPrefix(mf.GetHelp(), "[ALPHA] "):
					t.Errorf("%s help %q lacks the [ALPHA] prefix", name, mf.GetHelp())
				}
			}
			if err := m.RegisterNFAcct(logger, tt.counters); err == nil {
				t.Error("second RegisterNFAcct succeeded, want a duplicate registration error")
			}
		})
	}
}

// counterValue reads the value of a single counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var pb dto.Metric
	if err := c.Write(&pb); err != nil {
		t.Fatalf("reading counter: %v", err)
	}
	return pb.GetCounter().GetValue()
}

// scrape is a helper for the server tests.
func scrape(t *testing.T, h http.Handler, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}
