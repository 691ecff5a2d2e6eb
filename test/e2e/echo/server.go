package echo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Server answers echo requests on the configured ports. The zero value
// serves nothing; set Name and at least one port.
type Server struct {
	// Name is what the server answers with; it must not contain spaces.
	Name string
	// TCPPorts, UDPPorts and SCTPPorts are the ports to serve, on every
	// address of both IP families.
	TCPPorts, UDPPorts, SCTPPorts []int
	// Logf, if set, receives a line per connection error.
	Logf func(format string, args ...any)
}

// Run binds every port, calls ready (if not nil) once all are bound, and
// serves until ctx is done. Binding errors are returned before ready is
// called.
func (s *Server) Run(ctx context.Context, ready func()) error {
	if s.Name == "" || len(s.TCPPorts)+len(s.UDPPorts)+len(s.SCTPPorts) == 0 {
		return errors.New("echo server needs a name and at least one port")
	}
	var closers []func() error
	var serve []func()
	fail := func(err error) error {
		for _, c := range closers {
			_ = c()
		}
		return err
	}
	for _, p := range s.TCPPorts {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return fail(fmt.Errorf("listening on TCP port %d: %w", p, err))
		}
		closers = append(closers, ln.Close)
		serve = append(serve, func() { s.serveStream(ctx, ln) })
	}
	for _, p := range s.SCTPPorts {
		ln, err := listenStream(unix.IPPROTO_SCTP, p)
		if err != nil {
			return fail(fmt.Errorf("listening on SCTP port %d: %w", p, err))
		}
		closers = append(closers, ln.Close)
		serve = append(serve, func() { s.serveStream(ctx, ln) })
	}
	for _, p := range s.UDPPorts {
		conns, err := listenUDP(ctx, p)
		if err != nil {
			return fail(fmt.Errorf("listening on UDP port %d: %w", p, err))
		}
		for _, c := range conns {
			closers = append(closers, c.Close)
			serve = append(serve, func() { s.serveUDP(c) })
		}
	}
	if ready != nil {
		ready()
	}
	var wg sync.WaitGroup
	for _, f := range serve {
		wg.Go(f)
	}
	<-ctx.Done()
	for _, c := range closers {
		_ = c()
	}
	wg.Wait()
	return nil
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// serveStream accepts TCP or SCTP connections and answers every line.
func (s *Server) serveStream(ctx context.Context, ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.logf("accept on %s: %v", ln.Addr(), err)
			}
			return
		}
		wg.Go(func() {
			stop := context.AfterFunc(ctx, func() { _ = c.Close() })
			defer stop()
			defer c.Close() //nolint:errcheck // best effort
			s.answerStream(c)
		})
	}
}

func (s *Server) answerStream(c net.Conn) {
	src := addrPortOf(c.RemoteAddr())
	reply := []byte(Reply{Name: s.Name, Source: src}.String() + "\n")
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := c.Write(reply); err != nil {
			s.logf("writing to %s: %v", src, err)
			return
		}
	}
}

// packetConn is one UDP socket of one family that can read the destination
// address of a datagram and reply from that same address.
type packetConn interface {
	readFrom(b []byte) (n int, dst netip.Addr, src net.Addr, err error)
	replyTo(b []byte, dst netip.Addr, src net.Addr) error
	Close() error
}

type udp4 struct{ *ipv4.PacketConn }

func (c udp4) readFrom(b []byte) (int, netip.Addr, net.Addr, error) {
	n, cm, src, err := c.ReadFrom(b)
	var dst netip.Addr
	if cm != nil {
		dst, _ = netip.AddrFromSlice(cm.Dst)
	}
	return n, dst.Unmap(), src, err
}

func (c udp4) replyTo(b []byte, dst netip.Addr, src net.Addr) error {
	var cm *ipv4.ControlMessage
	if dst.IsValid() {
		cm = &ipv4.ControlMessage{Src: dst.AsSlice()}
	}
	_, err := c.WriteTo(b, cm, src)
	return err
}

type udp6 struct{ *ipv6.PacketConn }

func (c udp6) readFrom(b []byte) (int, netip.Addr, net.Addr, error) {
	n, cm, src, err := c.ReadFrom(b)
	var dst netip.Addr
	if cm != nil {
		dst, _ = netip.AddrFromSlice(cm.Dst)
	}
	return n, dst, src, err
}

func (c udp6) replyTo(b []byte, dst netip.Addr, src net.Addr) error {
	var cm *ipv6.ControlMessage
	if dst.IsValid() {
		cm = &ipv6.ControlMessage{Src: dst.AsSlice()}
	}
	_, err := c.WriteTo(b, cm, src)
	return err
}

// listenUDP opens one socket per IP family, so that every reply leaves from
// the address its request was sent to (a host with several addresses would
// otherwise answer from the address routing picks, which conntrack cannot
// match to the request).
func listenUDP(ctx context.Context, port int) ([]packetConn, error) {
	var conns []packetConn
	var errs []error
	lc := &net.ListenConfig{}
	if c, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port)); err != nil {
		errs = append(errs, err)
	} else {
		p := ipv4.NewPacketConn(c)
		if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("enabling IP_PKTINFO: %w", err)
		}
		conns = append(conns, udp4{p})
	}
	if c, err := lc.ListenPacket(ctx, "udp6", fmt.Sprintf("[::]:%d", port)); err != nil {
		errs = append(errs, err)
	} else {
		p := ipv6.NewPacketConn(c)
		if err := p.SetControlMessage(ipv6.FlagDst, true); err != nil {
			_ = c.Close()
			for _, c := range conns {
				_ = c.Close()
			}
			return nil, fmt.Errorf("enabling IPV6_RECVPKTINFO: %w", err)
		}
		conns = append(conns, udp6{p})
	}
	if len(conns) == 0 {
		return nil, errors.Join(errs...)
	}
	return conns, nil
}

func (s *Server) serveUDP(c packetConn) {
	buf := make([]byte, 64*1024)
	for {
		_, dst, src, err := c.readFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.logf("reading UDP: %v", err)
			continue
		}
		reply := []byte(Reply{Name: s.Name, Source: addrPortOf(src)}.String() + "\n")
		if err := c.replyTo(reply, dst, src); err != nil {
			s.logf("replying to %s: %v", src, err)
		}
	}
}

// addrPortOf returns a TCP or UDP address as a netip.AddrPort with IPv4
// addresses unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
