package options

import (
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	metricsfeatures "k8s.io/component-base/metrics/features"
	zpagesfeatures "k8s.io/component-base/zpages/features"
	"k8s.io/klog/v2"
)

// Feature gates that change what a kube-proxy in iptables mode does, with
// their Kubernetes v1.37 specifications. Gates of other components are
// accepted (see Complete) but have no effect.
const (
	// AllowServiceExternalIPs: when disabled, Service spec.externalIPs are
	// ignored. GA, default on.
	AllowServiceExternalIPs featuregate.Feature = "AllowServiceExternalIPs"
	// MultiCIDRServiceAllocator: watch ServiceCIDRs. GA, locked on.
	MultiCIDRServiceAllocator featuregate.Feature = "MultiCIDRServiceAllocator"
	// PreferSameTrafficDistribution: honour the PreferSameNode traffic
	// distribution (endpoint hints forNodes). GA, locked on.
	PreferSameTrafficDistribution featuregate.Feature = "PreferSameTrafficDistribution"
	// KubeProxyIPVS: allow the ipvs mode. Deprecated, default on; iptproxy
	// rejects the ipvs mode regardless.
	KubeProxyIPVS featuregate.Feature = "KubeProxyIPVS"
	// KubeProxyNFTablesLocalhostNodePorts: nftables-mode localhost NodePorts.
	// Alpha; no effect in iptables mode.
	KubeProxyNFTablesLocalhostNodePorts featuregate.Feature = "KubeProxyNFTablesLocalhostNodePorts"
	// NFTablesNetlink: nftables mode over netlink. Beta; no effect in
	// iptables mode.
	NFTablesNetlink featuregate.Feature = "NFTablesNetlink"
	// NFTablesProxyMode: allow the nftables mode. GA, locked on.
	NFTablesProxyMode featuregate.Feature = "NFTablesProxyMode"
)

// proxyFeatureSpecs returns the specifications of the gates above.
func proxyFeatureSpecs() map[featuregate.Feature]featuregate.VersionedSpecs {
	v := version.MustParse
	return map[featuregate.Feature]featuregate.VersionedSpecs{
		AllowServiceExternalIPs: {
			{Version: v("1.0"), Default: true, PreRelease: featuregate.GA},
		},
		MultiCIDRServiceAllocator: {
			{Version: v("1.27"), Default: false, PreRelease: featuregate.Alpha},
			{Version: v("1.31"), Default: false, PreRelease: featuregate.Beta},
			{Version: v("1.33"), Default: true, PreRelease: featuregate.GA},
			{Version: v("1.34"), Default: true, PreRelease: featuregate.GA, LockToDefault: true},
		},
		PreferSameTrafficDistribution: {
			{Version: v("1.33"), Default: false, PreRelease: featuregate.Alpha},
			{Version: v("1.34"), Default: true, PreRelease: featuregate.Beta},
			{Version: v("1.35"), Default: true, PreRelease: featuregate.GA, LockToDefault: true},
		},
		KubeProxyIPVS: {
			{Version: v("1.0"), Default: true, PreRelease: featuregate.GA},
			{Version: v("1.37"), Default: true, PreRelease: featuregate.Deprecated},
		},
		KubeProxyNFTablesLocalhostNodePorts: {
			{Version: v("1.37"), Default: false, PreRelease: featuregate.Alpha},
		},
		NFTablesNetlink: {
			{Version: v("1.37"), Default: true, PreRelease: featuregate.Beta},
		},
		NFTablesProxyMode: {
			{Version: v("1.29"), Default: false, PreRelease: featuregate.Alpha},
			{Version: v("1.31"), Default: true, PreRelease: featuregate.Beta},
			{Version: v("1.33"), Default: true, PreRelease: featuregate.GA, LockToDefault: true},
		},
	}
}

// newFeatureGate returns a feature-gate set at Kubernetes v1.37 holding the
// gates iptproxy knows: its own (above) and component-base's logging,
// metrics and z-pages gates.
func newFeatureGate() featuregate.MutableVersionedFeatureGate {
	fg := featuregate.NewFeatureGate()
	for _, add := range []func(featuregate.MutableVersionedFeatureGate) error{
		logsapi.AddFeatureGates,
		metricsfeatures.AddFeatureGates,
		zpagesfeatures.AddFeatureGates,
		func(g featuregate.MutableVersionedFeatureGate) error { return g.AddVersioned(proxyFeatureSpecs()) },
	} {
		if err := add(fg); err != nil {
			// The specifications are fixed at build time; a conflict is a
			// programming error caught by the tests.
			panic(fmt.Sprintf("registering feature gates: %v", err))
		}
	}
	return fg
}

// splitFeatureGates separates the gates fg knows from the others, whose
// names are returned sorted.
func splitFeatureGates(fg featuregate.MutableFeatureGate, gates map[string]bool) (known map[string]bool, unknown []string) {
	all := fg.GetAll()
	known = map[string]bool{}
	for name, enabled := range gates {
		if _, ok := all[featuregate.Feature(name)]; ok {
			known[name] = enabled
		} else {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return known, unknown
}

// setFeatureGates applies gates to fg. Gates fg does not know are logged and
// skipped: kube-proxy accepts every Kubernetes feature gate, and a
// configuration that kube-proxy accepts must keep working. Invalid settings
// of known gates (such as disabling a gate locked to on) are errors, as in
// kube-proxy.
func setFeatureGates(logger klog.Logger, fg featuregate.MutableFeatureGate, gates map[string]bool) error {
	known, unknown := splitFeatureGates(fg, gates)
	for _, name := range unknown {
		logger.Info("Feature gate has no effect in iptproxy; ignoring it", "featureGate", name, "enabled", gates[name])
	}
	return applyFeatureGates(logger, fg, known)
}

// applyFeatureGates sets gates, all known to fg, logging through logger.
func applyFeatureGates(logger klog.Logger, fg featuregate.MutableFeatureGate, gates map[string]bool) error {
	var err error
	if withLogger, ok := fg.(featuregate.MutableFeatureGateWithLogger); ok {
		err = withLogger.SetFromMapWithLogger(logger, gates)
	} else {
		err = fg.SetFromMap(gates)
	}
	if err != nil {
		return fmt.Errorf("setting feature gates: %w", err)
	}
	return nil
}

// FeatureGate returns the resolved feature gates (after Complete): enabled
// state of the gates listed above and of the logging, metrics and z-pages
// gates. Pass it to logsapi.ValidateAndApply when applying Config.Logging.
func (o *Options) FeatureGate() featuregate.FeatureGate {
	return o.featureGate
}
