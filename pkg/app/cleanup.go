package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// ownedTopLevel are the shared chains iptproxy (and kube-proxy) create.
var ownedTopLevel = []string{
	rules.ChainServices, rules.ChainExternalServices, rules.ChainNodePorts, rules.ChainPostrouting,
	rules.ChainMarkMasq, rules.ChainForward, rules.ChainProxyFirewall, rules.ChainCanary,
	rules.ChainKubeletFirewall,
}

// ownsChain reports whether --cleanup removes chain.
func ownsChain(chain string) bool {
	return rules.IsServiceChain(chain) || slices.Contains(ownedTopLevel, chain)
}

// Cleanup removes every rule and chain iptproxy (or kube-proxy's iptables
// mode) installed, in both backends and both IP families, and leaves
// everything else alone. KUBE-FIREWALL, which kubelet may share, is
// removed only when it holds nothing but the anti-martian rule.
func Cleanup(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	var errs []error
	for _, backend := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if err := iptables.Present(ctx, fam, backend); err != nil {
				logger.V(2).Info("Skipping cleanup", "backend", backend, "ipFamily", fam, "reason", err.Error())
				continue
			}
			ipt, err := iptables.New(fam, backend, iptables.WithLogger(logger))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := cleanupOne(ctx, ipt); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", backend, fam, err))
			}
		}
	}
	return errors.Join(errs...)
}

func cleanupOne(ctx context.Context, ipt iptables.Interface) error {
	logger := klog.FromContext(ctx)
	var tx iptables.Transaction
	removed := 0
	for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle} {
		save, err := ipt.Save(ctx, table)
		if err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		saved, err := iptables.ParseSaveTable(table, save)
		if err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		doomed := doomedChains(logger, saved)
		if len(doomed) == 0 {
			continue
		}
		// Remove the jumps to our chains from the built-in chains first.
		for _, c := range saved.Chains {
			if !c.Builtin() {
				continue // a user chain; it goes away whole
			}
			for _, r := range c.Rules {
				if !r.Goto() && slices.Contains(doomed, r.Target()) {
					if err := ipt.DeleteRule(ctx, table, c.Name, r.Args()...); err != nil {
						return fmt.Errorf("deleting jump from %s: %w", c.Name, err)
					}
				}
			}
		}
		tx.Rewrite(table, nil, doomed)
		removed += len(doomed)
	}
	if tx.Empty() {
		return nil
	}
	if err := ipt.Restore(ctx, tx.Bytes()); err != nil {
		return fmt.Errorf("deleting chains: %w", err)
	}
	logger.Info("Removed iptproxy's chains", "ipFamily", ipt.Family(), "chains", removed)
	return nil
}

// doomedChains returns, sorted, the user chains of a table that --cleanup
// removes.
func doomedChains(logger klog.Logger, saved *iptables.SavedTable) []string {
	var doomed []string
	for _, c := range saved.Chains {
		if c.Builtin() || !ownsChain(c.Name) {
			continue
		}
		if c.Name == rules.ChainKubeletFirewall && !onlyAntiMartian(c.Rules) {
			logger.Info("Leaving KUBE-FIREWALL in place: it holds rules of another program", "table", saved.Name)
			continue
		}
		doomed = append(doomed, c.Name)
	}
	slices.Sort(doomed)
	return doomed
}

// onlyAntiMartian reports whether a KUBE-FIREWALL chain holds nothing but
// the rule iptproxy writes there.
func onlyAntiMartian(rules []iptables.Rule) bool {
	for _, r := range rules {
		if !strings.Contains(r.Comment(), "block incoming localnet connections") {
			return false
		}
	}
	return true
}

// isLoopbackRemote reports whether an HTTP request's remote address is a
// loopback address.
func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
