package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
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
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	// nlmsghdr followed by an empty nfgenmsg (AF_UNSPEC, version 0).
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], uint16(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN))
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:], 1)
	if err := unix.Sendto(fd, req, 0, kernel); err != nil {
		return 0, fmt.Errorf("asking for the nftables generation: %w", err)
	}
	buf := make([]byte, 1024)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("reading the nftables generation: %w", err)
	}
	return parseGenReply(buf[:n])
}

// parseGenReply extracts NFTA_GEN_ID from a NFT_MSG_NEWGEN reply.
func parseGenReply(msg []byte) (uint32, error) {
	if len(msg) < unix.NLMSG_HDRLEN+4 {
		return 0, fmt.Errorf("short nftables generation reply (%d bytes)", len(msg))
	}
	if typ := binary.NativeEndian.Uint16(msg[4:]); typ == unix.NLMSG_ERROR {
		code := int32(binary.NativeEndian.Uint32(msg[unix.NLMSG_HDRLEN:]))
		return 0, fmt.Errorf("nftables generation: %w", unix.Errno(-code))
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
