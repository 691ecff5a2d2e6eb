package rules

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/iptproxy/iptproxy/pkg/iptables"
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
	body iptables.Rule
	// svc and seq give the entry's position in kube-proxy's flat order:
	// the sort key of its Service port, then its index among that port's
	// entries.
	svc string
	seq int32
	// kind is what key holds.
	kind keyKind
}

// keyKind says how a key is turned back into a match.
type keyKind uint8

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
	// dirty holds the keys of entries added or removed since the build
	// the old nodes come from: a subtree with none of them under its
	// prefix is reused as it was.
	dirty [][]byte
}

// dispatchNode is what one build produced under a group's key prefix: the
// parent's jump to it, its chains (its own first), and its children by
// their group prefixes. The next build reuses a node whose entries did
// not change, with its chains (the same *Chain values) and children.
type dispatchNode struct {
	jump     iptables.Rule
	chains   []*Chain
	children map[string]*dispatchNode
}

// dirtyUnder reports whether some changed key starts with prefix.
func (t *dispatchTree) dirtyUnder(prefix []byte) bool {
	for _, d := range t.dirty {
		if len(d) >= len(prefix) && bytes.Equal(d[:len(prefix)], prefix) {
			return true
		}
	}
	return false
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
func (t *dispatchTree) jumpTo(prefix []byte, chain string) iptables.Rule {
	rl := &iptables.RuleBuilder{}
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
		rl.Dst = netip.PrefixFrom(addr, digitBits*len(prefix)).String()
	case keyPort:
		if len(prefix) > 0 {
			rl.Proto = protocolDigits[prefix[0]]
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
			rl.Match("-m", rl.Proto, "--dport", ports)
		}
	}
	return rl.Jump(chain).Rule()
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
// they differ, and adds the chains below to t.chains. old holds the
// previous build's nodes at this level (nil: nothing to reuse); the nodes
// of this build are returned.
func (t *dispatchTree) split(entries []dispatchEntry, old map[string]*dispatchNode) ([]iptables.Rule, map[string]*dispatchNode) {
	lcp := commonPrefix(entries[0].key, entries[len(entries)-1].key)
	var out []iptables.Rule
	nodes := map[string]*dispatchNode{}
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && entries[j].key[lcp] == entries[i].key[lcp] {
			j++
		}
		group := entries[i:j]
		i = j
		groupPrefix := group[0].key[:lcp+1]
		id := string(groupPrefix)
		prev := old[id]
		if prev != nil && !t.dirtyUnder(groupPrefix) {
			// The same entries as last time: the same chains.
			nodes[id] = prev
			out = append(out, prev.jump)
			t.chains = append(t.chains, prev.chains...)
			continue
		}
		first := len(t.chains)
		n := &dispatchNode{}
		inner := commonPrefix(group[0].key, group[len(group)-1].key)
		if len(group) > LeafMax && inner < len(group[0].key) {
			// An internal chain, named by (and matching) the whole prefix
			// its entries share, so single-child paths collapse.
			prefix := group[0].key[:inner]
			c := &Chain{Name: t.chainName(prefix)}
			t.chains = append(t.chains, c)
			var prevChildren map[string]*dispatchNode
			if prev != nil {
				prevChildren = prev.children
			}
			c.Rules, n.children = t.split(group, prevChildren)
			n.jump = t.jumpTo(prefix, c.Name)
		} else {
			name := t.chainName(groupPrefix)
			n.jump = t.jumpTo(groupPrefix, name)
			t.chains = append(t.chains, &Chain{Name: name, Rules: leafRules(group)})
		}
		n.chains = slices.Clip(t.chains[first:len(t.chains):len(t.chains)])
		nodes[id] = n
		out = append(out, n.jump)
	}
	return out, nodes
}

// compareFlat orders entries as kube-proxy's flat chain lists them: by
// Service port (sort key), then in the order the Service port added them.
func compareFlat(a, b *dispatchEntry) int {
	if c := strings.Compare(a.svc, b.svc); c != 0 {
		return c
	}
	return int(a.seq) - int(b.seq)
}

// compareSorted orders entries as a dispatch tree keeps them: by kind, key,
// then flat order.
func compareSorted(a, b *dispatchEntry) int {
	if a.kind != b.kind {
		return int(a.kind) - int(b.kind)
	}
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c
	}
	return compareFlat(a, b)
}

// leafRules returns the entries' rules in kube-proxy's order.
func leafRules(entries []dispatchEntry) []iptables.Rule {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b dispatchEntry) int { return compareFlat(&a, &b) })
	out := make([]iptables.Rule, len(sorted))
	for i, e := range sorted {
		out[i] = e.body
	}
	return out
}

// dispatchState is one shared chain's dispatch tree kept between renders:
// its entries sorted by kind, key and flat order, and the last build's
// nodes, so that a render after a few Services changed rebuilds only the
// chains on the paths to their keys.
type dispatchState struct {
	family, table, root string
	// entries are sorted by compareSorted.
	entries []dispatchEntry
	// dirty holds the keys added or removed since the last build, per
	// kind; dirtyAll forces a build from scratch.
	dirty    [2][][]byte
	dirtyAll bool
	// nodes are the last build's top-level nodes, per kind.
	nodes [2]map[string]*dispatchNode
	// top and chains are the last build's result.
	top    []iptables.Rule
	chains []*Chain
	built  bool
}

// insert adds an entry.
func (d *dispatchState) insert(e dispatchEntry) {
	i, _ := slices.BinarySearchFunc(d.entries, &e, func(x dispatchEntry, y *dispatchEntry) int { return compareSorted(&x, y) })
	d.entries = slices.Insert(d.entries, i, e)
	d.dirty[e.kind] = append(d.dirty[e.kind], e.key)
}

// remove deletes an entry added before (matched by kind, key and flat
// order).
func (d *dispatchState) remove(e dispatchEntry) {
	i, found := slices.BinarySearchFunc(d.entries, &e, func(x dispatchEntry, y *dispatchEntry) int { return compareSorted(&x, y) })
	if !found {
		d.dirtyAll = true // cannot happen; rebuild rather than guess
		return
	}
	d.entries = slices.Delete(d.entries, i, i+1)
	d.dirty[e.kind] = append(d.dirty[e.kind], e.key)
}

// changed reports whether a build would differ from the last one.
func (d *dispatchState) changed() bool {
	return !d.built || d.dirtyAll || len(d.dirty[keyAddr]) > 0 || len(d.dirty[keyPort]) > 0
}

// build returns the root's rules and every dispatch chain, and, against
// the previous build, the chains that are new objects (fresh) and the
// names of the chains that are gone (both only when delta is set).
// Subtrees with no changed key are reused. With at most LeafMax entries in
// all, the root holds them flat in kube-proxy's order; otherwise the
// address-keyed entries become one tree and the port-keyed ones another,
// with the jumps to the address tree first in the root.
func (d *dispatchState) build(delta bool) (top []iptables.Rule, chains, fresh []*Chain, gone []string) {
	if !d.changed() {
		return d.top, d.chains, nil, nil
	}
	old := d.chains
	if d.dirtyAll || !d.built {
		d.nodes = [2]map[string]*dispatchNode{}
	}
	d.top, d.chains = nil, nil
	if len(d.entries) <= LeafMax {
		d.top = leafRules(d.entries)
		d.nodes = [2]map[string]*dispatchNode{}
	} else {
		for _, kind := range []keyKind{keyAddr, keyPort} {
			lo, _ := slices.BinarySearchFunc(d.entries, kind, func(x dispatchEntry, k keyKind) int { return int(x.kind) - int(k) })
			hi, _ := slices.BinarySearchFunc(d.entries, kind+1, func(x dispatchEntry, k keyKind) int { return int(x.kind) - int(k) })
			sorted := d.entries[lo:hi]
			if len(sorted) == 0 {
				d.nodes[kind] = nil
				continue
			}
			if len(sorted) <= LeafMax || bytes.Equal(sorted[0].key, sorted[len(sorted)-1].key) {
				d.top = append(d.top, leafRules(sorted)...)
				d.nodes[kind] = nil
				continue
			}
			t := &dispatchTree{family: d.family, table: d.table, root: d.root, kind: kind, dirty: d.dirty[kind]}
			var rules []iptables.Rule
			rules, d.nodes[kind] = t.split(sorted, d.nodes[kind])
			d.top = append(d.top, rules...)
			d.chains = append(d.chains, t.chains...)
		}
	}
	d.dirty = [2][][]byte{}
	d.dirtyAll = false
	d.built = true
	if delta {
		oldPtr := make(map[*Chain]bool, len(old))
		for _, c := range old {
			oldPtr[c] = true
		}
		now := make(map[string]bool, len(d.chains))
		for _, c := range d.chains {
			now[c.Name] = true
			if !oldPtr[c] {
				fresh = append(fresh, c)
			}
		}
		for _, c := range old {
			if !now[c.Name] {
				gone = append(gone, c.Name)
			}
		}
	}
	return d.top, d.chains, fresh, gone
}
