package rules

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// PrefixDispatch is the prefix of the dispatch chains: the small chains that
// replace kube-proxy's linear KUBE-SERVICES and KUBE-NODEPORTS lists with a
// tree split on destination address (or protocol and port) digits. See
// docs/dispatch-tree.md.
//
// The prefix starts with kube-proxy's "KUBE-SVC-" on purpose: when
// kube-proxy takes a node back, its first sync rewrites the shared chains
// and deletes every nat chain named like its own per-Service chains that it
// does not want, so the nat dispatch chains go with them. Under any other
// name they would stay behind still jumping to KUBE-SVC/EXT/FW chains, and
// kube-proxy's later "-X" of such a chain (a Service deleted) would fail
// and fail every restore after it. Real per-Service hashes are 16 base32
// characters (A-Z, 2-7) right after "KUBE-SVC-", so the "DSP-" marker
// cannot collide with one (see IsDispatchChain).
const PrefixDispatch = "KUBE-SVC-DSP-"

// IsDispatchChain reports whether chain is one of iptproxy's dispatch chains
// (not a per-Service chain, despite its "KUBE-SVC-" prefix).
func IsDispatchChain(chain string) bool { return strings.HasPrefix(chain, PrefixDispatch) }

// LeafMax is the most rules a dispatch leaf holds: a prefix with more
// entries under it becomes an internal chain with one jump per non-empty
// child (at most Fanout). A shared chain with at most LeafMax entries keeps
// kube-proxy's flat layout.
const LeafMax = 16

// digitBits is how many key bits each level of the tree splits on, and
// Fanout the resulting most children of an internal chain. Two bits (four
// children) keep leaves well filled (a split leaves about four entries per
// child, where a 16-way split of 17 entries leaves chains of one) and the
// rules a packet crosses low: about (Fanout+1)/2 per level plus half a
// leaf.
const (
	digitBits = 2
	Fanout    = 1 << digitBits
)

// dispatchEntry is one rule of a shared dispatch chain (KUBE-SERVICES,
// KUBE-NODEPORTS, ...) and the key it dispatches on.
type dispatchEntry struct {
	// key is the destination as digits of digitBits bits each: an
	// address's digits, or the protocol and the port's digits.
	key []byte
	// body is the rule, as kube-proxy writes it in the flat chain.
	body string
	// seq is the entry's position in kube-proxy's flat order.
	seq int
	// kind is what key holds.
	kind keyKind
}

// keyKind says how a key is turned back into a match.
type keyKind int

const (
	// keyAddr keys are destination addresses.
	keyAddr keyKind = iota
	// keyPort keys are a protocol digit and a destination port.
	keyPort
)

// Protocol digits of port keys.
var protocolDigits = []string{"tcp", "udp", "sctp"}

// digits appends the digits of the low bits bits of v to k, most
// significant first.
func digits(k []byte, v uint, bits int) []byte {
	for s := bits - digitBits; s >= 0; s -= digitBits {
		k = append(k, byte(v>>uint(s))&(Fanout-1))
	}
	return k
}

// addrKey returns the digits of addr.
func addrKey(a netip.Addr) []byte {
	b := a.AsSlice()
	k := make([]byte, 0, 8*len(b)/digitBits)
	for _, x := range b {
		k = digits(k, uint(x), 8)
	}
	return k
}

// portKey returns the key of a protocol and port: the protocol's digit,
// then the port's.
func portKey(proto string, port int) []byte {
	k := []byte{byte(slices.Index(protocolDigits, proto))}
	return digits(k, uint(port), 16)
}

// dispatchTree builds the dispatch chains of one shared chain and kind.
type dispatchTree struct {
	family, table, root string
	kind                keyKind
	chains              []*Chain
}

// chainName names the dispatch chain for a key prefix: it depends only on
// the family, table, root chain, kind and prefix, so a chain keeps its name
// while the set of entries under its prefix changes.
func (t *dispatchTree) chainName(prefix []byte) string {
	kind := "addr"
	if t.kind == keyPort {
		kind = "port"
	}
	return PrefixDispatch + hash12(t.family+"/"+t.table+"/"+t.root+"/"+kind+"/"+hex.EncodeToString(prefix))
}

// jumpTo renders the rule that sends packets under prefix to chain.
func (t *dispatchTree) jumpTo(prefix []byte, chain string) string {
	rl := &rule{}
	switch t.kind {
	case keyAddr:
		n := 4
		if t.family == "IPv6" {
			n = 16
		}
		full := make([]byte, n)
		per := 8 / digitBits
		for i, x := range prefix {
			full[i/per] |= x << (8 - digitBits*(i%per+1))
		}
		addr, _ := netip.AddrFromSlice(full)
		rl.dst = netip.PrefixFrom(addr, digitBits*len(prefix)).String()
	case keyPort:
		if len(prefix) > 0 {
			rl.proto = protocolDigits[prefix[0]]
		}
		if len(prefix) > 1 {
			lo, bits := 0, 0
			for _, x := range prefix[1:] {
				lo = lo<<digitBits | int(x)
				bits += digitBits
			}
			lo <<= 16 - bits
			hi := lo | (1<<(16-bits) - 1)
			ports := strconv.Itoa(lo)
			if hi != lo {
				ports += ":" + strconv.Itoa(hi)
			}
			rl.match("-m", rl.proto, "--dport", ports)
		}
	}
	return rl.jump(chain).line()
}

// commonPrefix returns the length of the longest common prefix of a and b.
func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// split returns the jumps for entries (sorted by key, more than LeafMax of
// them, not all with the same key), splitting them on the first digit where
// they differ, and adds the chains below to t.chains.
func (t *dispatchTree) split(entries []dispatchEntry) []string {
	lcp := commonPrefix(entries[0].key, entries[len(entries)-1].key)
	var out []string
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && entries[j].key[lcp] == entries[i].key[lcp] {
			j++
		}
		group := entries[i:j]
		i = j
		inner := commonPrefix(group[0].key, group[len(group)-1].key)
		if len(group) > LeafMax && inner < len(group[0].key) {
			// An internal chain, named by (and matching) the whole prefix
			// its entries share, so single-child paths collapse.
			prefix := group[0].key[:inner]
			name := t.chainName(prefix)
			c := &Chain{Name: name}
			t.chains = append(t.chains, c)
			c.Rules = t.split(group)
			out = append(out, t.jumpTo(prefix, name))
			continue
		}
		prefix := group[0].key[:lcp+1]
		name := t.chainName(prefix)
		out = append(out, t.jumpTo(prefix, name))
		t.chains = append(t.chains, &Chain{Name: name, Rules: leafRules(group)})
	}
	return out
}

// leafRules returns the entries' rules in kube-proxy's order.
func leafRules(entries []dispatchEntry) []string {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b dispatchEntry) int { return a.seq - b.seq })
	out := make([]string, len(sorted))
	for i, e := range sorted {
		out[i] = e.body
	}
	return out
}

// buildDispatch returns the rules of the shared chain root (of table, for
// family) and the dispatch chains below it. With at most LeafMax entries in
// all, the root holds them flat in kube-proxy's order; otherwise the
// address-keyed entries become one tree and the port-keyed ones another,
// with the jumps to the address tree first in the root.
func buildDispatch(family, table, root string, entries []dispatchEntry) ([]string, []*Chain) {
	if len(entries) <= LeafMax {
		return leafRules(entries), nil
	}
	var out []string
	var chains []*Chain
	for _, kind := range []keyKind{keyAddr, keyPort} {
		var sorted []dispatchEntry
		for _, e := range entries {
			if e.kind == kind {
				sorted = append(sorted, e)
			}
		}
		if len(sorted) == 0 {
			continue
		}
		slices.SortFunc(sorted, func(a, b dispatchEntry) int {
			if c := slices.Compare(a.key, b.key); c != 0 {
				return c
			}
			return a.seq - b.seq
		})
		if len(sorted) <= LeafMax || slices.Equal(sorted[0].key, sorted[len(sorted)-1].key) {
			out = append(out, leafRules(sorted)...)
			continue
		}
		t := &dispatchTree{family: family, table: table, root: root, kind: kind}
		out = append(out, t.split(sorted)...)
		chains = append(chains, t.chains...)
	}
	return out, chains
}
