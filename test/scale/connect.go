package scale

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// ConnectTimes opens n TCP connections to addr, one after the other, with
// blocking connect(2) calls on the calling OS thread (so a caller that has
// entered a network namespace measures from inside it), and returns how long
// each successful connect took and how many failed. Each connection is
// closed with a reset (SO_LINGER 0), so that neither side keeps it in
// TIME_WAIT. An error is returned only when a socket cannot be created.
func ConnectTimes(addr netip.AddrPort, n int, timeout time.Duration) ([]time.Duration, int, error) {
	if !addr.Addr().Is4() {
		return nil, 0, fmt.Errorf("ConnectTimes(%s): IPv4 only", addr)
	}
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	out := make([]time.Duration, 0, n)
	failed := 0
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return out, failed, fmt.Errorf("socket: %w", err)
		}
		// connect(2) on a blocking socket gives up after SO_SNDTIMEO.
		err = errors.Join(
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv),
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}),
		)
		if err != nil {
			_ = unix.Close(fd)
			return out, failed, fmt.Errorf("setsockopt: %w", err)
		}
		start := time.Now()
		err = unix.Connect(fd, sa)
		took := time.Since(start)
		_ = unix.Close(fd)
		if err != nil {
			failed++
			continue
		}
		out = append(out, took)
	}
	return out, failed, nil
}
