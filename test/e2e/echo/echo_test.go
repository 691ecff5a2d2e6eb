package echo

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startServer(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Reply
		ok   bool
	}{
		{"pod-a 198.18.129.2:41234\n", Reply{"pod-a", netip.MustParseAddrPort("198.18.129.2:41234")}, true},
		{"b [fd00:198:18:129::2]:80", Reply{"b", netip.MustParseAddrPort("[fd00:198:18:129::2]:80")}, true},
		{"nospace", Reply{}, false},
		{"x 1.2.3.4", Reply{}, false},
	} {
		got, err := ParseReply(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseReply(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			if again, err := ParseReply(got.String()); err != nil || again != got {
				t.Errorf("round trip of %v: %v, %v", got, again, err)
			}
		}
	}
}

func TestTCPAndUDP(t *testing.T) {
	port := freePort(t)
	startServer(t, &Server{Name: "srv", TCPPorts: []int{port}, UDPPorts: []int{port}, Logf: t.Logf})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, addr := range []string{"127.0.0.1", "::1"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port))
		for _, p := range []Protocol{TCP, UDP} {
			c, err := Dial(ctx, p, ap)
			if err != nil {
				t.Fatalf("%s %s: %v", p, ap, err)
			}
			for range 3 {
				r, err := c.Request(ctx)
				if err != nil {
					t.Fatalf("%s %s: %v", p, ap, err)
				}
				if r.Name != "srv" || r.Source != c.LocalAddr() {
					t.Errorf("%s %s: reply %v, want srv from %v", p, ap, r, c.LocalAddr())
				}
			}
			c.Close()
		}
	}
}

func TestUDPRepliesFromRequestedAddress(t *testing.T) {
	// 127.0.0.2 is on lo but is not what routing would pick as a source
	// for 127.0.0.1; the reply must still come from 127.0.0.2 or a
	// connected client socket would not accept it.
	port := freePort(t)
	startServer(t, &Server{Name: "srv", UDPPorts: []int{port}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := Dialer{Source: netip.MustParseAddr("127.0.0.1")}
	r, err := d.Request(ctx, UDP, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(port)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Source.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("source %v, want 127.0.0.1", r.Source)
	}
}

func TestClassifiedErrors(t *testing.T) {
	port := freePort(t) // nothing listens there
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	if _, err := Request(ctx, TCP, ap); !errors.Is(err, ErrRefused) {
		t.Errorf("TCP to closed port: %v, want ErrRefused", err)
	}
	if _, err := Request(ctx, UDP, ap); !errors.Is(err, ErrRefused) {
		t.Errorf("UDP to closed port: %v, want ErrRefused", err)
	}

	// A UDP socket that never answers: timeout.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	_, err = Request(short, UDP, pc.LocalAddr().(*net.UDPAddr).AddrPort())
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("UDP to silent socket: %v, want ErrTimeout", err)
	}
}

// TestRawStreamPath runs the raw-socket code SCTP uses with TCP, which every
// kernel has, so the plumbing is tested even where SCTP is not available.
func TestRawStreamPath(t *testing.T) {
	port := freePort(t)
	ln, err := listenStream(unix.IPPROTO_TCP, port)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Name: "raw", Logf: t.Logf}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.serveStream(ctx, ln) }()
	defer func() { cancel(); ln.Close(); <-done }()

	for _, addr := range []string{"127.0.0.1", "::1"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port))
		nc, err := dialStream(ctx, unix.IPPROTO_TCP, ap, time.Now().Add(2*time.Second))
		if err != nil {
			t.Fatalf("dial %s: %v", ap, err)
		}
		c := &Conn{conn: nc, proto: SCTP, r: bufio.NewReader(nc)}
		r, err := c.Request(ctx)
		if err != nil {
			t.Fatalf("request %s: %v", ap, err)
		}
		if r.Name != "raw" || r.Source != c.LocalAddr() {
			t.Errorf("reply %v, want raw from %v", r, c.LocalAddr())
		}
		nc.Close()
	}
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	_, err = dialStream(ctx, unix.IPPROTO_TCP, closed, time.Now().Add(2*time.Second))
	if err = Classify(err); !errors.Is(err, ErrRefused) {
		t.Errorf("raw dial to closed port: %v, want ErrRefused", err)
	}
}

func TestSCTPSupported(t *testing.T) {
	if err := SCTPSupported(); err != nil {
		t.Skipf("no SCTP here: %v", err)
	}
	port := freePort(t)
	startServer(t, &Server{Name: "sctp", SCTPPorts: []int{port}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := Request(ctx, SCTP, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)))
	if err != nil || r.Name != "sctp" {
		t.Fatalf("SCTP request: %v, %v", r, err)
	}
}
