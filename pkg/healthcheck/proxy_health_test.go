package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"
)

const testTimeout = 10 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// probeRecorder is a ProbeCounter that remembers the codes.
type probeRecorder struct {
	mu      sync.Mutex
	healthz []int
	livez   []int
}

func (p *probeRecorder) ObserveHealthz(code int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.healthz = append(p.healthz, code)
}

func (p *probeRecorder) ObserveLivez(code int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.livez = append(p.livez, code)
}

func eligibleNode() *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
}

func taintedNode(key string) *v1.Node {
	n := eligibleNode()
	n.Spec.Taints = []v1.Taint{{Key: key, Effect: v1.TaintEffectNoSchedule}}
	return n
}

func deletedNode() *v1.Node {
	n := eligibleNode()
	n.DeletionTimestamp = &metav1.Time{Time: t0}
	return n
}

// env is what a scenario step acts on.
type env struct {
	h     *ProxyHealth
	clock *testingclock.FakeClock
}

func (e env) queue(f v1.IPFamily) func()        { return func() { e.h.QueuedUpdate(f) } }
func (e env) update(f v1.IPFamily) func()       { return func() { e.h.Updated(f) } }
func (e env) start(f v1.IPFamily) func()        { return func() { e.h.Started(f) } }
func (e env) step(d time.Duration) func()       { return func() { e.clock.Step(d) } }
func (e env) node(n *v1.Node) func()            { return func() { e.h.SyncNode(n) } }
func (e env) seq(fs ...func()) []func()         { return fs }
func (e env) at(offset time.Duration) time.Time { return t0.Add(offset) }
func (e env) now() time.Time                    { return e.clock.Now() }
func (e env) fam(ok bool, at time.Time) ProxierHealth {
	return ProxierHealth{LastUpdated: at, Healthy: ok}
}

const (
	v4 = v1.IPv4Protocol
	v6 = v1.IPv6Protocol
)

func TestProxyHealthEndpoints(t *testing.T) {
	type want struct {
		healthz      int
		livez        int
		nodeEligible bool
		// lastUpdated in unhealthy answers (healthy ones report "now").
		lastUpdated time.Time
		status      map[v1.IPFamily]ProxierHealth
		// neverSynced: some family never synced, so the /healthz body
		// says healthy=false even where /livez says true.
		neverSynced bool
	}
	tests := []struct {
		name  string
		steps func(e env) []func()
		want  func(e env) want
	}{{
		name:  "starting up: no sync loop yet, node known: /healthz 503, /livez 200",
		steps: func(e env) []func() { return e.seq(e.node(eligibleNode())) },
		want: func(e env) want {
			return want{neverSynced: true, healthz: 503, livez: 200, nodeEligible: true, status: map[v1.IPFamily]ProxierHealth{}}
		},
	}, {
		name: "sync loop started, never synced, within the window: /healthz 503, /livez 200",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.start(v4), e.queue(v4), e.step(testTimeout-time.Nanosecond))
		},
		want: func(e env) want {
			return want{neverSynced: true, healthz: 503, livez: 200, nodeEligible: true, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name: "sync loop started, never synced, window passed: both 503",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.start(v4), e.queue(v4), e.step(testTimeout))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 503, nodeEligible: true, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(false, t0)}}
		},
	}, {
		name: "one family synced, the other never: /healthz 503",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.start(v4), e.start(v6), e.queue(v4), e.queue(v6), e.step(time.Second), e.update(v4))
		},
		want: func(e env) want {
			return want{neverSynced: true, healthz: 503, livez: 200, nodeEligible: true, lastUpdated: e.at(time.Second),
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, e.at(time.Second)), v6: e.fam(true, t0)}}
		},
	}, {
		name: "sync loop started, then synced: 200",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.start(v4), e.queue(v4), e.step(time.Second), e.update(v4))
		},
		want: func(e env) want {
			return want{healthz: 200, livez: 200, nodeEligible: true,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, e.at(time.Second))}}
		},
	}, {
		name:  "node not synced yet: /healthz 503, /livez 200",
		steps: func(e env) []func() { return e.seq(e.update(v4)) },
		want: func(e env) want {
			return want{healthz: 503, livez: 200, nodeEligible: false, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name: "update queued within the timeout",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.step(time.Second), e.queue(v4), e.step(testTimeout-time.Nanosecond))
		},
		want: func(e env) want {
			return want{healthz: 200, livez: 200, nodeEligible: true,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name: "update queued for exactly the timeout is stale",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.queue(v4), e.step(testTimeout))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 503, nodeEligible: true, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(false, t0)}}
		},
	}, {
		name: "later QueuedUpdate calls do not restart the window",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.queue(v4), e.step(6*time.Second), e.queue(v4), e.step(5*time.Second))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 503, nodeEligible: true, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(false, t0)}}
		},
	}, {
		name: "a sync after a stale queue makes it healthy again",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.queue(v4), e.step(time.Minute), e.update(v4))
		},
		want: func(e env) want {
			return want{healthz: 200, livez: 200, nodeEligible: true,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, e.at(time.Minute))}}
		},
	}, {
		name: "a family whose loop never started stays live (kube-proxy's start-up rule), not ready",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.queue(v4), e.step(time.Hour))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 200, nodeEligible: true, neverSynced: true, status: map[v1.IPFamily]ProxierHealth{}}
		},
	}, {
		name: "dual-stack: one stale family makes the proxy unhealthy",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.update(v6), e.step(time.Second),
				e.queue(v6), e.step(testTimeout), e.update(v4))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 503, nodeEligible: true, lastUpdated: e.at(testTimeout + time.Second),
				status: map[v1.IPFamily]ProxierHealth{
					v4: e.fam(true, e.at(testTimeout+time.Second)),
					v6: e.fam(false, t0),
				}}
		},
	}, {
		name: "node tainted ToBeDeletedByClusterAutoscaler: /healthz 503, /livez 200",
		steps: func(e env) []func() {
			return e.seq(e.node(eligibleNode()), e.update(v4), e.node(taintedNode(ToBeDeletedTaint)))
		},
		want: func(e env) want {
			return want{healthz: 503, livez: 200, nodeEligible: false, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name:  "node with another taint is eligible",
		steps: func(e env) []func() { return e.seq(e.update(v4), e.node(taintedNode("other"))) },
		want: func(e env) want {
			return want{healthz: 200, livez: 200, nodeEligible: true,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name:  "node being deleted: /healthz 503, /livez 200",
		steps: func(e env) []func() { return e.seq(e.update(v4), e.node(deletedNode())) },
		want: func(e env) want {
			return want{healthz: 503, livez: 200, nodeEligible: false, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name: "node untainted again is eligible again",
		steps: func(e env) []func() {
			return e.seq(e.update(v4), e.node(taintedNode(ToBeDeletedTaint)), e.node(eligibleNode()))
		},
		want: func(e env) want {
			return want{healthz: 200, livez: 200, nodeEligible: true,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}, {
		name:  "node forgotten (nil) is not eligible",
		steps: func(e env) []func() { return e.seq(e.update(v4), e.node(eligibleNode()), e.node(nil)) },
		want: func(e env) want {
			return want{healthz: 503, livez: 200, nodeEligible: false, lastUpdated: t0,
				status: map[v1.IPFamily]ProxierHealth{v4: e.fam(true, t0)}}
		},
	}}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(t0)
			probes := &probeRecorder{}
			e := env{h: NewProxyHealth(testTimeout, clk, probes), clock: clk}
			for _, do := range tt.steps(e) {
				do()
			}
			w := tt.want(e)
			handler := NewHealthzServer(DefaultBindAddress, e.h).Handler()

			for _, path := range []string{"/healthz", "/livez"} {
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))

				wantCode := w.livez
				if path == "/healthz" {
					wantCode = w.healthz
				}
				if rec.Code != wantCode {
					t.Errorf("%s: status %d, want %d; body %s", path, rec.Code, wantCode, rec.Body)
				}
				if got := rec.Header().Get("Content-Type"); got != "application/json" {
					t.Errorf("%s: Content-Type %q, want application/json", path, got)
				}
				if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("%s: X-Content-Type-Options %q, want nosniff", path, got)
				}

				var got HealthReport
				if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
					t.Fatalf("%s: body %q: %v", path, rec.Body, err)
				}
				if !got.CurrentTime.Equal(e.now()) {
					t.Errorf("%s: currentTime %v, want %v", path, got.CurrentTime, e.now())
				}
				wantLast := w.lastUpdated
				if wantCode == http.StatusOK {
					wantLast = e.now()
				}
				if !got.LastUpdated.Equal(wantLast) {
					t.Errorf("%s: lastUpdated %v, want %v", path, got.LastUpdated, wantLast)
				}
				wantHealthy := w.livez == http.StatusOK
				if path == "/healthz" && w.neverSynced {
					wantHealthy = false
				}
				if got.Healthy != wantHealthy {
					t.Errorf("%s: healthy %v, want %v", path, got.Healthy, wantHealthy)
				}
				switch {
				case path == "/livez" && got.NodeEligible != nil:
					t.Errorf("/livez: nodeEligible %v, want it absent", *got.NodeEligible)
				case path == "/healthz" && got.NodeEligible == nil:
					t.Errorf("/healthz: nodeEligible absent, want %v", w.nodeEligible)
				case path == "/healthz" && *got.NodeEligible != w.nodeEligible:
					t.Errorf("/healthz: nodeEligible %v, want %v", *got.NodeEligible, w.nodeEligible)
				}
				if len(got.Status) != len(w.status) {
					t.Errorf("%s: status %v, want %v", path, got.Status, w.status)
				}
				for f, wantFam := range w.status {
					gotFam, ok := got.Status[f]
					if !ok || gotFam.Healthy != wantFam.Healthy || !gotFam.LastUpdated.Equal(wantFam.LastUpdated) {
						t.Errorf("%s: status[%s] = %+v (present %v), want %+v", path, f, gotFam, ok, wantFam)
					}
				}
			}

			if len(probes.healthz) != 1 || probes.healthz[0] != w.healthz {
				t.Errorf("healthz probes counted %v, want [%d]", probes.healthz, w.healthz)
			}
			if len(probes.livez) != 1 || probes.livez[0] != w.livez {
				t.Errorf("livez probes counted %v, want [%d]", probes.livez, w.livez)
			}
		})
	}
}

// TestProxyHealthBodies pins the exact bytes of both bodies: kube-proxy's
// field names and order, no trailing newline.
func TestProxyHealthBodies(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	h := NewProxyHealth(testTimeout, clk, nil)
	h.SyncNode(eligibleNode())
	h.Updated(v4)
	h.Updated(v6)
	clk.Step(time.Second)
	h.QueuedUpdate(v6)
	clk.Step(testTimeout)

	tests := []struct {
		path string
		want string
	}{{
		path: "/healthz",
		want: `{"lastUpdated":"2026-01-02T03:04:05Z","currentTime":"2026-01-02T03:04:16Z","nodeEligible":true,"healthy":false,` +
			`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":false}}}`,
	}, {
		path: "/livez",
		want: `{"lastUpdated":"2026-01-02T03:04:05Z","currentTime":"2026-01-02T03:04:16Z","healthy":false,` +
			`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":false}}}`,
	}}
	handler := NewHealthzServer(DefaultBindAddress, h).Handler()
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503", rec.Code)
			}
			if got := rec.Body.String(); got != tt.want {
				t.Errorf("body\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestHealthzServerServe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	h := NewProxyHealth(testTimeout, nil, nil)
	h.SyncNode(eligibleNode())
	h.Updated(v4)
	s := NewHealthzServer("127.0.0.1:0", h)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	for _, tt := range []struct {
		path string
		code int
	}{
		{"/healthz", http.StatusOK},
		{"/livez", http.StatusOK},
		{"/healthz/", http.StatusNotFound},
		{"/metrics", http.StatusNotFound},
	} {
		resp, err := http.Get(base + tt.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tt.path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Errorf("GET %s: status %d, want %d", tt.path, resp.StatusCode, tt.code)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the context ended")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestHealthzServerRunErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer func() { _ = busy.Close() }()

	for _, tt := range []struct {
		name string
		addr string
	}{
		{"empty address", ""},
		{"address in use", busy.Addr().String()},
		{"invalid address", "not-an-address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			err := NewHealthzServer(tt.addr, NewProxyHealth(testTimeout, nil, nil)).Run(ctx)
			if err == nil {
				t.Fatal("Run succeeded, want an error")
			}
			if tt.name == "address in use" {
				var opErr *net.OpError
				if !errors.As(err, &opErr) {
					t.Errorf("error %v does not wrap the *net.OpError", err)
				}
			}
		})
	}
}
