package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"
)

// fakeNet is an in-memory network: Listen registers a listener under its
// address and the HTTP client it hands out dials those listeners over
// net.Pipe, so the real http.Server code runs without binding any port.
type fakeNet struct {
	mu        sync.Mutex
	listeners map[string]*fakeListener // open, by address
	failures  map[string]error         // addresses Listen refuses
	calls     []string                 // "network address" of every Listen
}

func newFakeNet() *fakeNet {
	return &fakeNet{listeners: map[string]*fakeListener{}, failures: map[string]error{}}
}

func (f *fakeNet) Listen(_ context.Context, network, address string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, network+" "+address)
	if err := f.failures[address]; err != nil {
		return nil, err
	}
	if _, busy := f.listeners[address]; busy {
		return nil, &net.OpError{Op: "listen", Net: network, Err: syscall.EADDRINUSE}
	}
	l := &fakeListener{net: f, addr: address, conns: make(chan net.Conn), done: make(chan struct{})}
	f.listeners[address] = l
	return l, nil
}

// open returns the addresses being listened on, sorted.
func (f *fakeNet) open() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var open []string
	for a := range f.listeners {
		open = append(open, a)
	}
	slices.Sort(open)
	return open
}

func (f *fakeNet) listenCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeNet) dial(ctx context.Context, _, address string) (net.Conn, error) {
	f.mu.Lock()
	l := f.listeners[address]
	f.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	if l == nil {
		return nil, refused
	}
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
	case <-ctx.Done():
	}
	_, _ = client.Close(), server.Close()
	return nil, refused
}

func (f *fakeNet) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: f.dial, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
}

type fakeListener struct {
	net   *fakeNet
	addr  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *fakeListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.net.mu.Lock()
		defer l.net.mu.Unlock()
		if l.net.listeners[l.addr] == l {
			delete(l.net.listeners, l.addr)
		}
	})
	return nil
}

func (l *fakeListener) Addr() net.Addr { return fakeAddr(l.addr) }

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// fakeHealth is a HealthChecker whose answer the test sets.
type fakeHealth struct{ unhealthy atomic.Bool }

func (h *fakeHealth) Health() HealthReport { return HealthReport{Healthy: !h.unhealthy.Load()} }

type response struct {
	code   int
	weight string
	body   string
}

func get(t *testing.T, c *http.Client, url string) (response, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return response{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	for h, want := range map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("GET %s: %s %q, want %q", url, h, got, want)
		}
	}
	return response{code: resp.StatusCode, weight: resp.Header.Get("X-Load-Balancing-Endpoint-Weight"), body: string(body)}, nil
}

func wantBody(ns, name string, endpoints int, healthy bool) string {
	return "{\n" +
		"\t\"service\": {\n" +
		"\t\t\"namespace\": \"" + ns + "\",\n" +
		"\t\t\"name\": \"" + name + "\"\n" +
		"\t},\n" +
		"\t\"localEndpoints\": " + strconv.Itoa(endpoints) + ",\n" +
		"\t\"serviceProxyHealthy\": " + strconv.FormatBool(healthy) + "\n" +
		"}"
}

func newTestServer(t *testing.T, cfg ServiceHealthConfig) *ServiceHealthServer {
	t.Helper()
	logger, _ := ktesting.NewTestContext(t)
	s, err := NewServiceHealthServer(logger, cfg)
	if err != nil {
		t.Fatalf("NewServiceHealthServer: %v", err)
	}
	return s
}

// runServer runs s until the test ends and checks that Run returns nil.
func runServer(t *testing.T, s *ServiceHealthServer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return: some health-check server was never closed")
		}
	})
}

var (
	svcA = types.NamespacedName{Namespace: "ns", Name: "a"}
	svcB = types.NamespacedName{Namespace: "ns", Name: "b"}
	svcC = types.NamespacedName{Namespace: "other", Name: "c"}
)

func TestServiceHealthAnswers(t *testing.T) {
	tests := []struct {
		name      string
		endpoints map[types.NamespacedName]int
		unhealthy bool
		want      response
	}{{
		name:      "local endpoints and a healthy proxy",
		endpoints: map[types.NamespacedName]int{svcA: 3},
		want:      response{code: 200, weight: "3", body: wantBody("ns", "a", 3, true)},
	}, {
		name:      "one local endpoint",
		endpoints: map[types.NamespacedName]int{svcA: 1},
		want:      response{code: 200, weight: "1", body: wantBody("ns", "a", 1, true)},
	}, {
		name:      "zero local endpoints",
		endpoints: map[types.NamespacedName]int{svcA: 0},
		want:      response{code: 503, weight: "0", body: wantBody("ns", "a", 0, true)},
	}, {
		name:      "not in the endpoints map",
		endpoints: map[types.NamespacedName]int{svcB: 5},
		want:      response{code: 503, weight: "0", body: wantBody("ns", "a", 0, true)},
	}, {
		name:      "local endpoints but the proxy is unhealthy",
		endpoints: map[types.NamespacedName]int{svcA: 2},
		unhealthy: true,
		want:      response{code: 503, weight: "2", body: wantBody("ns", "a", 2, false)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fn := newFakeNet()
			health := &fakeHealth{}
			health.unhealthy.Store(tt.unhealthy)
			s := newTestServer(t, ServiceHealthConfig{NodeName: "node-a", Family: v1.IPv4Protocol, Health: health, Listener: fn})
			runServer(t, s)

			if err := s.SyncServices(map[types.NamespacedName]int{svcA: 30001}); err != nil {
				t.Fatalf("SyncServices: %v", err)
			}
			if err := s.SyncEndpoints(tt.endpoints); err != nil {
				t.Fatalf("SyncEndpoints: %v", err)
			}
			got, err := get(t, fn.client(), "http://0.0.0.0:30001/")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			if got != tt.want {
				t.Errorf("answer\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestServiceHealthSyncServices(t *testing.T) {
	fn := newFakeNet()
	recorder := events.NewFakeRecorder(10)
	s := newTestServer(t, ServiceHealthConfig{NodeName: "node-a", Family: v1.IPv4Protocol, Health: &fakeHealth{}, Listener: fn, Recorder: recorder})
	runServer(t, s)
	c := fn.client()

	steps := []struct {
		name      string
		services  map[types.NamespacedName]int
		endpoints map[types.NamespacedName]int
		// port -> expected code; ports not listed must refuse connections.
		answers   map[int]int
		newListen []string
	}{{
		name:     "nothing",
		services: map[types.NamespacedName]int{},
		answers:  map[int]int{},
	}, {
		name:      "open three ports",
		services:  map[types.NamespacedName]int{svcA: 30001, svcB: 30002, svcC: 30003},
		endpoints: map[types.NamespacedName]int{svcA: 1, svcC: 2},
		answers:   map[int]int{30001: 200, 30002: 503, 30003: 200},
		newListen: []string{"tcp4 0.0.0.0:30001", "tcp4 0.0.0.0:30002", "tcp4 0.0.0.0:30003"},
	}, {
		name:      "unchanged services keep their listeners, endpoints move",
		services:  map[types.NamespacedName]int{svcA: 30001, svcB: 30002, svcC: 30003},
		endpoints: map[types.NamespacedName]int{svcB: 4, svcC: 2, {Namespace: "ns", Name: "no-port"}: 9},
		answers:   map[int]int{30001: 503, 30002: 200, 30003: 200},
	}, {
		name:      "changed port is reopened, removed service is closed",
		services:  map[types.NamespacedName]int{svcA: 30011, svcB: 30002},
		endpoints: map[types.NamespacedName]int{svcA: 1, svcB: 4},
		answers:   map[int]int{30011: 200, 30002: 200},
		newListen: []string{"tcp4 0.0.0.0:30011"},
	}, {
		name:     "a port can move to another service",
		services: map[types.NamespacedName]int{svcC: 30002},
		answers:  map[int]int{30002: 503},
		// Closing ns/b and opening other/c on its port in one call.
		newListen: []string{"tcp4 0.0.0.0:30002"},
	}, {
		name:     "everything removed",
		services: map[types.NamespacedName]int{},
		answers:  map[int]int{},
	}}

	allPorts := []int{30001, 30002, 30003, 30011}
	seen := 0
	for _, step := range steps {
		if err := s.SyncServices(step.services); err != nil {
			t.Fatalf("%s: SyncServices: %v", step.name, err)
		}
		if err := s.SyncEndpoints(step.endpoints); err != nil {
			t.Fatalf("%s: SyncEndpoints: %v", step.name, err)
		}
		calls := fn.listenCalls()
		if got := calls[seen:]; !slices.Equal(got, step.newListen) {
			t.Errorf("%s: new Listen calls %v, want %v", step.name, got, step.newListen)
		}
		seen = len(calls)

		var wantOpen []string
		for _, port := range allPorts {
			url := fmt.Sprintf("http://0.0.0.0:%d/", port)
			got, err := get(t, c, url)
			want, open := step.answers[port]
			switch {
			case open && err != nil:
				t.Errorf("%s: GET %s: %v, want %d", step.name, url, err, want)
			case open && got.code != want:
				t.Errorf("%s: GET %s: %d, want %d", step.name, url, got.code, want)
			case !open && err == nil:
				t.Errorf("%s: GET %s answered %d, want the port closed", step.name, url, got.code)
			}
			if open {
				wantOpen = append(wantOpen, fmt.Sprintf("0.0.0.0:%d", port))
			}
		}
		if got := fn.open(); !slices.Equal(got, wantOpen) {
			t.Errorf("%s: open listeners %v, want %v", step.name, got, wantOpen)
		}
	}
	select {
	case e := <-recorder.Events:
		t.Errorf("unexpected event %q", e)
	default:
	}
}

func TestServiceHealthListenFailure(t *testing.T) {
	const wantEvent = `Warning FailedToStartServiceHealthcheck node node-a failed to start healthcheck "ns/a" on port 30001: `

	tests := []struct {
		name      string
		cidrs     []string
		addrs     []net.Addr
		failures  map[string]error
		port      int
		wantEvent string
		// listeners that must be closed again after the failure
		wantOpen []string
	}{{
		name:      "port in use",
		failures:  map[string]error{"0.0.0.0:30001": &net.OpError{Op: "listen", Net: "tcp4", Err: syscall.EADDRINUSE}},
		port:      30001,
		wantEvent: wantEvent + "listening on tcp4/0.0.0.0:30001: listen tcp4: address already in use",
	}, {
		name:     "second address fails: the first is closed again",
		cidrs:    []string{"10.0.0.0/8"},
		addrs:    []net.Addr{ipNet("10.0.0.1/8"), ipNet("10.1.0.1/8")},
		failures: map[string]error{"10.1.0.1:30001": errors.New("boom")},
		port:     30001,
		wantEvent: wantEvent +
			"listening on tcp4/10.1.0.1:30001: boom",
	}, {
		name:      "invalid port",
		port:      70000,
		wantEvent: `Warning FailedToStartServiceHealthcheck node node-a failed to start healthcheck "ns/a" on port 70000: invalid health-check node port 70000`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fn := newFakeNet()
			fn.failures = tt.failures
			recorder := events.NewFakeRecorder(10)
			s := newTestServer(t, ServiceHealthConfig{
				NodeName: "node-a", Family: v1.IPv4Protocol, NodePortAddresses: tt.cidrs,
				Health: &fakeHealth{}, Listener: fn, Recorder: recorder,
				InterfaceAddrs: func() ([]net.Addr, error) { return tt.addrs, nil },
			})
			runServer(t, s)

			services := map[types.NamespacedName]int{svcA: tt.port, svcB: 30002}
			if err := s.SyncServices(services); err != nil {
				t.Fatalf("SyncServices: %v, want nil (failures are per service)", err)
			}
			select {
			case got := <-recorder.Events:
				if got != tt.wantEvent {
					t.Errorf("event\n got %q\nwant %q", got, tt.wantEvent)
				}
			default:
				t.Errorf("no event, want %q", tt.wantEvent)
			}
			for _, a := range fn.open() {
				if strings.HasSuffix(a, ":"+strconv.Itoa(tt.port)) {
					t.Errorf("listener %s left open after the failure", a)
				}
			}
			// The other service is not affected.
			if !slices.ContainsFunc(fn.open(), func(a string) bool { return strings.HasSuffix(a, ":30002") }) {
				t.Errorf("ns/b has no listener: open %v", fn.open())
			}

			// The failed port is retried on the next sync.
			before := len(fn.listenCalls())
			fn.mu.Lock()
			fn.failures = nil
			fn.mu.Unlock()
			if err := s.SyncServices(services); err != nil {
				t.Fatalf("second SyncServices: %v", err)
			}
			retried := len(fn.listenCalls()) > before
			if tt.port <= 65535 && !retried {
				t.Error("failed port not retried on the next SyncServices")
			}
		})
	}
}

func ipNet(cidr string) *net.IPNet {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func TestListenAddresses(t *testing.T) {
	hostAddrs := []net.Addr{
		ipNet("127.0.0.1/8"),
		ipNet("10.0.0.5/24"),
		ipNet("192.168.1.7/24"),
		&net.IPAddr{IP: net.ParseIP("10.0.0.6")},
		ipNet("::1/128"),
		ipNet("fd00::5/64"),
	}
	tests := []struct {
		name        string
		family      v1.IPFamily
		cidrs       []string
		addrsErr    error
		wantNetwork string
		want        []string
		wantErr     bool
	}{
		{name: "IPv4, unset", family: v1.IPv4Protocol, wantNetwork: "tcp4", want: []string{"0.0.0.0"}},
		{name: "IPv6, unset", family: v1.IPv6Protocol, wantNetwork: "tcp6", want: []string{"::"}},
		{name: "no family, unset", wantNetwork: "tcp", want: []string{"0.0.0.0"}},
		{name: "IPv4 zero CIDR wins", family: v1.IPv4Protocol, cidrs: []string{"10.0.0.0/24", "0.0.0.0/0"}, wantNetwork: "tcp4", want: []string{"0.0.0.0"}},
		{name: "IPv4 matching", family: v1.IPv4Protocol, cidrs: []string{"10.0.0.0/24", "fd00::/64"}, wantNetwork: "tcp4", want: []string{"10.0.0.5", "10.0.0.6"}},
		{name: "IPv4 loopback and another", family: v1.IPv4Protocol, cidrs: []string{"127.0.0.0/8", "192.168.1.0/24"}, wantNetwork: "tcp4", want: []string{"127.0.0.1", "192.168.1.7"}},
		{name: "IPv6 matching", family: v1.IPv6Protocol, cidrs: []string{"10.0.0.0/24", "fd00::/64"}, wantNetwork: "tcp6", want: []string{"fd00::5"}},
		{name: "only other family's CIDRs: all addresses", family: v1.IPv6Protocol, cidrs: []string{"10.0.0.0/24"}, wantNetwork: "tcp6", want: []string{"::"}},
		{name: "no address matches: listen nowhere", family: v1.IPv4Protocol, cidrs: []string{"172.16.0.0/12"}, wantNetwork: "tcp4", want: []string{}},
		{name: "interfaces unreadable: all addresses", family: v1.IPv4Protocol, cidrs: []string{"10.0.0.0/24"}, addrsErr: errors.New("no netlink"), wantNetwork: "tcp4", want: []string{"0.0.0.0"}},
		{name: "invalid CIDR", family: v1.IPv4Protocol, cidrs: []string{"10.0.0.0/33"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			network, got, err := listenAddresses(logger, tt.family, tt.cidrs, func() ([]net.Addr, error) { return hostAddrs, tt.addrsErr })
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if network != tt.wantNetwork || !slices.Equal(got, tt.want) {
				t.Errorf("got %s %v, want %s %v", network, got, tt.wantNetwork, tt.want)
			}
		})
	}
}

func TestServiceHealthConfigErrors(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	for _, tt := range []struct {
		name string
		cfg  ServiceHealthConfig
	}{
		{"no health", ServiceHealthConfig{Family: v1.IPv4Protocol}},
		{"bad CIDR", ServiceHealthConfig{Family: v1.IPv4Protocol, Health: &fakeHealth{}, NodePortAddresses: []string{"nope"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewServiceHealthServer(logger, tt.cfg); err == nil {
				t.Error("NewServiceHealthServer succeeded, want an error")
			}
		})
	}
}

func TestServiceHealthRunClosesEverything(t *testing.T) {
	fn := newFakeNet()
	s := newTestServer(t, ServiceHealthConfig{Family: v1.IPv6Protocol, Health: &fakeHealth{}, Listener: fn})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	if err := s.SyncServices(map[types.NamespacedName]int{svcA: 30001, svcB: 30002}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}
	if got, want := fn.open(), []string{"[::]:30001", "[::]:30002"}; !slices.Equal(got, want) {
		t.Fatalf("open %v, want %v", got, want)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if got := fn.open(); len(got) != 0 {
		t.Errorf("listeners still open after Run: %v", got)
	}
	if err := s.SyncServices(map[types.NamespacedName]int{svcA: 30001}); !errors.Is(err, ErrServerClosed) {
		t.Errorf("SyncServices after Run: %v, want ErrServerClosed", err)
	}
	if err := s.SyncEndpoints(nil); !errors.Is(err, ErrServerClosed) {
		t.Errorf("SyncEndpoints after Run: %v, want ErrServerClosed", err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.1: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// TestServiceHealthRealPort binds real sockets on 127.0.0.1.
func TestServiceHealthRealPort(t *testing.T) {
	health := &fakeHealth{}
	recorder := events.NewFakeRecorder(10)
	s := newTestServer(t, ServiceHealthConfig{
		NodeName: "node-a", Family: v1.IPv4Protocol, NodePortAddresses: []string{"127.0.0.0/8"},
		Health: health, Recorder: recorder,
		InterfaceAddrs: func() ([]net.Addr, error) { return []net.Addr{ipNet("127.0.0.1/8")}, nil },
	})
	runServer(t, s)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if err := s.SyncServices(map[types.NamespacedName]int{svcA: port}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}
	select {
	case e := <-recorder.Events:
		t.Fatalf("opening the port failed: %s", e)
	default:
	}

	for _, tt := range []struct {
		endpoints int
		want      response
	}{
		{0, response{code: 503, weight: "0", body: wantBody("ns", "a", 0, true)}},
		{2, response{code: 200, weight: "2", body: wantBody("ns", "a", 2, true)}},
	} {
		if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: tt.endpoints}); err != nil {
			t.Fatalf("SyncEndpoints: %v", err)
		}
		got, err := get(t, client, url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		if got != tt.want {
			t.Errorf("%d endpoints: got %+v, want %+v", tt.endpoints, got, tt.want)
		}
	}

	// Another service asking for a port someone else holds gets an event.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer func() { _ = busy.Close() }()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	if err := s.SyncServices(map[types.NamespacedName]int{svcA: port, svcB: busyPort}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}
	select {
	case e := <-recorder.Events:
		if !strings.HasPrefix(e, "Warning FailedToStartServiceHealthcheck node node-a failed to start healthcheck \"ns/b\"") {
			t.Errorf("event %q", e)
		}
	default:
		t.Error("no event for the port in use")
	}

	// Removing the service frees the port at once.
	if err := s.SyncServices(map[types.NamespacedName]int{}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}
	if _, err := get(t, client, url); err == nil {
		t.Error("port still answers after its service was removed")
	}
	l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Errorf("port not free after its service was removed: %v", err)
	} else {
		_ = l.Close()
	}
}
