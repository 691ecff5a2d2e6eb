package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	v1 "k8s.io/api/core/v1"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNoGeneration is returned where the ruleset generation cannot be read:
// the legacy backend has none.
var ErrNoGeneration = errors.New("no ruleset generation on this backend")

// nftGenIDAttr is NFTA_GEN_ID, the generation attribute of NFT_MSG_NEWGEN.
const nftGenIDAttr = 1

// nlaTypeMask strips the nested and byte-order flags from an attribute type.
const nlaTypeMask = 0x3fff

// ReadNFTGeneration returns the nftables ruleset generation of the calling
// thread's network namespace. The kernel increments it on every nftables
// commit, whoever makes it (iptables-nft-restore commits once per table it
// restores; iptables-nft-save and listing commit nothing), so an unchanged
// generation proves that no table changed. It costs one netlink round trip.
func ReadNFTGeneration() (uint32, error) {
	reply, err := nftRequest(unix.NFT_MSG_GETGEN, unix.AF_UNSPEC, nil)
	if err != nil {
		return 0, fmt.Errorf("reading the nftables generation: %w", err)
	}
	return parseGenReply(reply)
}

// NFTChainExists reports whether the nftables table of family (the table
// iptables-nft uses, e.g. "mangle") holds chain, asking the kernel for that
// one chain: one netlink round trip, where iptables-nft-save of even a
// small table fetches the whole ruleset first (seconds at 10,000 Services).
// A missing table is no error.
func NFTChainExists(family v1.IPFamily, table Table, chain string) (bool, error) {
	proto := uint8(unix.NFPROTO_IPV4)
	if family == v1.IPv6Protocol {
		proto = unix.NFPROTO_IPV6
	}
	attrs := append(netlinkString(unix.NFTA_CHAIN_TABLE, string(table)), netlinkString(unix.NFTA_CHAIN_NAME, chain)...)
	_, err := nftRequest(unix.NFT_MSG_GETCHAIN, proto, attrs)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("looking up nftables chain %s in %s (%s): %w", chain, table, family, err)
}

// netlinkString encodes a NUL-terminated string attribute, padded to 4
// bytes.
func netlinkString(typ uint16, s string) []byte {
	l := 4 + len(s) + 1
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], s)
	return b
}

// nftRequest sends one nftables netlink request (not a dump) for family
// with attrs and returns the kernel's reply, or the error it answered with.
func nftRequest(msg uint16, family uint8, attrs []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	// nlmsghdr, nfgenmsg (family, version 0, resource id 0), attributes.
	req := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	req = append(req, attrs...)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], uint16(unix.NFNL_SUBSYS_NFTABLES<<8)|msg)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:], 1)
	req[unix.NLMSG_HDRLEN] = family
	if err := unix.Sendto(fd, req, 0, kernel); err != nil {
		return nil, err
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return nil, err
	}
	reply := buf[:n]
	if len(reply) >= unix.NLMSG_HDRLEN+4 && binary.NativeEndian.Uint16(reply[4:]) == unix.NLMSG_ERROR {
		if code := int32(binary.NativeEndian.Uint32(reply[unix.NLMSG_HDRLEN:])); code != 0 {
			return nil, unix.Errno(-code)
		}
	}
	return reply, nil
}

// parseGenReply extracts NFTA_GEN_ID from a NFT_MSG_NEWGEN reply.
func parseGenReply(msg []byte) (uint32, error) {
	if len(msg) < unix.NLMSG_HDRLEN+4 {
		return 0, fmt.Errorf("short nftables generation reply (%d bytes)", len(msg))
	}
	attrs := msg[unix.NLMSG_HDRLEN+4:]
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & nlaTypeMask
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == nftGenIDAttr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:8]), nil
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return 0, errors.New("nftables generation reply without NFTA_GEN_ID")
}

// Journal tells the nftables commits this process makes (through Runners
// sharing the Journal, in any IP family) from everyone else's, using the
// ruleset generation. A Runner on the nft backend wraps each of its writes
// in the Journal: writes are serialized, and the generation read before
// one that differs from the one recorded after the previous shows that
// someone else committed in between. Foreign counts those sightings, so a
// caller can tell cheaply whether anything but iptproxy may have touched
// the tables since it last looked (a commit made by someone else while one
// of ours runs is taken for ours: the periodic full check covers that).
//
// A Journal is safe for concurrent use. The zero value is not usable; call
// NewJournal.
type Journal struct {
	read func() (uint32, error)

	mu      sync.Mutex
	known   bool   // last holds a generation read after our latest look or write
	last    uint32 // that generation
	foreign uint64 // how many times an unexplained change was seen
}

// NewJournal returns a Journal reading the nftables generation of the
// calling thread's network namespace (the namespace the Runners' tools run
// in).
func NewJournal() *Journal { return &Journal{read: ReadNFTGeneration} }

// newJournalWith returns a Journal with a stand-in generation reader.
func newJournalWith(read func() (uint32, error)) *Journal { return &Journal{read: read} }

// Foreign returns how many times a change made by someone else has been
// seen, after looking now; two equal results prove that nobody else
// committed in between. ok is false when the generation cannot be read:
// then every look must assume a change.
func (j *Journal) Foreign() (count uint64, ok bool) {
	if j == nil {
		return 0, false
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	g, err := j.read()
	if err != nil {
		j.known = false
		return j.foreign, false
	}
	if !j.known || g != j.last {
		j.foreign++
	}
	j.known, j.last = true, g
	return j.foreign, true
}

// Own runs write, which commits to nftables on this process's behalf,
// and records the generation it leaves as ours.
func (j *Journal) Own(write func() error) error {
	if j == nil {
		return write()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if g, err := j.read(); err != nil || !j.known || g != j.last {
		j.foreign++
	}
	err := write()
	g, rerr := j.read()
	j.known, j.last = rerr == nil, g
	return err
}
