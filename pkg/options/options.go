// Package options holds iptproxy's command line and configuration file, which
// are kube-proxy's: the same flags (names, types, defaults, help,
// deprecations), the same KubeProxyConfiguration file
// (kubeproxy.config.k8s.io/v1alpha1) and the same rules for combining the two,
// so that an operator can swap the kube-proxy image for iptproxy and change
// nothing else.
//
// The caller builds Options with NewOptions, registers the flags with
// AddFlags, parses the command line, then calls Complete (load the file or
// apply the flags, then defaults), Validate, and, when WriteConfigTo is set,
// WriteConfigFile. The resolved configuration is Options.Config, of the
// published type k8s.io/kube-proxy/config/v1alpha1.KubeProxyConfiguration.
package options

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// Ports kube-proxy serves on by default.
const (
	// DefaultHealthzPort is the default port of the health check server.
	DefaultHealthzPort int32 = 10256
	// DefaultMetricsPort is the default port of the metrics server.
	DefaultMetricsPort int32 = 10249
)

// The proxy modes kube-proxy knows. iptproxy implements only ModeIPTables.
const (
	// ModeIPTables is the iptables proxy mode, the one iptproxy implements.
	ModeIPTables v1alpha1.ProxyMode = "iptables"
	// ModeIPVS is kube-proxy's (deprecated) IPVS mode.
	ModeIPVS v1alpha1.ProxyMode = "ipvs"
	// ModeNFTables is kube-proxy's nftables mode.
	ModeNFTables v1alpha1.ProxyMode = "nftables"
	// ModeKernelspace is kube-proxy's Windows mode.
	ModeKernelspace v1alpha1.ProxyMode = "kernelspace"
)

// The keywords nodePortAddresses / --nodeport-addresses accept besides CIDRs.
const (
	// NodePortAddressesPrimary expands to the node's primary IPv4 and/or IPv6
	// address.
	NodePortAddressesPrimary = "primary"
	// NodePortAddressesLocalhost expands to 127.0.0.0/8 and ::1/128.
	NodePortAddressesLocalhost = "localhost"
	// NodePortAddressesAll expands to 0.0.0.0/0 and ::/0.
	NodePortAddressesAll = "all"
)

// IPTablesBackend selects which iptables implementation iptproxy drives.
type IPTablesBackend string

// The values of --iptables-backend.
const (
	// BackendAuto lets iptproxy pick the backend the node already uses,
	// as kube-proxy's image does with its iptables-wrapper script.
	BackendAuto IPTablesBackend = "auto"
	// BackendNFT uses iptables-nft.
	BackendNFT IPTablesBackend = "nft"
	// BackendLegacy uses iptables-legacy.
	BackendLegacy IPTablesBackend = "legacy"
)

// Options is everything needed to configure and run iptproxy: kube-proxy's
// configuration and the command-line-only settings.
type Options struct {
	// Config is kube-proxy's configuration. NewOptions fills it with the
	// defaults and AddFlags binds the flags to it; Complete replaces it with
	// the configuration file when one is given, and leaves it fully
	// resolved (defaults applied, mode and detectLocalMode set).
	Config *v1alpha1.KubeProxyConfiguration

	// ConfigFile is the path of the configuration file (--config).
	ConfigFile string
	// WriteConfigTo, when set, makes iptproxy write the resolved
	// configuration to this path and exit (--write-config-to).
	WriteConfigTo string
	// CleanupAndExit makes iptproxy remove the rules kube-proxy and iptproxy
	// install, then exit (--cleanup).
	CleanupAndExit bool
	// InitAndExit makes iptproxy do the steps that need full root
	// privileges, then exit (--init-only).
	InitAndExit bool
	// Master overrides the API server URL of the kubeconfig (--master). It
	// is honoured even when a configuration file is given.
	Master string

	// IPTablesBackend is iptproxy's own --iptables-backend (auto, nft or
	// legacy). It is not part of the configuration file and is honoured
	// with or without one.
	IPTablesBackend IPTablesBackend

	// DefaultedMode is set by Complete when no proxy mode was configured
	// and "iptables" was assumed. kube-proxy logs an error and records a
	// warning event (KubeProxyDefaultMode) in that case.
	DefaultedMode bool

	// Logger receives the few log lines Complete writes (lenient decoding,
	// ignored flags, defaulting). NewOptions sets it to klog.Background().
	Logger klog.Logger

	// Placeholders for flags that do not map directly onto Config; Complete
	// applies them when no configuration file is given.
	healthzPort           int32
	metricsPort           int32
	hostnameOverride      string
	iptablesSyncPeriod    time.Duration
	iptablesMinSyncPeriod time.Duration
	flagSet               *pflag.FlagSet
	ipvsSyncPeriod        time.Duration
	ipvsMinSyncPeriod     time.Duration
	clusterCIDR           string

	// emptyClusterCIDRFlag records --cluster-cidr="" (which kube-proxy turns
	// into one empty CIDR that fails validation).
	emptyClusterCIDRFlag bool

	// configFlags are the names of the flags that set configuration values
	// and are therefore ignored when a configuration file is given.
	configFlags []string

	// featureGate is the resolved feature-gate set.
	featureGate featuregate.MutableVersionedFeatureGate
}

// NewOptions returns Options holding kube-proxy's default configuration.
func NewOptions() *Options {
	cfg := &v1alpha1.KubeProxyConfiguration{}
	SetDefaults(cfg)
	return &Options{
		Config:          cfg,
		IPTablesBackend: BackendAuto,
		Logger:          klog.Background(),
		healthzPort:     DefaultHealthzPort,
		metricsPort:     DefaultMetricsPort,
		featureGate:     newFeatureGate(),
	}
}

// ignoredFlagHelp marks flags whose values only matter with a config file
// absent.
const ignoredFlagHelp = "This parameter is ignored if a config file is specified by --config."

// inapplicableFlags returns the kube-proxy flags iptproxy accepts and ignores
// because they only configure other proxy modes.
func inapplicableFlags() []string {
	return []string{
		"ipvs-sync-period",
		"ipvs-min-sync-period",
		"ipvs-scheduler",
		"ipvs-exclude-cidrs",
		"ipvs-strict-arp",
		"ipvs-tcp-timeout",
		"ipvs-tcpfin-timeout",
		"ipvs-udp-timeout",
	}
}

// AddFlags registers kube-proxy's flags (Linux set, as of v1.37) and
// iptproxy's own on fs and binds them to o. Call it once, after NewOptions
// and before Complete.
//
// The logging flags (--logging-format, -v, --vmodule, --log-flush-frequency,
// --log-text-*, and --log-json-* when the JSON format is registered by
// importing k8s.io/component-base/logs/json/register) come from
// k8s.io/component-base/logs/api/v1, as in kube-proxy. --version and --help
// are left to the caller, as is the flag-name normalisation kube-proxy gets
// from k8s.io/component-base/cli.Run (which makes "--iptables_sync_period"
// mean "--iptables-sync-period"): call
// fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc) or use cli.Run.
// -v and --vmodule set Config.Logging (apply it with
// logsapi.ValidateAndApply and FeatureGate); further klog flags can be added
// with fs.AddGoFlagSet, which skips the names already registered.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	c := o.Config
	o.flagSet = fs

	// Flags honoured with or without a configuration file.
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The path to the configuration file.")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo, "If set, write the default configuration values to this file and exit.")
	fs.BoolVar(&o.CleanupAndExit, "cleanup", o.CleanupAndExit, "If true, remove every chain and jump iptproxy (or kube-proxy's iptables mode) installed, in both iptables backends and both IP families, and exit.")
	fs.StringVar(&o.Master, "master", o.Master, "The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&o.hostnameOverride, "hostname-override", o.hostnameOverride, "If non-empty, will be used as the name of the Node that kube-proxy is running on. If unset, the node name is assumed to be the same as the node's hostname.")
	fs.BoolVar(&o.InitAndExit, "init-only", o.InitAndExit, "If true, perform any initialization steps that must be done with full root privileges, and then exit. (Accepted for kube-proxy compatibility; iptproxy does not implement it yet.)")
	fs.Var(&backendValue{&o.IPTablesBackend}, "iptables-backend", "(iptproxy only) Which iptables implementation to program: 'nft' (iptables-nft), 'legacy' (iptables-legacy), or 'auto' to use the one that already holds the node's rules, preferring nft.")

	// Flags that set configuration values; ignored when --config is given.
	cfs := pflag.NewFlagSet("kube-proxy configuration", pflag.ContinueOnError)

	cfs.Var(cliflag.NewMapStringBool(&c.FeatureGates), "feature-gates", "A set of key=value pairs that describe feature gates for alpha/experimental features. "+
		"Options are:\n"+strings.Join(o.featureGate.KnownFeatures(), "\n")+"\n"+ignoredFlagHelp)

	cfs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag).")
	cfs.StringVar(&c.ClientConnection.ContentType, "kube-api-content-type", c.ClientConnection.ContentType, "Content type of requests sent to apiserver.")
	cfs.Int32Var(&c.ClientConnection.Burst, "kube-api-burst", c.ClientConnection.Burst, "Burst to use while talking with kubernetes apiserver")
	cfs.Float32Var(&c.ClientConnection.QPS, "kube-api-qps", c.ClientConnection.QPS, "QPS to use while talking with kubernetes apiserver")

	cfs.Var(&ipValue{&c.BindAddress}, "bind-address", "Overrides kube-proxy's idea of what its node's primary IP is. Note that the name is a historical artifact, and kube-proxy does not actually bind any sockets to this IP. "+ignoredFlagHelp)
	cfs.Var(&ipPortValue{&c.HealthzBindAddress}, "healthz-bind-address", "The IP address and port for the health check server to serve on, defaulting to \"0.0.0.0:10256\". "+ignoredFlagHelp)
	cfs.Var(&ipPortValue{&c.MetricsBindAddress}, "metrics-bind-address", "The IP address and port for the metrics server to serve on, defaulting to \"127.0.0.1:10249\". (Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces.) "+ignoredFlagHelp)
	cfs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "If true kube-proxy will treat failure to bind to a port as fatal and exit")
	cfs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "If true enables profiling via web interface on /debug/pprof handler. "+ignoredFlagHelp)
	cfs.StringVar(&c.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion,
		"The previous version for which you want to show hidden metrics. "+
			"Only the previous minor version is meaningful, other values will not be allowed. "+
			"The format is <major>.<minor>, e.g.: '1.16'. "+
			"The purpose of this format is make sure you have the opportunity to notice if the next release hides additional metrics, "+
			"rather than being surprised when they are permanently removed in the release after that. "+ignoredFlagHelp)
	cfs.Var(&proxyModeValue{&c.Mode}, "proxy-mode", "Which proxy mode to use: iptproxy implements only 'iptables' (the default); any other value is an error. "+
		ignoredFlagHelp)

	cfs.Int32Var(c.IPTables.MasqueradeBit, "iptables-masquerade-bit", ptr.Deref(c.IPTables.MasqueradeBit, 14), "If using the iptables or ipvs proxy mode, the bit of the fwmark space to mark packets requiring SNAT with.  Must be within the range [0, 31].")
	cfs.BoolVar(&c.IPTables.MasqueradeAll, "masquerade-all", c.IPTables.MasqueradeAll, "SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins. Only supported on Linux.")
	cfs.BoolVar(c.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", ptr.Deref(c.IPTables.LocalhostNodePorts, true), "If false, kube-proxy will disable the legacy behavior of allowing NodePort services to be accessed via localhost. (Applies only to iptables mode and IPv4; localhost NodePorts are never allowed with other proxy modes or with IPv6.)")
	cfs.DurationVar(&o.iptablesSyncPeriod, "iptables-sync-period", c.IPTables.SyncPeriod.Duration, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	cfs.DurationVar(&o.iptablesMinSyncPeriod, "iptables-min-sync-period", c.IPTables.MinSyncPeriod.Duration, "The minimum period between iptables rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate iptables resync.")

	// kube-proxy shows its mode-independent sync periods as the defaults of
	// the IPVS flags, which are the iptables ones.
	cfs.DurationVar(&o.ipvsSyncPeriod, "ipvs-sync-period", c.IPTables.SyncPeriod.Duration, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0. (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.DurationVar(&o.ipvsMinSyncPeriod, "ipvs-min-sync-period", c.IPTables.MinSyncPeriod.Duration, "The minimum period between IPVS rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate IPVS resync. (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler, "The ipvs scheduler type when proxy mode is ipvs (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.StringSliceVar(&c.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", c.IPVS.ExcludeCIDRs, "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules. (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2 (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration, "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m'). (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.DurationVar(&c.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeout.Duration, "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m'). (ipvs mode only: accepted and ignored by iptproxy)")
	cfs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration, "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m'). (ipvs mode only: accepted and ignored by iptproxy)")

	cfs.Var(&localModeValue{&c.DetectLocalMode}, "detect-local-mode", "Mode to use to detect local traffic. "+ignoredFlagHelp)
	cfs.StringVar(&c.DetectLocal.BridgeInterface, "pod-bridge-interface", c.DetectLocal.BridgeInterface, "A bridge interface name. When --detect-local-mode is set to BridgeInterface, kube-proxy will consider traffic to be local if it originates from this bridge.")
	cfs.StringVar(&c.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, "An interface name prefix. When --detect-local-mode is set to InterfaceNamePrefix, kube-proxy will consider traffic to be local if it originates from any interface whose name begins with this prefix.")
	cfs.StringVar(&o.clusterCIDR, "cluster-cidr", c.ClusterCIDR, "The CIDR range of the pods in the cluster. (For dual-stack clusters, this can be a comma-separated dual-stack pair of CIDR ranges.). When --detect-local-mode is set to ClusterCIDR, kube-proxy will consider traffic to be local if its source IP is in this range. (Otherwise it is not used.) "+ignoredFlagHelp)

	cfs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses,
		"A list of CIDR ranges and/or keywords that expand to CIDR ranges. NodePort services are only accessible on node IPs covered by the list. Supported keywords: 'primary' (the Node object's primary IPv4 and/or IPv6 addresses), 'localhost' (127.0.0.0/8 and ::1/128), and 'all' (0.0.0.0/0 and ::/0). Any combination of valid keywords and CIDRS may be included in the list. Serving NodePorts on loopback IPs is only supported in iptables mode (IPv4 only, see --iptables-localhost-nodeports), and, only for TCP, in nftables mode when the KubeProxyNFTablesLocalhostNodePorts feature gate is enabled and the list explicitly includes loopback (e.g. 'localhost'). If unset, this defaults to 'all' in iptables and ipvs mode, and to 'primary' in nftables mode. "+ignoredFlagHelp)

	cfs.Int32Var(c.OOMScoreAdj, "oom-score-adj", ptr.Deref(c.OOMScoreAdj, defaultOOMScoreAdj), "The oom-score-adj value for kube-proxy process. Values must be within the range [-1000, 1000]. "+ignoredFlagHelp)
	cfs.Int32Var(c.Conntrack.MaxPerCore, "conntrack-max-per-core", *c.Conntrack.MaxPerCore,
		"Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	cfs.Int32Var(c.Conntrack.Min, "conntrack-min", *c.Conntrack.Min,
		"Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	cfs.DurationVar(&c.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", c.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is)")
	cfs.DurationVar(&c.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", c.Conntrack.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	cfs.BoolVar(&c.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", c.Conntrack.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	cfs.DurationVar(&c.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	cfs.DurationVar(&c.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
	cfs.DurationVar(&c.ConfigSyncPeriod.Duration, "config-sync-period", c.ConfigSyncPeriod.Duration, "How often configuration from the apiserver is refreshed.  Must be greater than 0.")

	cfs.Int32Var(&o.healthzPort, "healthz-port", o.healthzPort, "The port to bind the health check server. Use 0 to disable.")
	_ = cfs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	cfs.Int32Var(&o.metricsPort, "metrics-port", o.metricsPort, "The port to bind the metrics server. Use 0 to disable.")
	_ = cfs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")

	o.configFlags = o.configFlags[:0]
	cfs.VisitAll(func(f *pflag.Flag) { o.configFlags = append(o.configFlags, f.Name) })
	fs.AddFlagSet(cfs)

	// Logging flags: honoured with a configuration file too (they override
	// its logging section).
	logsapi.AddFlags(&c.Logging, fs)
}

// FlagSet is the flag set AddFlags registered on (the whole command line,
// which kube-proxy serves on /flagz), or nil before AddFlags.
func (o *Options) FlagSet() *pflag.FlagSet { return o.flagSet }

// defaultOOMScoreAdj is kube-proxy's OOM score adjustment (qos.KubeProxyOOMScoreAdj).
const defaultOOMScoreAdj int32 = -999

// ipValue is a flag holding an IP address. Setting it to "" leaves the value
// unchanged, as kube-proxy's flag does.
type ipValue struct{ val *string }

func (v *ipValue) String() string { return *v.val }
func (v *ipValue) Type() string   { return "ip" }
func (v *ipValue) Set(s string) error {
	if s == "" {
		return nil
	}
	if parseIP(s) == nil {
		return fmt.Errorf("%q is not a valid IP address", s)
	}
	*v.val = s
	return nil
}

// ipPortValue is a flag holding an IP address or an IP:port pair. Setting it
// to "" leaves the value unchanged, as kube-proxy's flag does.
type ipPortValue struct{ val *string }

func (v *ipPortValue) String() string { return *v.val }
func (v *ipPortValue) Type() string   { return "ipport" }
func (v *ipPortValue) Set(s string) error {
	if s == "" {
		return nil
	}
	if err := checkIPOrIPPort(s); err != nil {
		return err
	}
	*v.val = s
	return nil
}

// proxyModeValue is the --proxy-mode flag.
type proxyModeValue struct{ val *v1alpha1.ProxyMode }

func (v *proxyModeValue) String() string { return string(*v.val) }
func (v *proxyModeValue) Type() string   { return "ProxyMode" }
func (v *proxyModeValue) Set(s string) error {
	*v.val = v1alpha1.ProxyMode(s)
	return nil
}

// localModeValue is the --detect-local-mode flag.
type localModeValue struct{ val *v1alpha1.LocalMode }

func (v *localModeValue) String() string { return string(*v.val) }
func (v *localModeValue) Type() string   { return "LocalMode" }
func (v *localModeValue) Set(s string) error {
	*v.val = v1alpha1.LocalMode(s)
	return nil
}

// backendValue is the --iptables-backend flag.
type backendValue struct{ val *IPTablesBackend }

func (v *backendValue) String() string { return string(*v.val) }
func (v *backendValue) Type() string   { return "string" }
func (v *backendValue) Set(s string) error {
	switch b := IPTablesBackend(s); b {
	case BackendAuto, BackendNFT, BackendLegacy:
		*v.val = b
		return nil
	}
	return fmt.Errorf("%q is not one of %q, %q, %q", s, BackendAuto, BackendNFT, BackendLegacy)
}
