package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/httpserve"
)

// DefaultBindAddress is kube-proxy's default healthzBindAddress.
const DefaultBindAddress = "0.0.0.0:10256"

// HealthzServer serves a ProxyHealth as /healthz and /livez on the healthz
// bind address. Other paths are 404.
type HealthzServer struct {
	bindAddress string
	health      *ProxyHealth
}

// NewHealthzServer returns a server for health on bindAddress (host:port).
// It opens nothing until Run.
func NewHealthzServer(bindAddress string, health *ProxyHealth) *HealthzServer {
	return &HealthzServer{bindAddress: bindAddress, health: health}
}

// Handler returns the server's request router.
func (s *HealthzServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz", s.health.HealthzHandler())
	mux.Handle("/livez", s.health.LivezHandler())
	return mux
}

// Run listens on the bind address and serves until ctx ends, then shuts the
// server down gracefully and returns nil. It returns an error when it cannot
// listen or the server fails; unlike kube-proxy it does not retry, the caller
// decides (kube-proxy's bindAddressHardFail).
func (s *HealthzServer) Run(ctx context.Context) error {
	if s.bindAddress == "" {
		return errors.New("proxy healthz server: empty bind address")
	}
	ln, err := NetListener{}.Listen(ctx, "tcp", s.bindAddress)
	if err != nil {
		return fmt.Errorf("starting proxy healthz server on %s: %w", s.bindAddress, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on an already open listener, which it closes on return.
func (s *HealthzServer) Serve(ctx context.Context, ln net.Listener) error {
	logger := klog.FromContext(ctx)
	addr := ln.Addr().String()
	logger.V(3).Info("Starting healthz HTTP server", "address", addr)
	if err := httpserve.UntilDone(ctx, newHTTPServer(ctx, s.Handler()), ln); err != nil {
		return fmt.Errorf("proxy healthz server on %s: %w", addr, err)
	}
	logger.V(3).Info("Stopped healthz HTTP server", "address", addr)
	return nil
}
