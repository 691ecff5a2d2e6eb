package main

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"

	"github.com/iptproxy/iptproxy/test/scale"
)

func TestDraw(t *testing.T) {
	v := func(x float64) scale.ReportValue { return scale.ReportValue{Unit: "seconds", Value: &x} }
	timeout := scale.ReportValue{Unit: "seconds", TimeoutSeconds: 900}
	figures := map[string]map[string]map[string]scale.ReportValue{
		"1000x10": {scale.KeyCold: {scale.ProxyIPTProxy: v(2), scale.ProxyKubeProxy: v(5.6), scale.ProxyKubeProxyNFT: v(1.7)}},
		"10000x10": {
			scale.KeyCold:           {scale.ProxyIPTProxy: v(29.6), scale.ProxyKubeProxy: timeout, scale.ProxyKubeProxyNFT: v(15.8)},
			scale.KeyRestartBackend: {scale.ProxyIPTProxy: v(7.6)},
		},
	}
	svg := draw(figures, "nft", []string{"a.json (2026-12-07, abc)"})
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed SVG: %v", err)
		}
	}
	for _, want := range []string{"kube-proxy nftables mode", "&gt;900 s", "10k", "1k", "no figures", "a.json"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	if got := strings.Count(svg, "(timeout)</title>"); got != 1 {
		t.Errorf("%d lower bounds drawn, want 1", got)
	}
	if got := sizeLabel("50000x10"); got != "50k" {
		t.Errorf("sizeLabel = %q", got)
	}
	if got := format(0.25, "seconds"); got != "250 ms" {
		t.Errorf("format(0.25 s) = %q", got)
	}
}
