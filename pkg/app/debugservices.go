package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
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
// its EndpointSlices as the API server has them now (the daemon keeps no
// copy of whole objects).
type servicesDebug struct {
	logger   klog.Logger
	proxiers []*proxier.Proxier
	// configs holds each proxier's renderer configuration.
	configs map[v1.IPFamily]rules.Config
	// client reads the Service and its slices, with the label selector
	// the daemon watches with.
	client kubernetes.Interface

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

// tables returns the desired ruleset of a proxier's last sync and the
// node's tables built from it, rendering and loading them once per render
// generation (nil, nil when it has not synced). Callers must not modify
// them (tracing only reads).
func (d *servicesDebug) tables(ctx context.Context, cfg rules.Config, p *proxier.Proxier) (*rules.Ruleset, *ruleset.Ruleset, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l, ok := d.loaded[cfg.Family]; ok && l.desired.Generation == p.Generation() {
		return l.desired, l.tables, nil
	}
	desired := p.Desired()
	if desired == nil {
		return nil, nil, nil
	}
	t, err := explain.LoadRules(ctx, d.logger, desired.Payload(), cfg)
	if err != nil {
		return nil, nil, err
	}
	if d.loaded == nil {
		d.loaded = map[v1.IPFamily]loadedTables{}
	}
	d.loaded[cfg.Family] = loadedTables{desired: desired, tables: t}
	return desired, t, nil
}

// ServeHTTP answers in text, or in JSON with ?output=json.
func (d *servicesDebug) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	nn := types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	svc, slices, err := d.fetch(r.Context(), nn)
	if errors.Is(err, errServiceNotWatched) {
		http.Error(w, "Service "+nn.String()+" not found", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var models []*explain.Model
	for _, p := range d.proxiers {
		cfg, ok := d.configs[p.Family()]
		if !ok {
			continue
		}
		desired, tables, err := d.tables(r.Context(), cfg, p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if desired == nil {
			continue
		}
		tracker := proxy.NewTracker(d.logger, cfg.Family, cfg.NodeName)
		tracker.OnServiceUpdate(nil, svc)
		for i := range slices {
			tracker.OnEndpointSliceUpdate(&slices[i], false)
		}
		state, _ := tracker.Checkout()
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

// errServiceNotWatched: the Service does not exist, or carries a label
// (service-proxy-name, headless) that keeps it from the daemon.
var errServiceNotWatched = errors.New("service not found")

// fetch lists the Service nn and its EndpointSlices from the API server,
// with the label selector the daemon watches with: what it sees is what
// the daemon's trackers were given. Lists, not a get, need only the list
// permission the watches already have.
func (d *servicesDebug) fetch(ctx context.Context, nn types.NamespacedName) (*v1.Service, []discovery.EndpointSlice, error) {
	watched, err := proxiedSelector()
	if err != nil {
		return nil, nil, err
	}
	svcs, err := d.client.CoreV1().Services(nn.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: watched.String(),
		FieldSelector: fields.OneTermEqualSelector("metadata.name", nn.Name).String(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing Service %s: %w", nn, err)
	}
	var svc *v1.Service
	for i := range svcs.Items {
		// Field selectors are not honoured by every client (fakes).
		if svcs.Items[i].Name == nn.Name {
			svc = &svcs.Items[i]
		}
	}
	if svc == nil {
		return nil, nil, fmt.Errorf("%s: %w", nn, errServiceNotWatched)
	}
	req, err := labels.NewRequirement(discovery.LabelServiceName, selection.Equals, []string{nn.Name})
	if err != nil {
		return nil, nil, fmt.Errorf("selecting the slices of %s: %w", nn, err)
	}
	slices, err := d.client.DiscoveryV1().EndpointSlices(nn.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: watched.Add(*req).String(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing the EndpointSlices of %s: %w", nn, err)
	}
	return svc, slices.Items, nil
}
