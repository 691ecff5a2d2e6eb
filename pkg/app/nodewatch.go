package app

import (
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/healthcheck"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
)

// nodeWatcher follows the node's own object: its zone label feeds topology
// hints and its eligibility feeds /healthz. As kube-proxy, iptproxy exits
// (to be restarted) when the node's IPs change, when its pod CIDRs change
// while they drive local-traffic detection, or when the node is deleted.
type nodeWatcher struct {
	logger       klog.Logger
	initial      *nodeInfo
	watchPodCIDR bool
	health       *healthcheck.ProxyHealth
	proxiers     []*proxier.Proxier
	fatal        chan<- error
}

func (w *nodeWatcher) handlers() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.onChange(obj) },
		UpdateFunc: func(_, obj any) { w.onChange(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*v1.Node); ok {
				w.logger.Info("Node is being deleted; exiting so that iptproxy restarts", "node", klog.KObj(n))
				w.exit(fmt.Errorf("node %s was deleted", n.Name))
			}
		},
	}
}

func (w *nodeWatcher) exit(err error) {
	select {
	case w.fatal <- err:
	default:
	}
}

func (w *nodeWatcher) onChange(obj any) {
	node, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	w.health.SyncNode(node)
	if w.watchPodCIDR && !slices.Equal(w.initial.podCIDRs, node.Spec.PodCIDRs) {
		w.logger.Info("PodCIDRs changed for the node; exiting so that iptproxy restarts", "node", klog.KObj(node),
			"newPodCIDRs", node.Spec.PodCIDRs, "oldPodCIDRs", w.initial.podCIDRs)
		w.exit(fmt.Errorf("pod CIDRs of node %s changed", node.Name))
		return
	}
	ips := nodeHostIPs(node)
	if !slices.Equal(ips, w.initial.ips) {
		w.logger.Info("NodeIPs changed for the node; exiting so that iptproxy restarts", "node", klog.KObj(node),
			"newNodeIPs", ips, "oldNodeIPs", w.initial.ips)
		w.exit(fmt.Errorf("IPs of node %s changed", node.Name))
		return
	}
	zone := node.Labels[proxy.LabelTopologyZone]
	for _, p := range w.proxiers {
		p.OnNodeUpdate(zone, familyIPs(ips, p.Family()))
	}
}
