package options

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	baseversion "k8s.io/component-base/version"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// UnsupportedModeError is the validation error for a proxy mode other than
// iptables.
type UnsupportedModeError struct {
	// Mode is the configured mode.
	Mode v1alpha1.ProxyMode
}

// Error implements error.
func (e *UnsupportedModeError) Error() string {
	return fmt.Sprintf("iptproxy implements only the iptables proxy mode; got %q", string(e.Mode))
}

// Validate checks the completed configuration with kube-proxy's validation
// (pkg/proxy/apis/config/validation in v1.37) as far as it concerns the
// iptables mode, and rejects every mode but iptables with an
// *UnsupportedModeError. All problems are reported together, one per line
// (errors.Join); field paths are the configuration file's (e.g.
// "iptables.masqueradeBit").
func (o *Options) Validate() error {
	c := o.Config
	var errs []error
	add := func(list field.ErrorList) {
		for _, e := range list {
			errs = append(errs, e)
		}
	}

	if c.Mode != "" && c.Mode != ModeIPTables {
		errs = append(errs, &UnsupportedModeError{Mode: c.Mode})
	}

	// Gates iptproxy does not know were logged by Complete; only the known
	// ones can be invalid.
	fg := newFeatureGate()
	known, _ := splitFeatureGates(fg, c.FeatureGates)
	if err := applyFeatureGates(o.Logger.V(5), fg, known); err != nil {
		add(field.ErrorList{field.Invalid(field.NewPath("featureGates"), c.FeatureGates, err.Error())})
	}

	if b := c.IPTables.MasqueradeBit; b != nil && (*b < 0 || *b > 31) {
		add(field.ErrorList{field.Invalid(field.NewPath("iptables", "masqueradeBit"), *b, "must be within the range [0, 31]")})
	}
	add(validateConntrack(c.Conntrack, field.NewPath("conntrack")))
	if a := c.OOMScoreAdj; a != nil && (*a < -1000 || *a > 1000) {
		add(field.ErrorList{field.Invalid(field.NewPath("oomScoreAdj"), *a, "must be within the range [-1000, 1000]")})
	}
	if c.ClientConnection.Burst < 0 {
		add(field.ErrorList{field.Invalid(field.NewPath("clientConnection", "burst"), c.ClientConnection.Burst, "must be greater than or equal to 0")})
	}

	if c.ConfigSyncPeriod.Duration <= 0 {
		add(field.ErrorList{field.Invalid(field.NewPath("configSyncPeriod"), c.ConfigSyncPeriod, "must be greater than 0")})
	}
	syncPath := field.NewPath("iptables", "syncPeriod")
	minSyncPath := field.NewPath("iptables", "minSyncPeriod")
	sync, minSync := c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod
	if sync.Duration <= 0 {
		add(field.ErrorList{field.Invalid(syncPath, sync, "must be greater than 0")})
	}
	if minSync.Duration < 0 {
		add(field.ErrorList{field.Invalid(minSyncPath, minSync, "must be greater than or equal to 0")})
	}
	if minSync.Duration > sync.Duration {
		add(field.ErrorList{field.Invalid(syncPath, sync, fmt.Sprintf("must be greater than or equal to %s (%s)", minSyncPath, minSync.Duration))})
	}

	if parseIP(c.BindAddress) == nil {
		add(field.ErrorList{field.Invalid(field.NewPath("bindAddress"), c.BindAddress, "not a valid textual representation of an IP address")})
	}
	if c.HealthzBindAddress != "" {
		add(validateHostPort(c.HealthzBindAddress, field.NewPath("healthzBindAddress")))
	}
	// kube-proxy requires the metrics address even though --metrics-port=0
	// empties it.
	add(validateHostPort(c.MetricsBindAddress, field.NewPath("metricsBindAddress")))

	add(validateNodePortAddresses(c.NodePortAddresses, field.NewPath("nodePortAddresses")))
	add(validateShowHiddenMetricsForVersion(c.ShowHiddenMetricsForVersion, field.NewPath("showHiddenMetricsForVersion")))
	add(validateDetectLocal(c.DetectLocalMode, c.DetectLocal, o.ClusterCIDRs()))
	add(logsapi.Validate(&c.Logging, fg, field.NewPath("logging")))

	return errors.Join(errs...)
}

func validateConntrack(c v1alpha1.KubeProxyConntrackConfiguration, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.MaxPerCore != nil && *c.MaxPerCore < 0 {
		errs = append(errs, field.Invalid(path.Child("maxPerCore"), *c.MaxPerCore, "must be greater than or equal to 0"))
	}
	if c.Min != nil && *c.Min < 0 {
		errs = append(errs, field.Invalid(path.Child("min"), *c.Min, "must be greater than or equal to 0"))
	}
	nonNegative := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, field.Invalid(path.Child(name), metav1.Duration{Duration: d}, "must be greater than or equal to 0"))
		}
	}
	if c.TCPEstablishedTimeout != nil {
		nonNegative("tcpEstablishedTimeout", c.TCPEstablishedTimeout.Duration)
	}
	if c.TCPCloseWaitTimeout != nil {
		nonNegative("tcpCloseWaitTimeout", c.TCPCloseWaitTimeout.Duration)
	}
	nonNegative("udpTimeout", c.UDPTimeout.Duration)
	nonNegative("udpStreamTimeout", c.UDPStreamTimeout.Duration)
	return errs
}

func validateHostPort(input string, path *field.Path) field.ErrorList {
	host, port, err := net.SplitHostPort(input)
	if err != nil {
		return field.ErrorList{field.Invalid(path, input, "must be IP:port")}
	}
	var errs field.ErrorList
	if parseIP(host) == nil {
		errs = append(errs, field.Invalid(path, host, "must be a valid IP"))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		errs = append(errs, field.Invalid(path, port, "must be a valid port"))
	}
	return errs
}

func validateNodePortAddresses(addrs []string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]bool{}
	for i, a := range addrs {
		switch a {
		case NodePortAddressesPrimary, NodePortAddressesLocalhost, NodePortAddressesAll:
			if seen[a] {
				errs = append(errs, field.Duplicate(path.Index(i), a))
			}
			seen[a] = true
			continue
		}
		if _, _, err := netutils.ParseCIDRSloppy(a); err != nil {
			errs = append(errs, field.Invalid(path.Index(i), a, "must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'"))
		}
	}
	return errs
}

// validateShowHiddenMetricsForVersion accepts "" and the minor version before
// the Kubernetes version iptproxy emulates (v1.37, so "1.36").
func validateShowHiddenMetricsForVersion(v string, path *field.Path) field.ErrorList {
	if v == "" {
		return nil
	}
	current := baseversion.DefaultKubeBinaryVersion
	cur, err := parseMajorMinor(current)
	if err != nil {
		return field.ErrorList{field.InternalError(path, fmt.Errorf("parsing Kubernetes version %q: %w", current, err))}
	}
	valid := fmt.Sprintf("%d.%d", cur[0], cur[1]-1)
	if v != valid {
		return field.ErrorList{field.Invalid(path, v, fmt.Sprintf("must be omitted or have the value '%s'; only the previous minor version is allowed", valid))}
	}
	return nil
}

func parseMajorMinor(s string) ([2]int, error) {
	var mm [2]int
	if _, err := fmt.Sscanf(s, "%d.%d", &mm[0], &mm[1]); err != nil {
		return mm, err
	}
	return mm, nil
}

func validateDetectLocal(mode v1alpha1.LocalMode, c v1alpha1.DetectLocalConfiguration, clusterCIDRs []string) field.ErrorList {
	switch mode {
	case "", "ClusterCIDR":
		if mode == "ClusterCIDR" && len(clusterCIDRs) > 0 {
			return validateDualStackCIDRs(clusterCIDRs, field.NewPath("clusterCIDR"))
		}
		return nil
	case "NodeCIDR":
		return nil
	case "BridgeInterface":
		if c.BridgeInterface == "" {
			return field.ErrorList{field.Invalid(field.NewPath("detectLocal", "bridgeInterface"), c.BridgeInterface, "must not be empty")}
		}
		return nil
	case "InterfaceNamePrefix":
		if c.InterfaceNamePrefix == "" {
			return field.ErrorList{field.Invalid(field.NewPath("detectLocal", "interfaceNamePrefix"), c.InterfaceNamePrefix, "must not be empty")}
		}
		return nil
	}
	return field.ErrorList{field.NotSupported(field.NewPath("detectLocalMode"), string(mode),
		[]string{"ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""})}
}

func validateDualStackCIDRs(cidrs []string, path *field.Path) field.ErrorList {
	const pairMsg = "must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]"
	if len(cidrs) > 2 {
		return field.ErrorList{field.Invalid(path, cidrs, pairMsg)}
	}
	var errs field.ErrorList
	for i, s := range cidrs {
		if _, _, err := netutils.ParseCIDRSloppy(s); err != nil {
			errs = append(errs, field.Invalid(path.Index(i), s, "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)"))
		}
	}
	if len(cidrs) == 2 {
		if dual, err := netutils.IsDualStackCIDRStrings(cidrs); err == nil && !dual {
			errs = append(errs, field.Invalid(path, cidrs, pairMsg))
		}
	}
	return errs
}
