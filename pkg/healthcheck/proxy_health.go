package healthcheck

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a Node before
// deleting it. A Node carrying it is not eligible for load-balancer traffic,
// so /healthz answers 503.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxierHealth is the health of the proxier of one IP family, as reported
// under "status" in the /healthz and /livez bodies.
type ProxierHealth struct {
	// LastUpdated is when the proxier last synced successfully.
	LastUpdated time.Time `json:"lastUpdated"`
	// Healthy is false when an update has been queued for longer than the
	// health timeout.
	Healthy bool `json:"healthy"`
}

// HealthReport is the JSON body of /healthz and /livez, field for field
// kube-proxy's.
type HealthReport struct {
	// LastUpdated is the most recent successful sync of any IP family; in
	// a healthy answer it is the current time, as in older kube-proxy
	// releases where it was bumped on every sync loop.
	LastUpdated time.Time `json:"lastUpdated"`
	// CurrentTime is when the report was made.
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set in /healthz answers only: whether the Node is
	// neither being deleted nor tainted with ToBeDeletedTaint.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is true when every IP family's proxier is healthy.
	Healthy bool `json:"healthy"`
	// Status is the health per IP family.
	Status map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// ProxyHealth is the node-level health state of iptproxy, kept with
// kube-proxy's rules:
//
//   - QueuedUpdate(family) records when the oldest not yet applied change of
//     that family was queued; Updated(family) records a successful sync and
//     clears it.
//   - A family is unhealthy when its sync loop has started (Started or
//     Updated was called) and its oldest queued update has waited for
//     healthTimeout or more. Call Started(family) when the sync loop starts,
//     as kube-proxy's sync loop calls Updated, so that the window runs even
//     if no sync ever succeeds.
//   - /livez is 200 when every family is healthy (kube-proxy's rule, which
//     gives a slow first sync the whole window before a liveness probe
//     fails). /healthz additionally needs the Node to be eligible (see
//     SyncNode) and, unlike kube-proxy's, every started family to have
//     synced successfully at least once: a node whose rules were never
//     written must not receive load-balancer traffic, even during the
//     window (kube-proxy answers 200 there).
//
// The methods are safe for concurrent use.
type ProxyHealth struct {
	clock         clock.PassiveClock
	healthTimeout time.Duration
	probes        ProbeCounter

	mu                  sync.RWMutex
	lastUpdated         map[v1.IPFamily]time.Time
	synced              map[v1.IPFamily]bool
	oldestPendingQueued map[v1.IPFamily]time.Time
	nodeSeen            bool
	nodeEligible        bool
}

// NewProxyHealth returns the health state. kube-proxy uses twice its
// syncPeriod as healthTimeout. clk is the time source (nil means the real
// clock); probes, if not nil, counts the /healthz and /livez answers.
func NewProxyHealth(healthTimeout time.Duration, clk clock.PassiveClock, probes ProbeCounter) *ProxyHealth {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &ProxyHealth{
		clock:               clk,
		healthTimeout:       healthTimeout,
		probes:              probes,
		lastUpdated:         map[v1.IPFamily]time.Time{},
		synced:              map[v1.IPFamily]bool{},
		oldestPendingQueued: map[v1.IPFamily]time.Time{},
	}
}

// QueuedUpdate records that the proxier of family received a change it has
// not yet applied. Only the first call after an Updated counts: the health
// timeout runs from the oldest pending change.
func (h *ProxyHealth) QueuedUpdate(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, pending := h.oldestPendingQueued[family]; !pending {
		h.oldestPendingQueued[family] = h.clock.Now()
	}
}

// Started records that the sync loop of family has started: its health
// window runs from now even if no sync ever succeeds (kube-proxy calls
// Updated there instead). Until the first Updated, /healthz answers 503.
func (h *ProxyHealth) Started(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.lastUpdated[family]; !ok {
		h.lastUpdated[family] = h.clock.Now()
	}
}

// Updated records that the proxier of family has synced the rules
// successfully and has nothing pending.
func (h *ProxyHealth) Updated(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.oldestPendingQueued, family)
	h.lastUpdated[family] = h.clock.Now()
	h.synced[family] = true
}

// Synced reports whether at least one family has started and every started
// family has synced successfully at least once.
func (h *ProxyHealth) Synced() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if len(h.lastUpdated) == 0 {
		return false
	}
	for family := range h.lastUpdated {
		if !h.synced[family] {
			return false
		}
	}
	return true
}

// SyncNode records the latest state of this proxy's own Node; nil means the
// Node is unknown (not yet seen, or deleted). The Node is eligible for
// load-balancer traffic unless it is unknown, has a deletion timestamp or is
// tainted with ToBeDeletedTaint (any effect).
func (h *ProxyHealth) SyncNode(node *v1.Node) {
	seen, eligible := node != nil, node != nil && nodeEligible(node)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeSeen, h.nodeEligible = seen, eligible
}

// nodeEligible reports whether node may receive load-balancer traffic.
func nodeEligible(node *v1.Node) bool {
	if !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// NodeEligible reports whether the Node last passed to SyncNode is eligible
// for load-balancer traffic; false before the first SyncNode.
func (h *ProxyHealth) NodeEligible() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.nodeSeen && h.nodeEligible
}

// Health returns the proxy health now, without node eligibility (which only
// /healthz reports). Its LastUpdated is the most recent sync of any family.
func (h *ProxyHealth) Health() HealthReport {
	h.mu.RLock()
	defer h.mu.RUnlock()

	now := h.clock.Now()
	report := HealthReport{
		CurrentTime: now,
		Healthy:     true,
		Status:      make(map[v1.IPFamily]ProxierHealth, len(h.lastUpdated)),
	}
	for family, lastUpdated := range h.lastUpdated {
		if lastUpdated.After(report.LastUpdated) {
			report.LastUpdated = lastUpdated
		}
		healthy := true
		// A family that never synced is starting up, and one with nothing
		// pending is in sync: both are healthy. Otherwise the oldest
		// pending update must be younger than the timeout.
		if queued, pending := h.oldestPendingQueued[family]; pending && now.Sub(queued) >= h.healthTimeout {
			healthy = false
			report.Healthy = false
		}
		report.Status[family] = ProxierHealth{LastUpdated: lastUpdated, Healthy: healthy}
	}
	return report
}

// HealthzHandler returns the /healthz handler: 200 when the proxy is healthy,
// has synced every family at least once (see Synced) and the Node is
// eligible, 503 otherwise, with the HealthReport (including nodeEligible) as
// JSON body; "healthy" is false there until the first syncs.
func (h *ProxyHealth) HealthzHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		report := h.Health()
		if !h.Synced() {
			report.Healthy = false
		}
		eligible := h.NodeEligible()
		report.NodeEligible = &eligible
		code := h.writeReport(w, report, report.Healthy && eligible)
		if h.probes != nil {
			h.probes.ObserveHealthz(code)
		}
	})
}

// LivezHandler returns the /livez handler: 200 when the proxy is healthy,
// 503 otherwise, whatever the Node's state, with the HealthReport as JSON
// body.
func (h *ProxyHealth) LivezHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		report := h.Health()
		code := h.writeReport(w, report, report.Healthy)
		if h.probes != nil {
			h.probes.ObserveLivez(code)
		}
	})
}

// writeReport writes report as kube-proxy does and returns the status code.
func (h *ProxyHealth) writeReport(w http.ResponseWriter, report HealthReport, healthy bool) int {
	code := http.StatusOK
	if healthy {
		// Older releases bumped lastUpdated on every sync loop, even
		// when nothing changed; kube-proxy keeps that meaning by
		// reporting "now" whenever it is healthy.
		report.LastUpdated = h.clock.Now()
	} else {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// Marshal only fails for years outside [0, 9999]; kube-proxy writes
	// nothing then, and so do we.
	body, _ := json.Marshal(report)
	_, _ = w.Write(body)
	return code
}
