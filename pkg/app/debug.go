package app

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/iptproxy/iptproxy/pkg/metrics"
	"github.com/iptproxy/iptproxy/pkg/options"
	"github.com/iptproxy/iptproxy/pkg/proxier"
)

// mountDebug adds /debug/last-sync, /debug/rules, (when services is not
// nil) /debug/services/NAMESPACE/NAME and, with enableProfiling,
// /debug/pprof/ (as kube-proxy's --profiling) to the metrics server.
// They are served only when the metrics server listens on loopback (the
// default), the way kube-proxy keeps /configz and profiling off the
// network unless asked.
func mountDebug(s *metrics.Server, o *options.Options, proxiers []*proxier.Proxier, services http.Handler) error {
	lastSync := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reports := make([]proxier.SyncReport, 0, len(proxiers))
		for _, p := range proxiers {
			reports = append(reports, p.LastSync())
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reports)
	})
	rulesHandler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, p := range proxiers {
			rs := p.Desired()
			if rs == nil {
				continue
			}
			_, _ = w.Write([]byte("# " + string(p.Family()) + "\n"))
			_, _ = w.Write(rs.Payload())
		}
	})
	handlers := map[string]http.Handler{"/debug/last-sync": lastSync, "/debug/rules": rulesHandler}
	if services != nil {
		handlers["/debug/services/{namespace}/{name}"] = services
	}
	if o.Config.EnableProfiling {
		handlers["/debug/pprof/"] = http.HandlerFunc(pprof.Index)
		handlers["/debug/pprof/cmdline"] = http.HandlerFunc(pprof.Cmdline)
		handlers["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		handlers["/debug/pprof/symbol"] = http.HandlerFunc(pprof.Symbol)
		handlers["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	}
	for path, h := range handlers {
		if err := s.Handle(path, localOnly(h)); err != nil {
			return err
		}
	}
	return nil
}

// localOnly answers 403 to requests that did not come from loopback.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isLoopbackRemote(r.RemoteAddr) {
			http.Error(w, "debug endpoints answer only on loopback", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
