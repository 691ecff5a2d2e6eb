package iptables

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Chains kubelet (1.17 and later) creates in the backend the node uses.
const (
	hintChain          = "KUBE-IPTABLES-HINT"
	kubeletCanaryChain = "KUBE-KUBELET-CANARY"
)

// detectSaveTimeout bounds each iptables-save DetectBackend runs: on
// iptables-nft a huge table can take minutes to dump.
const detectSaveTimeout = 30 * time.Second

// evidence is what one iptables-save dump says about its backend.
type evidence struct {
	// hint is the kubelet chain found, "" if none.
	hint string
	// canary is true when the mangle table holds KUBE-PROXY-CANARY, which
	// iptproxy and kube-proxy's iptables mode create in the backend they
	// write to.
	canary bool
	// kubeLines counts chain declarations and rules mentioning "KUBE-" in
	// the mangle, nat and filter tables.
	kubeLines int
}

func (e *evidence) add(o evidence) {
	if e.hint == "" {
		e.hint = o.hint
	}
	e.canary = e.canary || o.canary
	e.kubeLines += o.kubeLines
}

// scanEvidence reads iptables-save output, looking only at the mangle, nat
// and filter tables.
func scanEvidence(r io.Reader) (evidence, error) {
	var ev evidence
	err := ReadSave(r, func(it SaveItem) error {
		switch it.Table {
		case TableMangle, TableNAT, TableFilter:
		default:
			return nil
		}
		switch {
		case it.IsRule:
			if strings.Contains(it.Chain, "KUBE-") || strings.Contains(it.Rule.String(), "KUBE-") {
				ev.kubeLines++
			}
		default:
			if ev.hint == "" && (it.Chain == hintChain || it.Chain == kubeletCanaryChain) {
				ev.hint = it.Chain
			}
			if it.Table == TableMangle && it.Chain == CanaryChain {
				ev.canary = true
			}
			if strings.HasPrefix(it.Chain, "KUBE-") {
				ev.kubeLines++
			}
		}
		return nil
	})
	return ev, err
}

// saveEvidence runs "save args..." and scans its output.
func saveEvidence(ctx context.Context, save string, args ...string) (evidence, error) {
	ctx, cancel := context.WithTimeout(ctx, detectSaveTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, save, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return evidence{}, fmt.Errorf("running %s: %w", save, err)
	}
	if err := cmd.Start(); err != nil {
		return evidence{}, fmt.Errorf("running %s: %w", save, err)
	}
	ev, scanErr := scanEvidence(out)
	if scanErr != nil {
		// Drain so the tool can exit.
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return ev, fmt.Errorf("running %s %s: %w: %s", save, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return ev, scanErr
}

// nftMangleEvidence looks for kubelet's chains and the canary in nft's
// mangle tables (IPv4 and IPv6) with single-chain kernel lookups.
func (o options) nftMangleEvidence() (evidence, error) {
	exists := o.nftChainExists
	if exists == nil {
		exists = NFTChainExists
	}
	var ev evidence
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, chain := range []string{hintChain, kubeletCanaryChain, CanaryChain} {
			ok, err := exists(fam, TableMangle, chain)
			if err != nil {
				return evidence{}, err
			}
			switch {
			case !ok:
			case chain == CanaryChain:
				ev.canary = true
			case ev.hint == "":
				ev.hint = chain
			}
		}
	}
	return ev, nil
}

// backendSaves returns the backend's iptables-save and ip6tables-save
// (suffixed names only: a plain "iptables-save" could be either backend);
// nil when the backend's tools are not installed.
func backendSaves(binDir string, b Backend) []string {
	var saves []string
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		prefix, _ := toolPrefix(family)
		save, err := lookTool(binDir, prefix+"-"+string(b)+"-save")
		if err != nil {
			continue
		}
		if _, err := lookTool(binDir, prefix+"-"+string(b)+"-restore"); err != nil {
			continue
		}
		saves = append(saves, save)
	}
	return saves
}

// DetectBackend picks the iptables backend the node already uses, as
// kube-proxy's image does with iptables-wrapper:
//
//  1. Without the nft tools it picks legacy; without the legacy tools, nft.
//  2. A backend holding kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY
//     chain wins: nft is checked first (its mangle tables, by asking the
//     kernel for those chains alone; iptables-nft-save -t mangle fetches
//     the whole ruleset, 9 s at 10,000 Services), then legacy (a full dump:
//     "iptables-legacy-save -t mangle" would make the kernel create the
//     table; on an nft node the legacy tables are empty and cheap).
//  3. Otherwise a backend whose mangle table alone holds KUBE-PROXY-CANARY
//     (left by iptproxy or kube-proxy's iptables mode) wins: the same two
//     reads tell, so a restart on a node without kubelet's chains costs no
//     more than on one with them.
//  4. Only then, as a last resort, the backend with more KUBE- chains and
//     rules in mangle, nat and filter (IPv4 and IPv6 together) wins: that
//     reads nft's whole nat and filter tables, seconds at 10,000 Services.
//  5. With no evidence at all, nft.
//
// A save that fails is logged and counts as no evidence. DetectBackend logs
// the reason for its choice. The options that matter are WithBinDir.
func DetectBackend(ctx context.Context, opts ...Option) (Backend, error) {
	o := buildOptions(opts)
	logger := klog.FromContext(ctx)

	nftSaves := backendSaves(o.binDir, BackendNFT)
	legacySaves := backendSaves(o.binDir, BackendLegacy)
	switch {
	case len(nftSaves) == 0 && len(legacySaves) == 0:
		return "", fmt.Errorf("neither iptables-nft nor iptables-legacy tools found: %w", ErrToolNotFound)
	case len(nftSaves) == 0:
		logger.Info("Detected iptables backend", "backend", BackendLegacy, "reason", "iptables-nft tools not found")
		return BackendLegacy, nil
	case len(legacySaves) == 0:
		logger.Info("Detected iptables backend", "backend", BackendNFT, "reason", "iptables-legacy tools not found")
		return BackendNFT, nil
	}

	collect := func(save string, args ...string) evidence {
		ev, err := saveEvidence(ctx, save, args...)
		if err != nil {
			logger.V(2).Info("Ignoring failed iptables-save during backend detection", "command", save, "args", args, "err", err)
		}
		return ev
	}

	// Kubelet's chains, nft first: the kernel answers for single chains of
	// its mangle table at once (iptables-nft-save -t mangle would fetch
	// the whole ruleset first).
	nft, err := o.nftMangleEvidence()
	if err != nil {
		logger.V(2).Info("Asking the kernel for nft's mangle chains failed; reading the tables instead", "err", err)
		nft = evidence{}
		for _, save := range nftSaves {
			nft.add(collect(save, "-t", string(TableMangle)))
		}
	}
	if nft.hint != "" {
		logger.Info("Detected iptables backend", "backend", BackendNFT, "reason", "kubelet chain found", "chain", nft.hint)
		return BackendNFT, nil
	}
	var legacy evidence
	for _, save := range legacySaves {
		legacy.add(collect(save))
		if legacy.hint != "" {
			logger.Info("Detected iptables backend", "backend", BackendLegacy,
				"reason", "kubelet chain found", "chain", legacy.hint, "command", save)
			return BackendLegacy, nil
		}
	}
	if nft.canary != legacy.canary {
		b := BackendNFT
		if legacy.canary {
			b = BackendLegacy
		}
		logger.Info("Detected iptables backend", "backend", b, "reason", "KUBE-PROXY-CANARY found in its mangle table only")
		return b, nil
	}
	// legacy already holds every table; nft still needs nat and filter.
	for _, save := range nftSaves {
		for _, table := range []Table{TableNAT, TableFilter} {
			nft.add(collect(save, "-t", string(table)))
		}
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("detecting iptables backend: %w", err)
	}
	switch {
	case legacy.kubeLines > nft.kubeLines:
		logger.Info("Detected iptables backend", "backend", BackendLegacy,
			"reason", "more KUBE- chains and rules", "legacyLines", legacy.kubeLines, "nftLines", nft.kubeLines)
		return BackendLegacy, nil
	case nft.kubeLines > 0:
		logger.Info("Detected iptables backend", "backend", BackendNFT,
			"reason", "more KUBE- chains and rules", "legacyLines", legacy.kubeLines, "nftLines", nft.kubeLines)
		return BackendNFT, nil
	default:
		logger.Info("Detected iptables backend", "backend", BackendNFT,
			"reason", "no kubelet or KUBE- chains in either backend; nft is the default")
		return BackendNFT, nil
	}
}
