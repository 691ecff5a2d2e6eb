// Package echo is the tiny request/reply protocol the end-to-end tests speak
// to their backends. A server answers every request (a line on TCP and SCTP,
// a datagram on UDP) with its name and the client address it saw, for example
// "pod-a 198.18.129.2:41234", so that a test learns both which backend a
// Service picked and whether the client's address was masqueraded.
//
// The client side classifies failures as ErrRefused, ErrTimeout,
// ErrUnreachable or ErrReset so that tests can assert on REJECT and DROP
// rules.
package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
)

// Protocol is a transport protocol. Its values are the strings Kubernetes
// uses (core/v1 Protocol), so a v1.Protocol converts directly.
type Protocol string

// The supported protocols.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// ParseProtocol parses "tcp", "udp" or "sctp" in any case.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToUpper(s)); p {
	case TCP, UDP, SCTP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want tcp, udp or sctp)", s)
}

// Reply is a server's answer to one request.
type Reply struct {
	// Name is the server's name (usually the pod's name).
	Name string
	// Source is the client address and port as the server saw them.
	Source netip.AddrPort
}

// String formats the reply as it travels on the wire, without the newline.
func (r Reply) String() string {
	return r.Name + " " + r.Source.String()
}

// ParseReply parses one reply line ("<name> <address:port>").
func ParseReply(s string) (Reply, error) {
	name, src, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok || name == "" {
		return Reply{}, fmt.Errorf("malformed reply %q", s)
	}
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return Reply{}, fmt.Errorf("malformed reply %q: %w", s, err)
	}
	return Reply{Name: name, Source: ap}, nil
}

// Errors a client request is classified into; test them with errors.Is. The
// returned error wraps both the class and the underlying error.
var (
	// ErrRefused means the connection was refused: a TCP RST, or an ICMP
	// port-unreachable (what an iptables REJECT sends by default).
	ErrRefused = errors.New("refused")
	// ErrTimeout means no answer arrived in time (for example a DROP).
	ErrTimeout = errors.New("timeout")
	// ErrUnreachable means an ICMP host, network or administratively
	// prohibited unreachable came back, or there was no route.
	ErrUnreachable = errors.New("unreachable")
	// ErrReset means an established connection was reset.
	ErrReset = errors.New("reset")
)

// Classify wraps err with the matching class error (ErrRefused, ErrTimeout,
// ErrUnreachable or ErrReset); other errors are returned unchanged.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var class error
	var nerr net.Error
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, ErrTimeout),
		errors.Is(err, ErrUnreachable), errors.Is(err, ErrReset):
		return err
	case errors.Is(err, syscall.ECONNREFUSED):
		class = ErrRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		class = ErrUnreachable
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		class = ErrReset
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &nerr) && nerr.Timeout():
		class = ErrTimeout
	default:
		return err
	}
	return fmt.Errorf("%w: %w", class, err)
}
