package healthcheck

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"
)

// ReasonFailedToStartServiceHealthcheck is the reason of the Warning event
// recorded on a Service whose health-check node port cannot be opened.
const ReasonFailedToStartServiceHealthcheck = "FailedToStartServiceHealthcheck"

// ErrServerClosed is returned by ServiceHealthServer methods once its Run
// has returned.
var ErrServerClosed = errors.New("service health server closed")

// HealthChecker reports the proxy's health; *ProxyHealth implements it.
type HealthChecker interface {
	// Health returns the proxy's health now.
	Health() HealthReport
}

// ServiceHealthConfig configures a ServiceHealthServer.
type ServiceHealthConfig struct {
	// NodeName is this node's name, used in event messages.
	NodeName string
	// Family is the IP family of the proxier the server belongs to: the
	// ports listen with "tcp4" for IPv4, "tcp6" for IPv6 and "tcp" when
	// empty.
	Family v1.IPFamily
	// NodePortAddresses are the nodePortAddresses CIDRs, with the
	// "primary" keyword already expanded. CIDRs of the other family are
	// ignored; when none is left, or one of them is 0.0.0.0/0 or ::/0, the
	// ports listen on all addresses, otherwise on each node address inside
	// one of the CIDRs.
	NodePortAddresses []string
	// Recorder records events on Services; nil records none.
	Recorder events.EventRecorder
	// Health tells whether the proxy is healthy; the ports answer 503
	// while it is not. Required; usually the *ProxyHealth.
	Health HealthChecker
	// Listener opens the ports; nil means NetListener.
	Listener Listener
	// InterfaceAddrs lists the node's addresses to match against
	// NodePortAddresses; nil means net.InterfaceAddrs.
	InterfaceAddrs func() ([]net.Addr, error)
}

// ServiceHealthServer serves the health-check node ports of Services with
// externalTrafficPolicy Local. Each port answers 200 when this node has
// ready local endpoints for the Service and the proxy is healthy, 503
// otherwise, so that load balancers send traffic only to nodes that can
// serve it locally.
//
// SyncServices and SyncEndpoints are safe for concurrent use. The ports are
// served by goroutines started by SyncServices; Run closes them all.
type ServiceHealthServer struct {
	logger    klog.Logger
	nodeName  string
	recorder  events.EventRecorder
	health    HealthChecker
	listener  Listener
	network   string
	addresses []string // IPs the ports listen on

	serving sync.WaitGroup

	mu       sync.RWMutex
	closed   bool
	services map[types.NamespacedName]*hcInstance
}

// hcInstance is the open health-check port of one Service.
type hcInstance struct {
	port      int
	servers   []*http.Server
	endpoints int // ready endpoints of the Service on this node
}

// NewServiceHealthServer returns a server that opens no port until
// SyncServices. It resolves NodePortAddresses against the node's addresses
// now, once, as kube-proxy does; when the addresses cannot be listed it logs
// and listens on all of them. It fails when cfg.Health is nil or a CIDR in
// NodePortAddresses is invalid.
func NewServiceHealthServer(logger klog.Logger, cfg ServiceHealthConfig) (*ServiceHealthServer, error) {
	if cfg.Health == nil {
		return nil, errors.New("service health server: no HealthChecker")
	}
	listener := cfg.Listener
	if listener == nil {
		listener = NetListener{}
	}
	interfaceAddrs := cfg.InterfaceAddrs
	if interfaceAddrs == nil {
		interfaceAddrs = net.InterfaceAddrs
	}
	network, addresses, err := listenAddresses(logger, cfg.Family, cfg.NodePortAddresses, interfaceAddrs)
	if err != nil {
		return nil, fmt.Errorf("service health server: %w", err)
	}
	logger.V(2).Info("Service health-check ports will listen", "network", network, "addresses", addresses)
	return &ServiceHealthServer{
		logger:    logger,
		nodeName:  cfg.NodeName,
		recorder:  cfg.Recorder,
		health:    cfg.Health,
		listener:  listener,
		network:   network,
		addresses: addresses,
		services:  map[types.NamespacedName]*hcInstance{},
	}, nil
}

// listenAddresses returns the network and the IPs the health-check ports of
// family listen on, following kube-proxy's nodePortAddresses rules.
func listenAddresses(logger klog.Logger, family v1.IPFamily, cidrStrings []string, interfaceAddrs func() ([]net.Addr, error)) (string, []string, error) {
	network, all := "tcp", net.IPv4zero.String()
	switch family {
	case v1.IPv4Protocol:
		network = "tcp4"
	case v1.IPv6Protocol:
		network, all = "tcp6", net.IPv6zero.String()
	}

	var cidrs []*net.IPNet
	for _, s := range cidrStrings {
		_, cidr, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			return "", nil, fmt.Errorf("invalid nodePortAddresses CIDR %q: %w", s, err)
		}
		if family != "" && (family == v1.IPv4Protocol) != netutils.IsIPv4CIDR(cidr) {
			continue
		}
		if ones, _ := cidr.Mask.Size(); ones == 0 {
			return network, []string{all}, nil
		}
		cidrs = append(cidrs, cidr)
	}
	if len(cidrs) == 0 {
		return network, []string{all}, nil
	}

	addrs, err := interfaceAddrs()
	if err != nil {
		logger.Error(err, "Failed to get node IP addresses matching nodePortAddresses, health-check ports will listen on all node addresses",
			"nodePortAddresses", cidrStrings)
		return network, []string{all}, nil
	}
	matched := map[string]bool{}
	for _, addr := range addrs {
		var ip net.IP
		switch a := addr.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		default:
			continue
		}
		for _, cidr := range cidrs {
			if cidr.Contains(ip) {
				matched[ip.String()] = true
				break
			}
		}
	}
	// No match means no port is opened at all, as in kube-proxy.
	return network, slices.Sorted(maps.Keys(matched)), nil
}

// SyncServices makes newServices, Service name to health-check node port,
// the set of open ports: ports of Services not in it, or whose port changed,
// are closed; ports of new Services are opened. A port that cannot be
// opened is logged and reported as a Warning event on its Service, and
// retried on the next call; the other Services are not affected, and the
// call still returns nil. It returns ErrServerClosed after Run returned.
func (s *ServiceHealthServer) SyncServices(newServices map[types.NamespacedName]int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}

	for nsn, svc := range s.services {
		if port, found := newServices[nsn]; !found || port != svc.port {
			s.logger.V(2).Info("Closing healthcheck", "service", nsn, "port", svc.port)
			s.closeInstance(nsn, svc)
			delete(s.services, nsn)
		}
	}

	for _, nsn := range slices.SortedFunc(maps.Keys(newServices), compareNames) {
		port := newServices[nsn]
		if s.services[nsn] != nil {
			s.logger.V(3).Info("Existing healthcheck", "service", nsn, "port", port)
			continue
		}
		s.logger.V(2).Info("Opening healthcheck", "service", nsn, "port", port)
		svc, err := s.openInstance(nsn, port)
		if err != nil {
			s.logger.Error(err, "Failed to start healthcheck", "node", s.nodeName, "service", nsn, "port", port)
			if s.recorder != nil {
				s.recorder.Eventf(
					&v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: nsn.Namespace, Name: nsn.Name},
					nil, v1.EventTypeWarning, ReasonFailedToStartServiceHealthcheck, "Listen",
					"node %s failed to start healthcheck %q on port %d: %v", s.nodeName, nsn.String(), port, err)
			}
			continue
		}
		s.services[nsn] = svc
	}
	return nil
}

// compareNames orders Service names by namespace, then name.
func compareNames(a, b types.NamespacedName) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// openInstance listens on port on every listen address and starts serving.
// Either every address is open or none is.
func (s *ServiceHealthServer) openInstance(nsn types.NamespacedName, port int) (*hcInstance, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("invalid health-check node port %d", port)
	}
	listeners := make([]net.Listener, 0, len(s.addresses))
	for _, ip := range s.addresses {
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		ln, err := s.listener.Listen(context.Background(), s.network, addr)
		if err != nil {
			// Close what is open so the port can be retried, or
			// taken over, later.
			for _, l := range listeners {
				_ = l.Close()
			}
			return nil, fmt.Errorf("listening on %s/%s: %w", s.network, addr, err)
		}
		listeners = append(listeners, ln)
	}

	svc := &hcInstance{port: port}
	handler := serviceHandler{nsn: nsn, server: s}
	for _, ln := range listeners {
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout}
		svc.servers = append(svc.servers, srv)
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			addr := ln.Addr().String()
			s.logger.V(3).Info("Starting goroutine for healthcheck", "service", nsn, "address", addr)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Error(err, "Healthcheck closed", "service", nsn, "address", addr)
				return
			}
			s.logger.V(3).Info("Healthcheck closed", "service", nsn, "address", addr)
		}()
	}
	return svc, nil
}

// closeInstance closes the listeners and connections of svc at once, so that
// its port is free again when this returns.
func (s *ServiceHealthServer) closeInstance(nsn types.NamespacedName, svc *hcInstance) {
	for _, srv := range svc.servers {
		if err := srv.Close(); err != nil {
			s.logger.Error(err, "Error closing server for health check service", "service", nsn)
		}
	}
}

// SyncEndpoints sets the number of ready local endpoints of each Service
// with an open health-check port; Services missing from newEndpoints have
// none. Entries for Services without a port are ignored. It returns
// ErrServerClosed after Run returned.
func (s *ServiceHealthServer) SyncEndpoints(newEndpoints map[types.NamespacedName]int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	for nsn, svc := range s.services {
		count := newEndpoints[nsn]
		if count != svc.endpoints {
			s.logger.V(3).Info("Reporting endpoints for healthcheck", "endpointCount", count, "service", nsn)
		}
		svc.endpoints = count
	}
	return nil
}

// Run waits for ctx to end, then closes every health-check port, waits for
// the goroutines serving them and returns nil. SyncServices and
// SyncEndpoints fail with ErrServerClosed afterwards.
func (s *ServiceHealthServer) Run(ctx context.Context) error {
	<-ctx.Done()
	s.mu.Lock()
	s.closed = true
	for nsn, svc := range s.services {
		s.closeInstance(nsn, svc)
	}
	s.services = map[types.NamespacedName]*hcInstance{}
	s.mu.Unlock()
	s.serving.Wait()
	return nil
}

// serviceHandler answers the health-check node port of one Service.
type serviceHandler struct {
	nsn    types.NamespacedName
	server *ServiceHealthServer
}

var _ http.Handler = serviceHandler{}

// serviceBodyFormat is kube-proxy's body, byte for byte: its indented
// template after dedent, tabs and all, without a trailing newline.
const serviceBodyFormat = "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}"

// ServeHTTP implements http.Handler.
func (h serviceHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.server.mu.RLock()
	svc, ok := h.server.services[h.nsn]
	count := 0
	if ok {
		count = svc.endpoints
	}
	h.server.mu.RUnlock()
	if !ok {
		// A request racing with the closing of the port. kube-proxy
		// answers an empty 200 here; 503 is the safe answer.
		h.server.logger.Error(nil, "Received request for closed healthcheck", "service", h.nsn)
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	proxyHealthy := h.server.health.Health().Healthy

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count > 0 && proxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = fmt.Fprintf(w, serviceBodyFormat, h.nsn.Namespace, h.nsn.Name, count, proxyHealthy)
}
