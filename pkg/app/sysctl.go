package app

import (
	"context"
	"runtime"

	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
)

// applyConntrackSysctls sets the conntrack table size and timeouts from the
// configuration, as kube-proxy does at start. Failures are logged: in a
// container without write access to /proc/sys the node's settings stay.
func applyConntrackSysctls(ctx context.Context, c v1alpha1.KubeProxyConntrackConfiguration) {
	logger := klog.FromContext(ctx)
	set := func(name string, v int) {
		if err := iptables.EnsureSysctl(ctx, name, v); err != nil {
			logger.Error(err, "Setting conntrack sysctl", "sysctl", name, "value", v)
		}
	}
	if c.MaxPerCore != nil && *c.MaxPerCore > 0 {
		max := int(*c.MaxPerCore) * runtime.NumCPU()
		if c.Min != nil && int(*c.Min) > max {
			max = int(*c.Min)
		}
		set("net/netfilter/nf_conntrack_max", max)
	}
	if d := c.TCPEstablishedTimeout; d != nil && d.Duration > 0 {
		set("net/netfilter/nf_conntrack_tcp_timeout_established", int(d.Seconds()))
	}
	if d := c.TCPCloseWaitTimeout; d != nil && d.Duration > 0 {
		set("net/netfilter/nf_conntrack_tcp_timeout_close_wait", int(d.Seconds()))
	}
	if c.TCPBeLiberal {
		set("net/netfilter/nf_conntrack_tcp_be_liberal", 1)
	}
	if d := c.UDPTimeout; d.Duration > 0 {
		set("net/netfilter/nf_conntrack_udp_timeout", int(d.Seconds()))
	}
	if d := c.UDPStreamTimeout; d.Duration > 0 {
		set("net/netfilter/nf_conntrack_udp_timeout_stream", int(d.Seconds()))
	}
}
