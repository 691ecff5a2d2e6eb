package app

import (
	"strings"
	"time"

	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/version"
)

// zpages are kube-proxy's /statusz and /flagz (ComponentStatusz and
// ComponentFlagz, beta and on in v1.37) on the metrics address: iptproxy
// stands in for kube-proxy, so the pages name kube-proxy and the version it
// is compatible with (the text /statusz adds iptproxy's own version).
func zpages(o *options.Options) metrics.ZPages {
	binary := strings.TrimPrefix(version.KubernetesCompat, "v")
	emulation := binary
	if parts := strings.SplitN(binary, ".", 3); len(parts) >= 2 {
		emulation = parts[0] + "." + parts[1]
	}
	z := metrics.ZPages{
		Component:        "kube-proxy",
		StartTime:        time.Now(),
		BinaryVersion:    binary,
		EmulationVersion: emulation,
		Implementation:   "iptproxy " + version.Version,
	}
	if fs := o.FlagSet(); fs != nil {
		z.Flags = metrics.FlagsOf(fs)
	}
	return z
}
