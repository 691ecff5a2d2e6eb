// Package healthcheck serves iptproxy's health endpoints the way kube-proxy
// does:
//
//   - ProxyHealth is the node-level health state: per IP family, when an
//     update was queued and when the rules were last synced, and whether the
//     Node may receive load-balancer traffic. HealthzServer serves it as
//     /healthz and /livez on the healthz bind address (default
//     0.0.0.0:10256).
//   - ServiceHealthServer opens one health-check node port per Service with
//     externalTrafficPolicy Local and answers whether this node has local
//     endpoints for it.
//
// Status codes, headers and JSON bodies match kube-proxy v1.37 so load
// balancers and probes cannot tell the difference.
package healthcheck

import (
	"context"
	"net"
	"net/http"
	"time"
)

const (
	// readHeaderTimeout bounds how long a client may take to send headers.
	readHeaderTimeout = 10 * time.Second
)

// Listener opens the TCP listeners health servers serve on. NetListener is
// the real one; tests inject fakes so that no port is bound.
type Listener interface {
	// Listen announces on the local network address, as net.Listen.
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// NetListener implements Listener with the operating system's sockets.
type NetListener struct{}

var _ Listener = NetListener{}

// Listen implements Listener with net.ListenConfig.
func (NetListener) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

// ProbeCounter counts the answers to /healthz and /livez by HTTP status code
// (kubeproxy_proxy_healthz_total and kubeproxy_proxy_livez_total).
// *metrics.Metrics implements it.
type ProbeCounter interface {
	// ObserveHealthz counts one /healthz answer.
	ObserveHealthz(code int)
	// ObserveLivez counts one /livez answer.
	ObserveLivez(code int)
}

// newHTTPServer returns an http.Server for handler whose request contexts
// derive from ctx.
func newHTTPServer(ctx context.Context, handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
}
