package metrics

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func zpagesServer(t *testing.T) http.Handler {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.String("config", "", "")
	fs.String("token", "", "")
	_ = fs.SetAnnotation("token", "classified", []string{"true"})
	if err := fs.Parse([]string{"--config=/etc/kp.conf", "--token=s3cret"}); err != nil {
		t.Fatal(err)
	}
	s := NewServer(DefaultBindAddress, New())
	if err := s.Handle("/debug/rules", http.NotFoundHandler()); err != nil {
		t.Fatal(err)
	}
	s.SetZPages(ZPages{
		Component: "kube-proxy", StartTime: time.Now().Add(-3723 * time.Second),
		BinaryVersion: "1.37.2", EmulationVersion: "1.37", Implementation: "iptproxy test",
		Flags: FlagsOf(fs),
	})
	return s.Handler()
}

func get(t *testing.T, h http.Handler, target, accept string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestStatuszText: without an Accept header (and with text/plain or */*),
// /statusz is kube-proxy's text page, whatever delimiter it picked.
func TestStatuszText(t *testing.T) {
	h := zpagesServer(t)
	for _, accept := range []string{"", "text/plain", "*/*", "application/json, text/plain;q=0.5"} {
		rec := get(t, h, "/statusz", accept)
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("Accept %q: %d %q", accept, rec.Code, rec.Header().Get("Content-Type"))
		}
		body := rec.Body.String()
		if !strings.HasPrefix(body, "\nkube-proxy statusz\nWarning: This endpoint is not meant to be machine parseable") {
			t.Errorf("Accept %q: header of %q", accept, body)
		}
		for _, re := range []string{
			`\nStarted(:|: |=| ) \w{3} \w{3} +\d+ \d\d:\d\d:\d\d \w+ \d{4}\n`,
			`\nUp(:|: |=| ) 1 hr 02 min 0[34] sec\n`,
			`\nGo version(:|: |=| ) go1\.`,
			`\nBinary version(:|: |=| ) 1\.37\.2\n`,
			`\nEmulation version(:|: |=| ) 1\.37\n`,
			`\nPaths(:|: |=| ) /debug /flagz /healthz /metrics /proxyMode\n`,
		} {
			if !regexp.MustCompile(re).MatchString(body) {
				t.Errorf("Accept %q: no %s in\n%s", accept, re, body)
			}
		}
	}
}

// TestStatuszJSON: the structured page for the Accept header kube-proxy
// honours, v1alpha1 with a deprecation warning, 406 for plain JSON.
func TestStatuszJSON(t *testing.T) {
	h := zpagesServer(t)
	for _, v := range []string{"v1beta1", "v1alpha1"} {
		rec := get(t, h, "/statusz", "application/json;as=Statusz;v="+v+";g=config.k8s.io")
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %q %s", v, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
		if warned := rec.Header().Get("Warning") != ""; warned != (v == "v1alpha1") {
			t.Errorf("%s: Warning %q", v, rec.Header().Get("Warning"))
		}
		var got struct {
			Kind, APIVersion string
			Metadata         struct{ Name string }
			StartTime        time.Time
			UptimeSeconds    int64
			GoVersion        string
			BinaryVersion    string
			EmulationVersion string
			Paths            []string
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got.Kind != "Statusz" || got.APIVersion != "config.k8s.io/"+v || got.Metadata.Name != "kube-proxy" ||
			got.BinaryVersion != "1.37.2" || got.EmulationVersion != "1.37" || got.UptimeSeconds < 3723 ||
			!strings.HasPrefix(got.GoVersion, "go") || strings.Join(got.Paths, " ") != "/debug /flagz /healthz /metrics /proxyMode" {
			t.Errorf("%s: %+v", v, got)
		}
	}
	if rec := get(t, h, "/statusz", "application/yaml;as=Statusz;v=v1beta1;g=config.k8s.io"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "kind: Statusz\n") {
		t.Errorf("YAML: %d %s", rec.Code, rec.Body)
	}
	for _, accept := range []string{"application/json", "application/json;as=Statusz;v=v1;g=config.k8s.io", "application/json;as=Flagz;v=v1beta1;g=config.k8s.io", "image/png"} {
		if rec := get(t, h, "/statusz", accept); rec.Code != http.StatusNotAcceptable {
			t.Errorf("Accept %q: %d, want 406", accept, rec.Code)
		}
	}
}

// TestFlagz: text and JSON, classified flags hidden.
func TestFlagz(t *testing.T) {
	h := zpagesServer(t)
	rec := get(t, h, "/flagz", "")
	body := rec.Body.String()
	if rec.Code != 200 || !strings.HasPrefix(body, "\nkube-proxy flagz\nWarning: ") ||
		!regexp.MustCompile(`\nconfig(:|: |=| )/etc/kp.conf\ntoken(:|: |=| )CLASSIFIED\n$`).MatchString(body) {
		t.Errorf("text: %d\n%s", rec.Code, body)
	}
	rec = get(t, h, "/flagz", "application/json;as=Flagz;v=v1beta1;g=config.k8s.io")
	var got struct {
		Kind, APIVersion string
		Flags            map[string]string
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Kind != "Flagz" || got.APIVersion != "config.k8s.io/v1beta1" ||
		got.Flags["config"] != "/etc/kp.conf" || got.Flags["token"] != "CLASSIFIED" {
		t.Errorf("JSON: %d %v %s", rec.Code, err, rec.Body)
	}
}

// TestNoZPagesByDefault: a server without SetZPages serves neither.
func TestNoZPagesByDefault(t *testing.T) {
	h := NewServer(DefaultBindAddress, New()).Handler()
	for _, p := range []string{"/statusz", "/flagz"} {
		if rec := get(t, h, p, ""); rec.Code != 404 {
			t.Errorf("%s: %d", p, rec.Code)
		}
	}
}
