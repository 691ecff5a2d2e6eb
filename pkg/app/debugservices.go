package app

import (
	"context"
	"errors"
	"net/http"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/klog/v2"

	"github.com/iptproxy/iptproxy/pkg/explain"
	"github.com/iptproxy/iptproxy/pkg/iptables/ruleset"
	"github.com/iptproxy/iptproxy/pkg/proxier"
	"github.com/iptproxy/iptproxy/pkg/proxy"
	"github.com/iptproxy/iptproxy/pkg/rules"
	"github.com/iptproxy/iptproxy/pkg/trace"
)

// servicesDebug serves /debug/services/NAMESPACE/NAME: what "iptproxy show
// service" prints, computed from the rules the daemon last wrote (each
// family's desired ruleset on top of its base chains) and the Service and
// EndpointSlices in the informer caches.
type servicesDebug struct {
	logger   klog.Logger
	proxiers []*proxier.Proxier
	// configs holds each proxier's renderer configuration.
	configs  map[v1.IPFamily]rules.Config
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	mu sync.Mutex
	// loaded caches, per family, the tables loaded for the last desired
	// ruleset seen (reloading costs ~3 s at 10,000 Services).
	loaded map[v1.IPFamily]loadedTables
}

// loadedTables are the tables built from one desired ruleset.
type loadedTables struct {
	desired *rules.Ruleset
	tables  *ruleset.Ruleset
}

// tables returns the node's tables for desired, loading them once per
// sync. Callers must not modify them (tracing only reads).
func (d *servicesDebug) tables(ctx context.Context, cfg rules.Config, desired *rules.Ruleset) (*ruleset.Ruleset, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l, ok := d.loaded[cfg.Family]; ok && l.desired == desired {
		return l.tables, nil
	}
	t, err := explain.LoadRules(ctx, d.logger, desired.Payload(), cfg)
	if err != nil {
		return nil, err
	}
	if d.loaded == nil {
		d.loaded = map[v1.IPFamily]loadedTables{}
	}
	d.loaded[cfg.Family] = loadedTables{desired: desired, tables: t}
	return t, nil
}

// ServeHTTP answers in text, or in JSON with ?output=json.
func (d *servicesDebug) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	nn := types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	svc, err := d.services.Services(nn.Namespace).Get(nn.Name)
	if apierrors.IsNotFound(err) {
		http.Error(w, "Service "+nn.String()+" not found", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	sel := labels.SelectorFromSet(labels.Set{discovery.LabelServiceName: nn.Name})
	slices, err := d.slices.EndpointSlices(nn.Namespace).List(sel)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var models []*explain.Model
	for _, p := range d.proxiers {
		desired := p.Desired()
		cfg, ok := d.configs[p.Family()]
		if desired == nil || !ok {
			continue
		}
		tracker := proxy.NewTracker(d.logger, cfg.Family, cfg.NodeName)
		tracker.OnServiceUpdate(nil, svc)
		for _, s := range slices {
			tracker.OnEndpointSliceUpdate(s, false)
		}
		state, _ := tracker.Checkout()
		tables, err := d.tables(r.Context(), cfg, desired)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		models = append(models, &explain.Model{Config: cfg, State: state, Desired: desired, Tables: tables,
			Node: trace.Node{LocalAddrs: cfg.NodeIPs}})
	}
	rep, err := explain.ShowService(models, nn)
	switch {
	case errors.Is(err, explain.ErrServiceNotFound):
		http.Error(w, err.Error()+" (not synced yet, or no port of a served family)", http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if r.URL.Query().Get("output") == "json" {
		w.Header().Set("Content-Type", "application/json")
		_ = explain.WriteJSON(w, rep)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_ = explain.WriteService(w, rep)
}
