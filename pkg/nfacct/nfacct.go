// Package nfacct creates and reads netfilter extended accounting objects
// (nfnetlink_acct, what the nfacct tool manages) over netlink. kube-proxy's
// iptables rules count packets in two of them with "-m nfacct
// --nfacct-name", and its metrics report their packet counts; iptproxy
// does the same.
package nfacct

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// MaxNameLength is the longest name the kernel accepts (NFACCT_NAME_MAX
// less the terminating NUL).
const MaxNameLength = 31

// Netlink message types and attributes of NFNL_SUBSYS_ACCT, from
// linux/netfilter/nfnetlink_acct.h.
const (
	msgNew = 0 // NFNL_MSG_ACCT_NEW
	msgGet = 1 // NFNL_MSG_ACCT_GET

	attrName    = 1 // NFACCT_NAME
	attrPackets = 2 // NFACCT_PKTS
	attrBytes   = 3 // NFACCT_BYTES
)

// Errors, for errors.Is.
var (
	// ErrNotFound: no accounting object has that name.
	ErrNotFound = errors.New("nfacct object not found")
	// ErrUnsupported: the kernel has no nfnetlink_acct.
	ErrUnsupported = errors.New("nfacct (nfnetlink_acct) not available in this kernel")
)

// Counter is an accounting object's name and counts.
type Counter struct {
	Name    string
	Packets uint64
	Bytes   uint64
}

// Client talks to the nfacct subsystem of the network namespace it was
// created in. It is safe for concurrent use.
type Client struct {
	sock *nl.NetlinkSocket
}

// New opens a netlink socket in the calling thread's network namespace and
// checks that the kernel supports nfacct; the error wraps ErrUnsupported
// when it does not.
func New() (*Client, error) {
	sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	c := &Client{sock: sock}
	if _, err := c.Get("iptproxy-probe"); err != nil && !errors.Is(err, ErrNotFound) {
		sock.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return c, nil
}

// Close closes the socket.
func (c *Client) Close() { c.sock.Close() }

func (c *Client) request(msg int, flags uint16, name string) *nl.NetlinkRequest {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{
			Len:   uint32(unix.SizeofNlMsghdr),
			Type:  uint16(msg | unix.NFNL_SUBSYS_ACCT<<8),
			Flags: flags,
		},
		Sockets: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: c.sock}},
	}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_UNSPEC), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(attrName, nl.ZeroTerminated(name)))
	return req
}

func checkName(name string) error {
	if name == "" || len(name) > MaxNameLength {
		return fmt.Errorf("nfacct name %q: want 1 to %d characters", name, MaxNameLength)
	}
	return nil
}

// Get returns the counter called name; the error wraps ErrNotFound when
// there is none.
func (c *Client) Get(name string) (*Counter, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	msgs, err := c.request(msgGet, unix.NLM_F_REQUEST|unix.NLM_F_ACK, name).Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("getting nfacct object %s: %w", name, err)
	}
	for _, m := range msgs {
		ctr, err := decode(m)
		if err != nil {
			return nil, fmt.Errorf("getting nfacct object %s: %w", name, err)
		}
		if ctr.Name == name {
			return ctr, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
}

// Packets returns the packet count of the counter called name (it
// implements metrics.NFAcctReader).
func (c *Client) Packets(name string) (uint64, error) {
	ctr, err := c.Get(name)
	if err != nil {
		return 0, err
	}
	return ctr.Packets, nil
}

// Ensure creates the counter called name unless it exists.
func (c *Client) Ensure(name string) error {
	if _, err := c.Get(name); err == nil || !errors.Is(err, ErrNotFound) {
		return err
	}
	// The kernel answers EBUSY when the object exists (someone created it
	// meanwhile), which is as good.
	_, err := c.request(msgNew, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_ACK, name).Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil && !errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("creating nfacct object %s: %w", name, err)
	}
	return nil
}

// decode parses one NFNL_MSG_ACCT_NEW message: a struct nfgenmsg, then
// attributes.
func decode(msg []byte) (*Counter, error) {
	if len(msg) < nl.SizeofNfgenmsg {
		return nil, fmt.Errorf("nfacct message of %d bytes: too short", len(msg))
	}
	attrs, err := nl.ParseRouteAttr(msg[nl.SizeofNfgenmsg:])
	if err != nil {
		return nil, fmt.Errorf("parsing nfacct attributes: %w", err)
	}
	ctr := &Counter{}
	seen := 0
	for _, a := range attrs {
		switch a.Attr.Type &^ unix.NLA_F_NESTED {
		case attrName:
			n := a.Value
			for len(n) > 0 && n[len(n)-1] == 0 {
				n = n[:len(n)-1]
			}
			ctr.Name = string(n)
			seen++
		case attrPackets, attrBytes:
			if len(a.Value) != 8 {
				return nil, fmt.Errorf("nfacct counter attribute of %d bytes, want 8", len(a.Value))
			}
			v := binary.BigEndian.Uint64(a.Value) // nfacct counts are big-endian
			if a.Attr.Type == attrPackets {
				ctr.Packets = v
			} else {
				ctr.Bytes = v
			}
			seen++
		}
	}
	if seen != 3 {
		return nil, fmt.Errorf("nfacct message without name, packets and bytes")
	}
	return ctr, nil
}
