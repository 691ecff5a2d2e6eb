package app

import (
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/nfacct"
)

// nfacctCounters are the nfacct objects the rules may count packets in;
// "" for one that could not be created (its rules then count nothing).
type nfacctCounters struct {
	localhostNodePorts, invalidDropped string
}

// setupNFAcct creates kube-proxy's two nfacct counters and registers the
// metrics that read them, as kube-proxy does at start. Without nfacct
// support in the kernel it logs one line and counts nothing.
func setupNFAcct(logger klog.Logger, m *metrics.Metrics) nfacctCounters {
	acct, err := nfacct.New()
	if err != nil {
		logger.Info("nfacct is not available; the nfacct-based metrics are off", "reason", err.Error())
		return nfacctCounters{}
	}
	ensure := func(name string) string {
		if err := acct.Ensure(name); err != nil {
			logger.Error(err, "Failed to create nfacct counter; the corresponding metric will not be updated", "counter", name)
			return ""
		}
		return name
	}
	c := nfacctCounters{
		localhostNodePorts: ensure(metrics.LocalhostNodePortAcceptedNFAcctCounter),
		invalidDropped:     ensure(metrics.CTStateInvalidDroppedNFAcctCounter),
	}
	if err := m.RegisterNFAcct(logger, acct); err != nil {
		logger.Error(err, "Registering the nfacct metrics")
	}
	return c
}

// enabled returns name when the counter of that name was created, "" when
// it was not.
func (c nfacctCounters) enabled(name string) string {
	if name != "" && (name == c.localhostNodePorts || name == c.invalidDropped) {
		return name
	}
	return ""
}
