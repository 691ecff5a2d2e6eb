package proxier

import (
	"github.com/iptproxy/iptproxy/pkg/iptables"
	"github.com/iptproxy/iptproxy/pkg/rules"
)

// jump is a rule in a built-in chain that sends packets to one of ours.
type jump struct {
	table   iptables.Table
	from    string
	to      string
	comment string
	extra   []string
}

// args returns the rule's iptables arguments.
func (j jump) args() []string {
	a := append([]string{}, j.extra...)
	if j.comment != "" {
		a = append(a, "-m", "comment", "--comment", j.comment)
	}
	return append(a, "-j", j.to)
}

// rule returns the rule as iptables-save prints it, to find the exact
// rule in a dump.
func (j jump) rule() iptables.Rule {
	b := (&iptables.RuleBuilder{}).Match(j.extra...)
	if j.comment != "" {
		b.Comment(j.comment)
	}
	return b.Jump(j.to).Rule()
}

var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}

// jumps returns kube-proxy's jumps from the built-in chains, in the order
// it installs them (each is prepended, so the last ends up first).
func jumps() []jump {
	return []jump{
		{iptables.TableFilter, iptables.ChainInput, rules.ChainExternalServices, "kubernetes externally-visible service portals", ctNew},
		{iptables.TableFilter, iptables.ChainForward, rules.ChainExternalServices, "kubernetes externally-visible service portals", ctNew},
		{iptables.TableFilter, iptables.ChainInput, rules.ChainNodePorts, "kubernetes health check service ports", nil},
		{iptables.TableFilter, iptables.ChainForward, rules.ChainServices, "kubernetes service portals", ctNew},
		{iptables.TableFilter, iptables.ChainOutput, rules.ChainServices, "kubernetes service portals", ctNew},
		{iptables.TableFilter, iptables.ChainForward, rules.ChainForward, "kubernetes forwarding rules", nil},
		{iptables.TableFilter, iptables.ChainInput, rules.ChainProxyFirewall, "kubernetes load balancer firewall", ctNew},
		{iptables.TableFilter, iptables.ChainOutput, rules.ChainProxyFirewall, "kubernetes load balancer firewall", ctNew},
		{iptables.TableFilter, iptables.ChainForward, rules.ChainProxyFirewall, "kubernetes load balancer firewall", ctNew},
		{iptables.TableNAT, iptables.ChainOutput, rules.ChainServices, "kubernetes service portals", nil},
		{iptables.TableNAT, iptables.ChainPrerouting, rules.ChainServices, "kubernetes service portals", nil},
		{iptables.TableNAT, iptables.ChainPostrouting, rules.ChainPostrouting, "kubernetes postrouting rules", nil},
	}
}

// kubeletJumps are the jumps to kubelet's KUBE-FIREWALL chain, which
// iptproxy also installs (as kube-proxy does) for the anti-martian rule.
func kubeletJumps() []jump {
	return []jump{
		{iptables.TableFilter, iptables.ChainInput, rules.ChainKubeletFirewall, "", nil},
		{iptables.TableFilter, iptables.ChainOutput, rules.ChainKubeletFirewall, "", nil},
	}
}
