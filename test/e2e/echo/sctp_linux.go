package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SCTPSupported reports whether this kernel can create SCTP sockets; the
// error says why not (typically a kernel built without CONFIG_IP_SCTP).
func SCTPSupported() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return fmt.Errorf("creating an SCTP socket: %w (kernel without SCTP support, CONFIG_IP_SCTP?)", err)
	}
	return unix.Close(fd)
}

// The Go standard library has no SCTP. A one-to-one style SCTP socket
// (SOCK_STREAM, IPPROTO_SCTP) is used exactly like a TCP socket, so these
// helpers create it with raw system calls and hand it to the net package,
// which then treats it as a stream connection. proto is unix.IPPROTO_SCTP
// except in tests, which exercise the same code with unix.IPPROTO_TCP.

// listenStream listens on [::]:port (dual-stack, or 0.0.0.0:port when IPv6 is
// unavailable) with a SOCK_STREAM socket of the given protocol.
func listenStream(proto, port int) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: port}
	if errors.Is(err, unix.EAFNOSUPPORT) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		sa = &unix.SockaddrInet4{Port: port}
	} else if err == nil {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("clearing IPV6_V6ONLY: %w", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("creating socket (protocol %d): %w", proto, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("listener-%d-%d", proto, port))
	defer f.Close() //nolint:errcheck // net.FileListener works on a duplicate
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("setting SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("binding port %d (protocol %d): %w", port, proto, err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		return nil, fmt.Errorf("listening on port %d (protocol %d): %w", port, proto, err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("wrapping listener: %w", err)
	}
	return ln, nil
}

// dialStream connects a SOCK_STREAM socket of the given protocol to addr,
// waiting at most until deadline.
func dialStream(ctx context.Context, proto int, addr netip.AddrPort, deadline time.Time) (net.Conn, error) {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	if a := addr.Addr().Unmap(); a.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return nil, fmt.Errorf("creating socket (protocol %d): %w", proto, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("conn-%d-%s", proto, addr))
	defer f.Close() //nolint:errcheck // net.FileConn works on a duplicate
	connected := false
	switch err := unix.Connect(fd, sa); {
	case err == nil:
		connected = true
	case errors.Is(err, unix.EINPROGRESS):
	default:
		return nil, &net.OpError{Op: "dial", Net: "stream", Addr: net.TCPAddrFromAddrPort(addr), Err: os.NewSyscallError("connect", err)}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("wrapping connection: %w", err)
	}
	if connected {
		return c, nil
	}
	if err := waitConnected(ctx, c, deadline); err != nil {
		_ = c.Close()
		return nil, &net.OpError{Op: "dial", Net: "stream", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	return c, nil
}

// waitConnected waits for a non-blocking connect on c to finish.
func waitConnected(ctx context.Context, c net.Conn, deadline time.Time) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("connection %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw connection: %w", err)
	}
	if err := c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt", err)
			return true
		}
		switch e := syscall.Errno(n); e {
		case 0:
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
		if _, err := unix.Getpeername(int(fd)); err != nil {
			if errors.Is(err, unix.ENOTCONN) {
				return false
			}
			connErr = os.NewSyscallError("getpeername", err)
		}
		return true
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	if connErr != nil {
		return connErr
	}
	return c.SetWriteDeadline(time.Time{})
}
