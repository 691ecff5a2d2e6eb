package metrics

import (
	"cmp"
	"encoding/json"
	"fmt"
	"html"
	"maps"
	"math/rand/v2"
	"mime"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The z-pages kube-proxy v1.37 serves on its metrics address (feature gates
// ComponentStatusz and ComponentFlagz, beta and on by default), as
// k8s.io/apiserver/pkg/server/statusz and .../flagz implement them:
//
//   - without an Accept header, or with one that accepts text/plain, a
//     text page (explicitly "not meant to be machine parseable": the
//     delimiter after each key is picked at random per response);
//   - with Accept: application/json;as=Statusz;v=v1beta1;g=config.k8s.io
//     (or application/yaml, or v=v1alpha1, which is deprecated and answered
//     with a Warning header) the structured object;
//   - anything else 406 Not Acceptable: application/json without the
//     as/v/g parameters is not enough.
//
// Those packages pull about 200 packages (CEL, gRPC, OpenTelemetry) into
// the binary through k8s.io/apiserver, so this file reproduces their
// output instead of importing them. CBOR (served upstream only with the
// alpha CBORServingAndStorage gate) is not offered.

const (
	// StatuszPath and FlagzPath are kube-proxy's z-page paths.
	StatuszPath = "/statusz"
	FlagzPath   = "/flagz"

	zpagesGroup = "config.k8s.io"
	zpagesWarn  = "Warning: This endpoint is not meant to be machine parseable, has no formatting compatibility guarantees and is for debugging purposes only."
)

// zpagesDelimiters are upstream's key/value delimiters for the text pages.
var zpagesDelimiters = []string{":", ": ", "=", " "}

// zpagesVersions are the structured versions served; true means deprecated.
var zpagesVersions = map[string]bool{"v1alpha1": true, "v1beta1": false}

// nonDebuggingPaths are never listed on /statusz (upstream's list).
var nonDebuggingPaths = map[string]bool{"/apis": true, "/api": true, "/openid": true, "/openapi": true, "/.well-known": true}

// ZPages configures /statusz and /flagz.
type ZPages struct {
	// Component is the name the pages give (kube-proxy's is "kube-proxy").
	Component string
	// StartTime is when the process started.
	StartTime time.Time
	// BinaryVersion and EmulationVersion are statusz's versions, e.g.
	// "1.37.2" and "1.37" (kube-proxy's effective version).
	BinaryVersion, EmulationVersion string
	// Implementation, when set, is one more line of the text /statusz
	// (the text page has no compatibility guarantees; JSON stays upstream's).
	Implementation string
	// Flags returns the command line's flags and values; nil serves no
	// /flagz (as kube-proxy without ComponentFlagz).
	Flags func() map[string]string
}

// FlagsOf returns /flagz's reader for fs, as upstream's
// NamedFlagSetsReader: every flag with its current value, "CLASSIFIED" for
// flags annotated "classified".
func FlagsOf(fs *pflag.FlagSet) func() map[string]string {
	return func() map[string]string {
		out := map[string]string{}
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Value == nil {
				return
			}
			v := f.Value.String()
			if set, ok := f.Annotations["classified"]; ok && len(set) > 0 {
				v = "CLASSIFIED"
			}
			out[f.Name] = v
		})
		return out
	}
}

// SetZPages makes the server serve /statusz (and /flagz when z.Flags is
// set). Call it before Run or Handler.
func (s *Server) SetZPages(z ZPages) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zpages = &z
}

// zpagesHandlers returns the z-page handlers; paths are the server's other
// paths, listed (by first segment) on /statusz.
func (z *ZPages) handlers(paths []string) map[string]http.Handler {
	out := map[string]http.Handler{}
	paths = slices.DeleteFunc(slices.Clone(paths), func(p string) bool { return p == StatuszPath || p == FlagzPath })
	if z.Flags != nil {
		out[FlagzPath] = http.HandlerFunc(z.serveFlagz)
		paths = append(paths, FlagzPath)
	}
	listed := aggregatePaths(paths)
	out[StatuszPath] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { z.serveStatusz(w, r, listed) })
	return out
}

// aggregatePaths keeps the first segment of each path, sorted, without the
// API paths (upstream's aggregatePaths).
func aggregatePaths(paths []string) []string {
	seen := map[string]bool{}
	for _, p := range paths {
		parts := strings.Split(p, "/")
		if len(parts) < 2 || parts[1] == "" {
			continue
		}
		folder := "/" + parts[1]
		if !nonDebuggingPaths[folder] {
			seen[folder] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// statusz is upstream's Statusz object (v1alpha1 and v1beta1 have the
// same fields).
type statusz struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	StartTime         metav1.Time `json:"startTime"`
	UptimeSeconds     int64       `json:"uptimeSeconds"`
	GoVersion         string      `json:"goVersion"`
	BinaryVersion     string      `json:"binaryVersion"`
	EmulationVersion  string      `json:"emulationVersion,omitempty"`
	Paths             []string    `json:"paths"`
}

// flagz is upstream's Flagz object.
type flagz struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Flags             map[string]string `json:"flags,omitempty"`
}

func (z *ZPages) serveStatusz(w http.ResponseWriter, r *http.Request, paths []string) {
	up := max(0, int64(time.Since(z.StartTime).Seconds()))
	obj := func(version string) any {
		return &statusz{
			TypeMeta:         metav1.TypeMeta{Kind: "Statusz", APIVersion: zpagesGroup + "/" + version},
			ObjectMeta:       metav1.ObjectMeta{Name: z.Component},
			StartTime:        metav1.Time{Time: z.StartTime},
			UptimeSeconds:    up,
			GoVersion:        runtime.Version(),
			BinaryVersion:    z.BinaryVersion,
			EmulationVersion: z.EmulationVersion,
			Paths:            paths,
		}
	}
	text := func() string {
		d := html.EscapeString(zpagesDelimiters[rand.IntN(len(zpagesDelimiters))])
		var emulation, listed string
		if z.EmulationVersion != "" {
			emulation = fmt.Sprintf("Emulation version%s %s", d, html.EscapeString(z.EmulationVersion))
		}
		if len(paths) > 0 {
			listed = fmt.Sprintf("Paths%s %s", d, html.EscapeString(strings.Join(paths, " ")))
		}
		var b strings.Builder
		fmt.Fprintf(&b, "\n%s statusz\n%s\n", z.Component, zpagesWarn)
		fmt.Fprintf(&b, "\nStarted%[1]s %[2]s\nUp%[1]s %[3]s\nGo version%[1]s %[4]s\nBinary version%[1]s %[5]s\n%[6]s\n%[7]s\n",
			d, html.EscapeString(z.StartTime.Format(time.UnixDate)),
			fmt.Sprintf("%d hr %02d min %02d sec", up/3600, (up/60)%60, up%60),
			html.EscapeString(runtime.Version()), html.EscapeString(z.BinaryVersion), emulation, listed)
		if z.Implementation != "" {
			fmt.Fprintf(&b, "Implementation%s %s\n", d, html.EscapeString(z.Implementation))
		}
		return b.String()
	}
	serveZPage(w, r, "Statusz", "statusz", text, obj)
}

func (z *ZPages) serveFlagz(w http.ResponseWriter, r *http.Request) {
	flags := z.Flags()
	obj := func(version string) any {
		return &flagz{
			TypeMeta:   metav1.TypeMeta{Kind: "Flagz", APIVersion: zpagesGroup + "/" + version},
			ObjectMeta: metav1.ObjectMeta{Name: z.Component},
			Flags:      flags,
		}
	}
	text := func() string {
		d := zpagesDelimiters[rand.IntN(len(zpagesDelimiters))]
		var b strings.Builder
		fmt.Fprintf(&b, "\n%s flagz\n%s\n", z.Component, zpagesWarn)
		for _, k := range slices.Sorted(maps.Keys(flags)) {
			fmt.Fprintf(&b, "%s%s%s\n", k, d, flags[k])
		}
		return b.String()
	}
	serveZPage(w, r, "Flagz", "flagz", text, obj)
}

// serveZPage negotiates the representation as upstream does and writes it.
func serveZPage(w http.ResponseWriter, r *http.Request, kind, page string, text func() string, obj func(version string) any) {
	accept := r.Header.Get("Accept")
	mediaType, version := "text/plain", ""
	if strings.TrimSpace(accept) != "" {
		var ok bool
		mediaType, version, ok = negotiateZPage(accept, kind)
		if !ok {
			notAcceptable(w, accept)
			return
		}
	}
	if mediaType == "text/plain" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, text())
		return
	}
	if zpagesVersions[version] {
		w.Header().Set("Warning", `299 - "This version of the `+page+` endpoint is deprecated. Please use a newer version."`)
	}
	var body []byte
	var err error
	if mediaType == "application/yaml" {
		body, err = yaml.Marshal(obj(version))
	} else if pretty(r) {
		body, err = json.MarshalIndent(obj(version), "", "  ")
		body = append(body, '\n')
	} else {
		body, err = json.Marshal(obj(version))
		body = append(body, '\n')
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body)
}

// pretty is upstream's isPrettyPrint: ?pretty=true, or a human's client.
func pretty(r *http.Request) bool {
	if p := r.URL.Query().Get("pretty"); p != "" {
		b, _ := strconv.ParseBool(p)
		return b
	}
	ua := r.UserAgent()
	return strings.HasPrefix(ua, "curl") || strings.HasPrefix(ua, "Wget") || strings.HasPrefix(ua, "Mozilla/5.0")
}

// zpageMediaTypes are the representations offered, in upstream's order.
var zpageMediaTypes = []string{"application/json", "application/yaml", "text/plain"}

// negotiateZPage picks the representation for an Accept header the way
// k8s.io/apiserver's NegotiateMediaTypeOptions does with the z-pages'
// endpoint restrictions: clauses by preference; text/plain only without
// as/g/v; JSON and YAML only for as=KIND;g=config.k8s.io;v=(v1alpha1|v1beta1).
func negotiateZPage(accept, kind string) (mediaType, version string, ok bool) {
	type clause struct {
		typ, sub string
		params   map[string]string
		q        float64
	}
	var clauses []clause
	for part := range strings.SplitSeq(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		typ, sub, _ := strings.Cut(mt, "/")
		q := 1.0
		if v, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
			delete(params, "q")
		}
		clauses = append(clauses, clause{typ, sub, params, q})
	}
	// Preferred first; among equals, the more specific (goautoneg's order).
	specificity := func(c clause) int {
		switch {
		case c.typ == "*":
			return 0
		case c.sub == "*":
			return 1
		}
		return 2
	}
	slices.SortStableFunc(clauses, func(a, b clause) int {
		return cmp.Or(cmp.Compare(b.q, a.q), cmp.Compare(specificity(b), specificity(a)))
	})
	for _, c := range clauses {
		if c.q <= 0 {
			continue
		}
		for _, offered := range zpageMediaTypes {
			typ, sub, _ := strings.Cut(offered, "/")
			if !(c.typ == "*" && c.sub == "*") && !(c.typ == typ && (c.sub == sub || c.sub == "*")) {
				continue
			}
			as, g, v := c.params["as"], c.params["g"], c.params["v"]
			converted := as != "" || g != "" || v != ""
			if offered == "text/plain" {
				if !converted {
					return offered, "", true
				}
				continue
			}
			if _, known := zpagesVersions[v]; converted && as == kind && g == zpagesGroup && known {
				return offered, v, true
			}
		}
	}
	return "", "", false
}

// notAcceptable answers 406 as upstream does: a Status object when the
// client accepts JSON, else text.
func notAcceptable(w http.ResponseWriter, accept string) {
	msg := "only the following media types are accepted: " + strings.Join(zpageMediaTypes, ", ")
	if strings.Contains(accept, "json") || strings.Contains(accept, "*/*") {
		st := metav1.Status{
			TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status:   metav1.StatusFailure, Message: msg, Reason: metav1.StatusReasonNotAcceptable, Code: http.StatusNotAcceptable,
		}
		body, _ := json.Marshal(st)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotAcceptable)
		_, _ = w.Write(append(body, '\n'))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusNotAcceptable)
	_, _ = fmt.Fprintln(w, msg)
}
