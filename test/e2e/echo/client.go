package echo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds a dial or a request whose context has no deadline.
const DefaultTimeout = 3 * time.Second

// Dialer opens client connections. The zero value is ready to use.
type Dialer struct {
	// Source, if valid, is the local address to send from (TCP and UDP
	// only).
	Source netip.Addr
}

// Conn is an open client connection to an echo server. For TCP and SCTP it
// is one connection that can carry many requests (use it to hold a
// connection open across a rule change); for UDP it is a connected socket,
// so every request uses the same source port.
type Conn struct {
	conn  net.Conn
	proto Protocol
	r     *bufio.Reader
}

// deadline returns ctx's deadline or now+DefaultTimeout.
func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(DefaultTimeout)
}

// Dial connects to addr. Failures are classified (see Classify). The socket
// is created on the calling OS thread, which matters to callers that switch
// network namespaces.
func (d Dialer) Dial(ctx context.Context, proto Protocol, addr netip.AddrPort) (*Conn, error) {
	dl := deadline(ctx)
	var c net.Conn
	var err error
	switch proto {
	case TCP, UDP:
		nd := net.Dialer{Deadline: dl}
		if d.Source.IsValid() {
			if proto == TCP {
				nd.LocalAddr = &net.TCPAddr{IP: d.Source.AsSlice()}
			} else {
				nd.LocalAddr = &net.UDPAddr{IP: d.Source.AsSlice()}
			}
		}
		c, err = nd.DialContext(ctx, strings.ToLower(string(proto)), addr.String())
	case SCTP:
		if d.Source.IsValid() {
			return nil, errors.New("SCTP requests do not support a source address")
		}
		c, err = dialStream(ctx, unix.IPPROTO_SCTP, addr, dl)
	default:
		return nil, fmt.Errorf("unknown protocol %q", proto)
	}
	if err != nil {
		return nil, Classify(fmt.Errorf("%s connect to %s: %w", proto, addr, err))
	}
	return &Conn{conn: c, proto: proto, r: bufio.NewReader(c)}, nil
}

// Dial connects to addr with a zero Dialer.
func Dial(ctx context.Context, proto Protocol, addr netip.AddrPort) (*Conn, error) {
	return Dialer{}.Dial(ctx, proto, addr)
}

// Request sends one request on the connection and waits for the reply.
func (c *Conn) Request(ctx context.Context) (Reply, error) {
	dl := deadline(ctx)
	if err := c.conn.SetDeadline(dl); err != nil {
		return Reply{}, fmt.Errorf("setting deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	addr := c.conn.RemoteAddr()
	if _, err := c.conn.Write([]byte("ping\n")); err != nil {
		return Reply{}, Classify(fmt.Errorf("%s send to %v: %w", c.proto, addr, err))
	}
	var line string
	if c.proto == UDP {
		buf := make([]byte, 2048)
		n, err := c.conn.Read(buf)
		if err != nil {
			return Reply{}, Classify(fmt.Errorf("%s receive from %v: %w", c.proto, addr, err))
		}
		line = string(buf[:n])
	} else {
		var err error
		line, err = c.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("connection closed by peer: %w", ErrReset)
			}
			return Reply{}, Classify(fmt.Errorf("%s receive from %v: %w", c.proto, addr, err))
		}
	}
	return ParseReply(line)
}

// LocalAddr returns the connection's local address.
func (c *Conn) LocalAddr() netip.AddrPort { return addrPortOf(c.conn.LocalAddr()) }

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// Request connects to addr, sends one request and returns the reply.
func (d Dialer) Request(ctx context.Context, proto Protocol, addr netip.AddrPort) (Reply, error) {
	c, err := d.Dial(ctx, proto, addr)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close() //nolint:errcheck // read-only use
	return c.Request(ctx)
}

// Request connects to addr with a zero Dialer, sends one request and
// returns the reply.
func Request(ctx context.Context, proto Protocol, addr netip.AddrPort) (Reply, error) {
	return Dialer{}.Request(ctx, proto, addr)
}
