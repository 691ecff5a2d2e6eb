package metrics

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/httpserve"
)

const (
	// DefaultBindAddress is kube-proxy's default metricsBindAddress.
	DefaultBindAddress = "127.0.0.1:10249"

	// ProxyMode is what /proxyMode answers: iptproxy stands in for
	// kube-proxy's iptables mode.
	ProxyMode = "iptables"

	// readHeaderTimeout bounds how long a client may take to send headers.
	readHeaderTimeout = 10 * time.Second
)

// Server is the metrics HTTP server, kube-proxy's metricsBindAddress
// endpoint. It serves:
//
//   - /metrics: the Metrics registry;
//   - /proxyMode: "iptables";
//   - /healthz and /healthz/ping: a liveness "ping" of the HTTP server
//     itself, as kube-proxy does on this port (it always answers "ok"; the
//     proxy's real health is on the healthz port, see package healthcheck);
//   - /statusz and /flagz, kube-proxy's z-pages, once SetZPages is called
//     (see zpages.go);
//   - whatever was added with Handle.
//
// kube-proxy serves no /livez on this port. A caller that wants the proxy's
// health here can mount it with Handle("/healthz", ...) and
// Handle("/livez", ...), which replace the defaults.
type Server struct {
	bindAddress string
	metrics     http.Handler

	mu     sync.Mutex
	extra  map[string]http.Handler
	zpages *ZPages
}

// NewServer returns a metrics server for bindAddress (host:port) exporting m.
// It opens nothing until Run.
func NewServer(bindAddress string, m *Metrics) *Server {
	return &Server{
		bindAddress: bindAddress,
		metrics:     m.Handler(),
		extra:       map[string]http.Handler{},
	}
}

// Handle mounts handler at pattern (http.ServeMux syntax), for example
// /configz or /debug/pprof/. A pattern equal to one of the defaults
// (/metrics, /proxyMode, /healthz, /healthz/ping) replaces it. Call it before
// Run or Handler; it returns an error, and changes nothing, when pattern is
// invalid or conflicts with a pattern already mounted.
func (s *Server) Handle(pattern string, handler http.Handler) error {
	if handler == nil {
		return fmt.Errorf("mounting %q: nil handler", pattern)
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	candidate := maps.Clone(s.extra)
	candidate[pattern] = handler
	if _, err := s.buildMux(candidate); err != nil {
		return fmt.Errorf("mounting %q: %w", pattern, err)
	}
	s.extra = candidate
	return nil
}

// Handler returns the server's request router: the defaults plus everything
// mounted with Handle so far.
func (s *Server) Handler() http.Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	mux, err := s.buildMux(s.extra)
	if err != nil {
		// Handle validated every pattern against the same defaults.
		panic(fmt.Sprintf("metrics server mux: %v", err))
	}
	return mux
}

// buildMux registers the defaults not overridden by extra, then extra, on a
// new ServeMux. It turns ServeMux's registration panics into errors.
func (s *Server) buildMux(extra map[string]http.Handler) (mux *http.ServeMux, err error) {
	defer func() {
		if r := recover(); r != nil {
			mux, err = nil, fmt.Errorf("%v", r)
		}
	}()

	mux = http.NewServeMux()
	defaults := map[string]http.Handler{
		"/metrics":      s.metrics,
		"/proxyMode":    http.HandlerFunc(serveProxyMode),
		"/healthz":      http.HandlerFunc(servePingHealthz),
		"/healthz/ping": http.HandlerFunc(servePing),
	}
	if s.zpages != nil {
		paths := slices.Concat(slices.Collect(maps.Keys(defaults)), slices.Collect(maps.Keys(extra)))
		maps.Copy(defaults, s.zpages.handlers(paths))
	}
	for p, h := range defaults {
		if _, overridden := extra[p]; !overridden {
			mux.Handle(p, h)
		}
	}
	// Sorted so that a conflict is reported the same way every time.
	for _, p := range slices.Sorted(maps.Keys(extra)) {
		mux.Handle(p, extra[p])
	}
	return mux, nil
}

// Run listens on the bind address and serves until ctx ends, then shuts the
// server down gracefully and returns nil. It returns an error when it cannot
// listen or the server fails; unlike kube-proxy it does not retry, the caller
// decides (kube-proxy's bindAddressHardFail).
func (s *Server) Run(ctx context.Context) error {
	if s.bindAddress == "" {
		return errors.New("metrics server: empty bind address")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.bindAddress)
	if err != nil {
		return fmt.Errorf("starting metrics server on %s: %w", s.bindAddress, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on an already open listener, which it closes on return.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	logger := klog.FromContext(ctx)
	logger.V(3).Info("Starting metrics HTTP server", "address", ln.Addr().String())
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	if err := httpserve.UntilDone(ctx, srv, ln); err != nil {
		return fmt.Errorf("metrics server on %s: %w", ln.Addr().String(), err)
	}
	logger.V(3).Info("Stopped metrics HTTP server", "address", ln.Addr().String())
	return nil
}

// serveProxyMode answers /proxyMode as kube-proxy does.
func serveProxyMode(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = fmt.Fprint(w, ProxyMode)
}

// servePingHealthz answers /healthz like k8s.io/apiserver's healthz handler
// with only its "ping" check installed, which is what kube-proxy mounts on
// the metrics port: "ok", or with ?verbose the per-check listing. ?exclude=
// is honoured the same way.
func servePingHealthz(w http.ResponseWriter, r *http.Request) {
	const check = "ping"
	query := r.URL.Query()

	unknownExcluded := map[string]bool{}
	for _, name := range query["exclude"] {
		unknownExcluded[name] = true
	}
	var out strings.Builder
	if unknownExcluded[check] {
		delete(unknownExcluded, check)
		fmt.Fprintf(&out, "[+]%s excluded: ok\n", check)
	} else {
		fmt.Fprintf(&out, "[+]%s ok\n", check)
	}
	if len(unknownExcluded) > 0 {
		quoted := make([]string, 0, len(unknownExcluded))
		for _, name := range slices.Sorted(maps.Keys(unknownExcluded)) {
			quoted = append(quoted, fmt.Sprintf("%q", name))
		}
		fmt.Fprintf(&out, "warn: some health checks cannot be excluded: no matches for %s\n", strings.Join(quoted, ","))
	}

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if _, verbose := query["verbose"]; !verbose {
		_, _ = fmt.Fprint(w, "ok")
		return
	}
	_, _ = fmt.Fprint(w, out.String())
	_, _ = fmt.Fprintf(w, "%s check passed\n", "healthz")
}

// servePing answers /healthz/ping: the single check, always "ok".
func servePing(w http.ResponseWriter, _ *http.Request) {
	_, _ = fmt.Fprint(w, "ok")
}
