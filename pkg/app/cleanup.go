package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/planner"
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
	var payload bytes.Buffer
	removed := 0
	for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle} {
		save, err := ipt.Save(ctx, table)
		if err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		chains := planner.ParseSave(save)
		doomed := map[string]bool{}
		for name, body := range chains {
			if !ownsChain(name) {
				continue
			}
			if name == rules.ChainKubeletFirewall && !onlyAntiMartian(body) {
				logger.Info("Leaving KUBE-FIREWALL in place: it holds rules of another program", "table", table)
				continue
			}
			doomed[name] = true
		}
		if len(doomed) == 0 {
			continue
		}
		// Remove the jumps to our chains from the built-in chains first.
		for _, line := range strings.Split(string(save), "\n") {
			if !strings.HasPrefix(line, "-A ") {
				continue
			}
			args, err := ruleset.Tokenize(line)
			if err != nil || len(args) < 2 {
				continue
			}
			chain, spec := args[1], args[2:]
			if _, own := chains[chain]; own {
				continue // a user chain; it goes away whole
			}
			if i := slices.Index(spec, "-j"); i >= 0 && i+1 < len(spec) && doomed[spec[i+1]] {
				if err := ipt.DeleteRule(ctx, table, chain, spec...); err != nil {
					return fmt.Errorf("deleting jump from %s: %w", chain, err)
				}
			}
		}
		names := make([]string, 0, len(doomed))
		for n := range doomed {
			names = append(names, n)
		}
		slices.Sort(names)
		payload.WriteString("*" + string(table) + "\n")
		for _, n := range names {
			payload.WriteString(":" + n + " - [0:0]\n")
		}
		for _, n := range names {
			payload.WriteString("-X " + n + "\n")
		}
		payload.WriteString("COMMIT\n")
		removed += len(names)
	}
	if payload.Len() == 0 {
		return nil
	}
	if err := ipt.Restore(ctx, payload.Bytes()); err != nil {
		return fmt.Errorf("deleting chains: %w", err)
	}
	logger.Info("Removed iptproxy's chains", "ipFamily", ipt.Family(), "chains", removed)
	return nil
}

// onlyAntiMartian reports whether a KUBE-FIREWALL chain holds nothing but
// the rule iptproxy writes there.
func onlyAntiMartian(body []string) bool {
	for _, r := range body {
		if !strings.Contains(r, "block incoming localnet connections") {
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
