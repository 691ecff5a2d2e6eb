package iptables

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"
)

func TestScanEvidence(t *testing.T) {
	tests := []struct {
		name string
		save string
		want evidence
	}{{
		name: "empty",
		want: evidence{},
	}, {
		name: "hint in mangle",
		save: "# Generated\n*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
		want: evidence{hint: "KUBE-IPTABLES-HINT", kubeLines: 2},
	}, {
		name: "kubelet canary in filter",
		save: "*filter\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
		want: evidence{hint: "KUBE-KUBELET-CANARY", kubeLines: 1},
	}, {
		name: "kube-proxy rules",
		save: "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n" +
			"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n" +
			"-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-X\n-A OTHER -j ACCEPT\nCOMMIT\n",
		want: evidence{kubeLines: 4},
	}, {
		name: "other tables ignored",
		save: "*raw\n:KUBE-IPTABLES-HINT - [0:0]\n-A PREROUTING -j KUBE-X\nCOMMIT\n*security\n:KUBE-Y - [0:0]\nCOMMIT\n",
		want: evidence{},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := scanEvidence(strings.NewReader(tc.save))
			if err != nil || got != tc.want {
				t.Errorf("scanEvidence() = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

const (
	hintSave = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	kube1    = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
	canary   = "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n"
	kube3    = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-A\nCOMMIT\n"
)

// saves maps "<tool> <args>" (e.g. "iptables-nft-save -t mangle",
// "iptables-legacy-save ") to the output the fake prints.
func installDetectFakes(t *testing.T, dir string, backends []Backend, saves map[string]string) {
	t.Helper()
	for _, b := range backends {
		mode := map[Backend]string{BackendNFT: "nf_tables", BackendLegacy: "legacy"}[b]
		for _, prefix := range []string{"iptables", "ip6tables"} {
			save := prefix + "-" + string(b) + "-save"
			fakeTool(t, dir, prefix+"-"+string(b)+"-restore", mode, "exit 0")
			fakeTool(t, dir, save, mode, `cat "`+dir+`/`+save+`.$*" 2>/dev/null; exit 0`)
		}
	}
	for key, out := range saves {
		if err := os.WriteFile(filepath.Join(dir, key), []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDetectBackend(t *testing.T) {
	both := []Backend{BackendNFT, BackendLegacy}
	tests := []struct {
		name     string
		backends []Backend
		saves    map[string]string
		want     Backend
		wantErr  error
	}{
		{name: "nothing anywhere", backends: both, want: BackendNFT},
		{name: "only legacy tools", backends: []Backend{BackendLegacy}, saves: map[string]string{"iptables-nft-save.-t mangle": hintSave}, want: BackendLegacy},
		{name: "only nft tools", backends: []Backend{BackendNFT}, saves: map[string]string{"iptables-legacy-save.": hintSave}, want: BackendNFT},
		{name: "no tools", wantErr: ErrToolNotFound},
		{name: "hint in nft", backends: both, saves: map[string]string{"iptables-nft-save.-t mangle": hintSave}, want: BackendNFT},
		{name: "hint in nft ip6", backends: both, saves: map[string]string{"ip6tables-nft-save.-t mangle": hintSave}, want: BackendNFT},
		{name: "hint in legacy", backends: both, saves: map[string]string{"iptables-legacy-save.": hintSave}, want: BackendLegacy},
		{
			name:     "legacy save must not be asked for one table",
			backends: both,
			saves:    map[string]string{"iptables-legacy-save.-t mangle": hintSave},
			want:     BackendNFT,
		},
		{
			name:     "hint beats more rules",
			backends: both,
			saves:    map[string]string{"iptables-nft-save.-t mangle": hintSave, "iptables-legacy-save.": kube3},
			want:     BackendNFT,
		},
		{
			// A restart on a node without kubelet's chains: the canary
			// in nft's small mangle table decides, even where counting
			// lines would not (nft's nat is then never read).
			name:     "canary in nft mangle beats more rules in legacy",
			backends: both,
			saves:    map[string]string{"iptables-nft-save.-t mangle": canary, "iptables-legacy-save.": kube3},
			want:     BackendNFT,
		},
		{
			name:     "canary in legacy mangle beats more rules in nft",
			backends: both,
			saves:    map[string]string{"iptables-legacy-save.": canary, "iptables-nft-save.-t nat": kube3},
			want:     BackendLegacy,
		},
		{
			name:     "canary in both: more KUBE rules decide",
			backends: both,
			saves:    map[string]string{"iptables-legacy-save.": canary + kube3, "iptables-nft-save.-t mangle": canary},
			want:     BackendLegacy,
		},
		{
			name:     "canary outside mangle is no evidence",
			backends: both,
			saves:    map[string]string{"iptables-nft-save.-t nat": strings.Replace(canary, "mangle", "nat", 1), "iptables-legacy-save.": kube3},
			want:     BackendLegacy,
		},
		{
			name:     "more KUBE rules in legacy",
			backends: both,
			saves:    map[string]string{"iptables-nft-save.-t nat": kube1, "iptables-legacy-save.": kube3},
			want:     BackendLegacy,
		},
		{
			name:     "more KUBE rules in nft",
			backends: both,
			saves:    map[string]string{"ip6tables-nft-save.-t filter": kube3, "iptables-legacy-save.": kube1},
			want:     BackendNFT,
		},
		{
			name:     "tie goes to nft",
			backends: both,
			saves:    map[string]string{"iptables-nft-save.-t nat": kube3, "ip6tables-legacy-save.": kube3},
			want:     BackendNFT,
		},
	}
	for _, tc := range tests {
		// Each case runs twice: nft's mangle chains looked up one by one
		// (as in the kernel, here from the fake dumps), and with those
		// lookups failing, from the dumps themselves.
		for _, lookups := range []bool{true, false} {
			name := tc.name + "/chain lookups"
			if !lookups {
				name = tc.name + "/dumps"
			}
			t.Run(name, func(t *testing.T) {
				detectCase(t, tc.backends, tc.saves, lookups, tc.want, tc.wantErr)
			})
		}
	}
}

// detectCase runs DetectBackend over fake tools printing saves; lookups
// says whether single-chain lookups in nft's tables work (answered from
// the fake nft mangle dumps) or fail.
func detectCase(t *testing.T, backends []Backend, saves map[string]string, lookups bool, want Backend, wantErr error) {
	dir := t.TempDir()
	installDetectFakes(t, dir, backends, saves)
	_, ctx := ktesting.NewTestContext(t)
	exists := func(fam v1.IPFamily, table Table, chain string) (bool, error) {
		if !lookups {
			return false, errors.New("no netlink here")
		}
		key := "iptables-nft-save.-t " + string(table)
		if fam == v1.IPv6Protocol {
			key = "ip6" + key
		}
		return slices.Contains(backends, BackendNFT) && strings.Contains(saves[key], "\n:"+chain+" "), nil
	}
	got, err := DetectBackend(ctx, WithBinDir(dir), func(o *options) { o.nftChainExists = exists })
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Fatalf("DetectBackend() error = %v, want %v", err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Errorf("DetectBackend() = %q, %v; want %q", got, err, want)
	}
}
