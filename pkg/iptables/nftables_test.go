package iptables_test

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/kerneltest"
)

// TestJournalTellsOwnWritesFromForeign runs the real nft tools in a private
// namespace: writes made through a Runner with the Journal leave Foreign
// unchanged, a write made by another process (iptables run by hand) moves
// it, and reading the tables moves nothing.
func TestJournalTellsOwnWritesFromForeign(t *testing.T) {
	kerneltest.Enter(t)
	ctx := context.Background()
	if err := iptables.Present(ctx, v1.IPv4Protocol, iptables.BackendNFT); err != nil {
		t.Skipf("iptables-nft not usable here: %v", err)
	}
	if _, err := iptables.ReadNFTGeneration(); err != nil {
		t.Skipf("nftables generation not readable here: %v", err)
	}
	j := iptables.NewJournal()
	r, err := iptables.New(v1.IPv4Protocol, iptables.BackendNFT, iptables.WithJournal(j))
	if err != nil {
		t.Fatal(err)
	}
	foreign := func() uint64 {
		t.Helper()
		n, ok := r.Foreign()
		if !ok {
			t.Fatal("Foreign: generation not readable")
		}
		return n
	}
	start := foreign()
	steps := []struct {
		name    string
		do      func()
		changed bool
	}{
		{"restore through the runner", func() {
			if err := r.Restore(ctx, []byte("*nat\n:KUBE-TEST - [0:0]\n-A KUBE-TEST -j RETURN\nCOMMIT\n*filter\n:KUBE-TEST - [0:0]\nCOMMIT\n")); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"save", func() {
			if _, err := r.Save(ctx, iptables.TableNAT); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"ensure chain through the runner", func() {
			if _, err := r.EnsureChain(ctx, iptables.TableMangle, "KUBE-TEST"); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"another process inserts a rule", func() {
			kerneltest.Run(t, "iptables-nft", "-t", "nat", "-I", "KUBE-TEST", "1", "-j", "ACCEPT")
		}, true},
		{"nothing", func() {}, false},
		{"another process, then the runner", func() {
			kerneltest.Run(t, "iptables-nft", "-t", "nat", "-F", "KUBE-TEST")
			if err := r.DeleteChain(ctx, iptables.TableMangle, "KUBE-TEST"); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	last := start
	for _, s := range steps {
		s.do()
		now := foreign()
		if got := now != last; got != s.changed {
			t.Errorf("%s: foreign change seen = %v, want %v (count %d -> %d)", s.name, got, s.changed, last, now)
		}
		last = now
	}
}

// TestNFTChainExists asks the kernel for single chains of iptables-nft's
// tables in a private namespace: present, absent, and in a table that
// does not exist yet.
func TestNFTChainExists(t *testing.T) {
	kerneltest.Enter(t)
	if err := iptables.Present(context.Background(), v1.IPv4Protocol, iptables.BackendNFT); err != nil {
		t.Skipf("iptables-nft not usable here: %v", err)
	}
	check := func(fam v1.IPFamily, table iptables.Table, chain string, want bool) {
		t.Helper()
		got, err := iptables.NFTChainExists(fam, table, chain)
		if err != nil || got != want {
			t.Errorf("NFTChainExists(%s, %s, %s) = %v, %v; want %v", fam, table, chain, got, err, want)
		}
	}
	check(v1.IPv4Protocol, iptables.TableMangle, "KUBE-IPTABLES-HINT", false) // no table yet
	kerneltest.Run(t, "iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
	check(v1.IPv4Protocol, iptables.TableMangle, "KUBE-IPTABLES-HINT", true)
	check(v1.IPv4Protocol, iptables.TableMangle, "KUBE-PROXY-CANARY", false)
	check(v1.IPv6Protocol, iptables.TableMangle, "KUBE-IPTABLES-HINT", false)
	check(v1.IPv4Protocol, iptables.TableNAT, "KUBE-IPTABLES-HINT", false)
}
