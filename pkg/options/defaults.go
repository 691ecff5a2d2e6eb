package options

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// DefaultContentType is the default clientConnection.contentType.
const DefaultContentType = "application/vnd.kubernetes.protobuf"

// SetDefaults fills the unset fields of cfg with kube-proxy's v1alpha1
// defaults (pkg/proxy/apis/config/v1alpha1 SetDefaults_KubeProxyConfiguration
// in Kubernetes v1.37):
//
//   - bindAddress 0.0.0.0; healthzBindAddress 0.0.0.0:10256 and
//     metricsBindAddress 127.0.0.1:10249 ([::]:10256 and [::1]:10249 when
//     bindAddress is not IPv4); a bind address given without a port gets the
//     default port;
//   - oomScoreAdj -999;
//   - iptables: syncPeriod 30s, minSyncPeriod 1s, localhostNodePorts true,
//     masqueradeBit 14; ipvs syncPeriod 30s; nftables syncPeriod 30s,
//     minSyncPeriod 1s, masqueradeBit 14;
//   - conntrack: maxPerCore 32768, min 131072, tcpEstablishedTimeout 24h,
//     tcpCloseWaitTimeout 1h;
//   - configSyncPeriod 15m;
//   - clientConnection: contentType application/vnd.kubernetes.protobuf,
//     qps 5, burst 10;
//   - featureGates an empty map; logging the recommended configuration
//     (text format, 5s flush frequency).
//
// mode and detectLocalMode are left alone: Complete defaults them, as
// kube-proxy does after defaulting.
func SetDefaults(cfg *v1alpha1.KubeProxyConfiguration) {
	if cfg.BindAddress == "" {
		cfg.BindAddress = "0.0.0.0"
	}
	healthzHost, metricsHost := "[::]", "[::1]"
	if ip := parseIP(cfg.BindAddress); ip != nil && ip.To4() != nil {
		healthzHost, metricsHost = "0.0.0.0", "127.0.0.1"
	}
	if cfg.HealthzBindAddress == "" {
		cfg.HealthzBindAddress = fmt.Sprintf("%s:%d", healthzHost, DefaultHealthzPort)
	} else {
		cfg.HealthzBindAddress = appendPortIfNeeded(cfg.HealthzBindAddress, DefaultHealthzPort)
	}
	if cfg.MetricsBindAddress == "" {
		cfg.MetricsBindAddress = fmt.Sprintf("%s:%d", metricsHost, DefaultMetricsPort)
	} else {
		cfg.MetricsBindAddress = appendPortIfNeeded(cfg.MetricsBindAddress, DefaultMetricsPort)
	}

	if cfg.OOMScoreAdj == nil {
		cfg.OOMScoreAdj = ptr.To(defaultOOMScoreAdj)
	}

	defaultDuration(&cfg.IPTables.SyncPeriod, 30*time.Second)
	defaultDuration(&cfg.IPTables.MinSyncPeriod, time.Second)
	if cfg.IPTables.LocalhostNodePorts == nil {
		cfg.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if cfg.IPTables.MasqueradeBit == nil {
		cfg.IPTables.MasqueradeBit = ptr.To[int32](14)
	}
	defaultDuration(&cfg.IPVS.SyncPeriod, 30*time.Second)
	defaultDuration(&cfg.NFTables.SyncPeriod, 30*time.Second)
	defaultDuration(&cfg.NFTables.MinSyncPeriod, time.Second)
	if cfg.NFTables.MasqueradeBit == nil {
		cfg.NFTables.MasqueradeBit = ptr.To[int32](14)
	}

	if cfg.Conntrack.MaxPerCore == nil {
		cfg.Conntrack.MaxPerCore = ptr.To[int32](32 * 1024)
	}
	if cfg.Conntrack.Min == nil {
		cfg.Conntrack.Min = ptr.To[int32](128 * 1024)
	}
	if cfg.Conntrack.TCPEstablishedTimeout == nil {
		cfg.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if cfg.Conntrack.TCPCloseWaitTimeout == nil {
		// One hour, to outlive typical server FIN_WAIT timeouts; see
		// kubernetes/kubernetes#32551.
		cfg.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: time.Hour}
	}

	defaultDuration(&cfg.ConfigSyncPeriod, 15*time.Minute)

	if cfg.ClientConnection.ContentType == "" {
		cfg.ClientConnection.ContentType = DefaultContentType
	}
	if cfg.ClientConnection.QPS == 0 {
		cfg.ClientConnection.QPS = 5
	}
	if cfg.ClientConnection.Burst == 0 {
		cfg.ClientConnection.Burst = 10
	}
	if cfg.FeatureGates == nil {
		cfg.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&cfg.Logging)
}

func defaultDuration(d *metav1.Duration, def time.Duration) {
	if d.Duration == 0 {
		d.Duration = def
	}
}
