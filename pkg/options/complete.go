package options

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Complete resolves the configuration from the parsed flags fs and the
// configuration file, following kube-proxy v1.37 (cmd/kube-proxy/app
// options.go Options.Complete):
//
//  1. Without --config and without --write-config-to, the deprecated
//     --healthz-port / --metrics-port are folded into the bind addresses
//     (port 0 empties the address; a bare IP gets the port).
//  2. With --config, the file is loaded (strict, then lenient with a
//     warning), defaulted, and replaces the configuration built from the
//     flags entirely: every configuration flag (--kubeconfig,
//     --proxy-mode, --cluster-cidr, ...) is ignored, even when given
//     explicitly (iptproxy logs each one). Only the logging flags that
//     were set explicitly are copied over the file's logging section (-v,
//     --vmodule, --logging-format, ...), and the flags that are not part of
//     the file (--master, --hostname-override, --cleanup, --init-only,
//     --write-config-to, --iptables-backend) keep their effect.
//     Without --config, the explicitly set --iptables-sync-period and
//     --iptables-min-sync-period (--ipvs-* in ipvs mode) and --cluster-cidr
//     are applied on top of the flag-bound defaults.
//  3. An empty mode becomes "iptables" (DefaultedMode is set), and an empty
//     detectLocalMode becomes "ClusterCIDR".
//  4. A non-empty --hostname-override, trimmed and lower-cased, overrides
//     hostnameOverride (from the file too); one that is only blanks is an
//     error.
//  5. The feature gates are applied (see FeatureGate).
//
// The configuration is then normalised the way kube-proxy's round trip
// through its internal type normalises it (fields of the other modes that
// the internal type does not hold are cleared; portRange is dropped), so that
// WriteConfigFile and a /configz endpoint show what kube-proxy shows.
func (o *Options) Complete(fs *pflag.FlagSet) error {
	if o.ConfigFile == "" && o.WriteConfigTo == "" {
		o.Config.HealthzBindAddress = addressFromDeprecatedFlags(o.Config.HealthzBindAddress, o.healthzPort)
		o.Config.MetricsBindAddress = addressFromDeprecatedFlags(o.Config.MetricsBindAddress, o.metricsPort)
	}

	if o.ConfigFile != "" {
		cfg, err := LoadConfigFile(o.Logger, o.ConfigFile)
		if err != nil {
			return err
		}
		// Explicit logging flags win over the file, or "--config ... -v=5"
		// would not work.
		if err := copyLoggingFlags(fs, &cfg.Logging); err != nil {
			return err
		}
		for _, name := range o.configFlags {
			if f := fs.Lookup(name); f != nil && f.Changed {
				o.Logger.Info("Ignoring command-line flag because a configuration file is given, as kube-proxy does", "flag", "--"+name, "config", o.ConfigFile)
			}
		}
		o.Config = cfg
	} else {
		o.applyFlagOnlySettings(fs)
		for _, name := range inapplicableFlags() {
			if f := fs.Lookup(name); f != nil && f.Changed && o.Config.Mode != ModeIPVS {
				o.Logger.Info("Ignoring command-line flag that only applies to kube-proxy's ipvs mode", "flag", "--"+name)
			}
		}
	}

	o.applyPlatformDefaults()

	if o.hostnameOverride != "" {
		name := strings.TrimSpace(o.hostnameOverride)
		if name == "" {
			return fmt.Errorf("empty hostname-override is invalid")
		}
		o.Config.HostnameOverride = strings.ToLower(name)
	}

	if err := setFeatureGates(o.Logger, o.featureGate, o.Config.FeatureGates); err != nil {
		return err
	}

	normalize(o.Config)
	return nil
}

// applyFlagOnlySettings applies the flags that do not map directly onto the
// configuration (kube-proxy's processV1Alpha1Flags).
func (o *Options) applyFlagOnlySettings(fs *pflag.FlagSet) {
	c := o.Config
	ipvs := c.Mode == ModeIPVS
	if fs.Changed("iptables-sync-period") && !ipvs {
		c.IPTables.SyncPeriod.Duration = o.iptablesSyncPeriod
	}
	if fs.Changed("iptables-min-sync-period") && !ipvs {
		c.IPTables.MinSyncPeriod.Duration = o.iptablesMinSyncPeriod
	}
	if fs.Changed("ipvs-sync-period") && ipvs {
		c.IPVS.SyncPeriod.Duration = o.ipvsSyncPeriod
	}
	if fs.Changed("ipvs-min-sync-period") && ipvs {
		c.IPVS.MinSyncPeriod.Duration = o.ipvsMinSyncPeriod
	}
	if fs.Changed("cluster-cidr") {
		c.ClusterCIDR = o.clusterCIDR
		o.emptyClusterCIDRFlag = o.clusterCIDR == ""
	}
}

// applyPlatformDefaults defaults mode and detectLocalMode, as kube-proxy's
// Linux platformApplyDefaults does.
func (o *Options) applyPlatformDefaults() {
	c := o.Config
	if c.Mode == "" {
		c.Mode = ModeIPTables
		o.DefaultedMode = true
	}
	if c.Mode == ModeNFTables && len(c.NodePortAddresses) == 0 {
		c.NodePortAddresses = []string{NodePortAddressesPrimary}
	}
	if c.DetectLocalMode == "" {
		o.Logger.V(4).Info("Defaulting detect-local-mode", "localModeClusterCIDR", "ClusterCIDR")
		c.DetectLocalMode = "ClusterCIDR"
	}
	o.Logger.V(2).Info("DetectLocalMode", "localMode", string(c.DetectLocalMode))
}

// normalize clears what kube-proxy's internal configuration type does not
// hold, so that the configuration reads as kube-proxy would print it. Only
// the iptables mode is handled; the others are rejected by Validate.
func normalize(c *v1alpha1.KubeProxyConfiguration) {
	c.APIVersion = v1alpha1.SchemeGroupVersion.String()
	c.Kind = "KubeProxyConfiguration"
	c.PortRange = ""
	if c.Mode != ModeIPTables {
		return
	}
	// The internal type has one sync period pair and one masqueradeAll,
	// taken from (and written back to) the iptables section in this mode.
	c.IPVS.SyncPeriod = metav1.Duration{}
	c.IPVS.MinSyncPeriod = metav1.Duration{}
	c.NFTables.SyncPeriod = metav1.Duration{}
	c.NFTables.MinSyncPeriod = metav1.Duration{}
	c.NFTables.MasqueradeAll = false
}

// copyLoggingFlags copies the logging flags set explicitly in fs onto to.
// Unset flags leave to alone; --vmodule entries from the command line come
// before the ones already in to, so that they take precedence.
func copyLoggingFlags(fs *pflag.FlagSet, to *logsapi.LoggingConfiguration) error {
	target := pflag.NewFlagSet("logging", pflag.ContinueOnError)
	fileVModule := to.VModule
	to.VModule = nil
	logsapi.AddFlags(to, target)

	var err error
	target.VisitAll(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		src := fs.Lookup(f.Name)
		if src == nil {
			err = fmt.Errorf("logging flag --%s is not registered", f.Name)
			return
		}
		if !src.Changed {
			return
		}
		if setErr := f.Value.Set(src.Value.String()); setErr != nil {
			err = fmt.Errorf("copying flag --%s: %w", f.Name, setErr)
		}
	})
	to.VModule = slices.Concat(to.VModule, fileVModule)
	return err
}

// ClusterCIDRs returns clusterCIDR split at commas, as kube-proxy reads it
// (nil when unset).
func (o *Options) ClusterCIDRs() []string {
	if o.emptyClusterCIDRFlag {
		return []string{""}
	}
	return splitClusterCIDR(o.Config.ClusterCIDR)
}

func splitClusterCIDR(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
