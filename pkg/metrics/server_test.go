package metrics

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

func TestServerDefaultRoutes(t *testing.T) {
	h := NewServer(DefaultBindAddress, New()).Handler()
	tests := []struct {
		target      string
		code        int
		body        string // exact, unless contains is set
		contains    string
		contentType string
	}{
		{target: "/proxyMode", code: 200, body: "iptables", contentType: "text/plain; charset=utf-8"},
		{target: "/healthz", code: 200, body: "ok", contentType: "text/plain; charset=utf-8"},
		{target: "/healthz?verbose", code: 200, body: "[+]ping ok\nhealthz check passed\n", contentType: "text/plain; charset=utf-8"},
		{target: "/healthz?verbose&exclude=ping", code: 200, body: "[+]ping excluded: ok\nhealthz check passed\n", contentType: "text/plain; charset=utf-8"},
		{
			target: "/healthz?verbose&exclude=b&exclude=a", code: 200, contentType: "text/plain; charset=utf-8",
			body: "[+]ping ok\nwarn: some health checks cannot be excluded: no matches for \"a\",\"b\"\nhealthz check passed\n",
		},
		{target: "/healthz/ping", code: 200, body: "ok"},
		{target: "/metrics", code: 200, contains: "# TYPE go_goroutines gauge"},
		// kube-proxy serves no /livez on the metrics port.
		{target: "/livez", code: 404},
		{target: "/nope", code: 404},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			rec := scrape(t, h, tt.target)
			if rec.Code != tt.code {
				t.Fatalf("status %d, want %d", rec.Code, tt.code)
			}
			if tt.code != 200 {
				return
			}
			got := rec.Body.String()
			if tt.contains != "" && !strings.Contains(got, tt.contains) {
				t.Errorf("body lacks %q", tt.contains)
			}
			if tt.contains == "" && got != tt.body {
				t.Errorf("body %q, want %q", got, tt.body)
			}
			if tt.contentType != "" {
				if ct := rec.Header().Get("Content-Type"); ct != tt.contentType {
					t.Errorf("Content-Type %q, want %q", ct, tt.contentType)
				}
				if v := rec.Header().Get("X-Content-Type-Options"); v != "nosniff" {
					t.Errorf("X-Content-Type-Options %q, want nosniff", v)
				}
			}
		})
	}
}

func text(s string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(s)) })
}

func TestServerHandle(t *testing.T) {
	s := NewServer(DefaultBindAddress, New())
	for _, tt := range []struct {
		pattern string
		handler http.Handler
		wantErr bool
	}{
		{pattern: "/configz", handler: text("configz")},
		{pattern: "/debug/iptproxy/", handler: text("debug")},
		{pattern: "/healthz", handler: text("proxy healthz")}, // replaces the ping
		{pattern: "/livez", handler: text("proxy livez")},
		{pattern: "/configz", handler: text("again")}, // replaces the earlier one
		{pattern: "", handler: text("empty"), wantErr: true},
		{pattern: "/nil", handler: nil, wantErr: true},
	} {
		if err := s.Handle(tt.pattern, tt.handler); (err != nil) != tt.wantErr {
			t.Errorf("Handle(%q): error %v, want error %v", tt.pattern, err, tt.wantErr)
		}
	}

	h := s.Handler()
	for target, want := range map[string]string{
		"/configz":             "again",
		"/debug/iptproxy/rule": "debug",
		"/healthz":             "proxy healthz",
		"/healthz/ping":        "ok",
		"/livez":               "proxy livez",
		"/proxyMode":           "iptables",
	} {
		rec := scrape(t, h, target)
		if got := rec.Body.String(); rec.Code != 200 || got != want {
			t.Errorf("GET %s: %d %q, want 200 %q", target, rec.Code, got, want)
		}
	}
}

func TestServerHandleConflict(t *testing.T) {
	s := NewServer(DefaultBindAddress, New())
	if err := s.Handle("/a/{x}", text("x")); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	// Equally specific and overlapping: ServeMux panics, Handle reports.
	if err := s.Handle("/a/{y}", text("y")); err == nil {
		t.Fatal("conflicting pattern accepted")
	}
	if got := scrape(t, s.Handler(), "/a/b").Body.String(); got != "x" {
		t.Errorf("after the rejected pattern /a/b answers %q, want x", got)
	}
}

func TestServerServe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := NewServer(ln.Addr().String(), New())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	url := "http://" + ln.Addr().String() + "/proxyMode"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	body := readAll(t, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || body != ProxyMode {
		t.Errorf("GET /proxyMode: %d %q", resp.StatusCode, body)
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
	if _, err := http.Get(url); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestServerRunErrors(t *testing.T) {
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
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			if err := NewServer(tt.addr, New()).Run(ctx); err == nil {
				t.Fatal("Run succeeded, want an error")
			}
		})
	}
}
