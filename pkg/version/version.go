// Package version holds iptproxy's version, set at build time with
// -ldflags "-X github.com/iptproxy/iptproxy/pkg/version.Version=...".
package version

// Version is iptproxy's version; "dev" for an unstamped build.
var Version = "dev"

// KubernetesCompat is the kube-proxy release iptproxy behaves like.
const KubernetesCompat = "v1.37.2"
