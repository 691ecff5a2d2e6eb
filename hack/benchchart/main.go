// Command benchchart draws make bench's figures by size: cold start, one
// endpoint change, restart and memory for iptproxy and upstream kube-proxy
// (iptables and nftables modes), one panel each, log scales, as an SVG.
// It reads the JSON reports test/scale writes (bench-<time>.json); when
// several reports hold the same figure, the last one given wins, so older
// runs can fill in sizes a newer run did not measure. A phase that ran out
// of time is drawn as a hollow triangle at the timeout: a lower bound.
//
//	go run ./hack/benchchart -backend nft -o docs/benchmarks-chart.svg _output/bench/bench-*.json
package main

import (
	"flag"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/iptproxy/iptproxy/test/scale"
)

// panel is one figure of the chart.
type panel struct {
	key, title, unit string
}

var panels = []panel{
	{scale.KeyCold, "Cold start → all Services reachable", "seconds"},
	{scale.KeyChange, "One endpoint change → it answers (median)", "seconds"},
	{scale.KeyRestart, "Restart, one slice changed while down → it answers", "seconds"},
	{scale.KeyRSS, "Memory: VmRSS after the cold sync", "memoryBytes"},
}

// series is one proxy's line.
type series struct {
	proxy, label, color string
	dash                string // stroke-dasharray, "" for solid
	key                 string // metric key override ("" = the panel's)
	onlyPanel           string // draw only in this panel ("" = all)
}

var allSeries = []series{
	{proxy: scale.ProxyIPTProxy, label: "iptproxy (default flags)", color: "#1b7837"},
	{proxy: scale.ProxyIPTProxy, label: "iptproxy --iptables-backend (restart only)", color: "#7fbf7b", dash: "6 4",
		key: scale.KeyRestartBackend, onlyPanel: scale.KeyRestart},
	{proxy: scale.ProxyKubeProxy, label: "kube-proxy iptables mode", color: "#b2182b"},
	{proxy: scale.ProxyKubeProxyNFT, label: "kube-proxy nftables mode", color: "#2166ac"},
}

// point is one figure: a value, or a lower bound when timedOut.
type point struct {
	services int
	size     string
	y        float64
	timedOut bool
}

func main() {
	backend := flag.String("backend", "nft", "the iptables backend whose rows are drawn")
	out := flag.String("o", "docs/benchmarks-chart.svg", "the SVG file to write")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: benchchart [-backend nft] [-o chart.svg] report.json...")
		os.Exit(2)
	}
	// figures[size][key][proxy], the last report wins.
	figures := map[string]map[string]map[string]scale.ReportValue{}
	var sources []string
	for _, path := range flag.Args() {
		r, err := scale.ReadReport(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchchart: %v\n", err)
			os.Exit(1)
		}
		used := false
		for _, row := range r.Rows {
			if row.Backend != *backend {
				continue
			}
			if figures[row.Size] == nil {
				figures[row.Size] = map[string]map[string]scale.ReportValue{}
			}
			if figures[row.Size][row.Key] == nil {
				figures[row.Size][row.Key] = map[string]scale.ReportValue{}
			}
			for p, v := range row.Values {
				if v.Value != nil || v.TimeoutSeconds > 0 {
					figures[row.Size][row.Key][p] = v
					used = true
				}
			}
		}
		if used {
			sources = append(sources, fmt.Sprintf("%s (%s, %s)", filepath.Base(path), r.Started.Format("2006-01-02"), r.Commit))
		}
	}
	if len(figures) == 0 {
		fmt.Fprintf(os.Stderr, "benchchart: no %s figures in %s\n", *backend, strings.Join(flag.Args(), " "))
		os.Exit(1)
	}
	svg := draw(figures, *backend, sources)
	if err := os.WriteFile(*out, []byte(svg), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "benchchart: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("benchchart: wrote %s (%d sizes)\n", *out, len(figures))
}

// servicesOf parses "10000x10" into 10000.
func servicesOf(size string) int {
	n, _, _ := strings.Cut(size, "x")
	v, _ := strconv.Atoi(n)
	return v
}

// pointsFor returns one series' points in one panel, by size.
func pointsFor(figures map[string]map[string]map[string]scale.ReportValue, key, unit string, s series) []point {
	div := 1.0
	if unit == "memoryBytes" {
		div = 1 << 20 // memory is drawn in MiB, so that the decades are round
	}
	if s.key != "" {
		key = s.key
	}
	var pts []point
	for size, byKey := range figures {
		v, ok := byKey[key][s.proxy]
		if !ok {
			continue
		}
		p := point{services: servicesOf(size), size: size}
		switch {
		case v.Value != nil && *v.Value > 0:
			p.y = *v.Value / div
		case v.TimeoutSeconds > 0:
			p.y, p.timedOut = v.TimeoutSeconds, true
		default:
			continue
		}
		pts = append(pts, p)
	}
	slices.SortFunc(pts, func(a, b point) int { return a.services - b.services })
	return pts
}

// Layout, in SVG user units.
const (
	width    = 1000
	panelW   = 470
	panelH   = 300
	marginL  = 70
	marginT  = 44
	plotW    = panelW - marginL - 20
	plotH    = panelH - marginT - 46
	legendH  = 70
	headerH  = 40
	footerH  = 40
	panelGap = 20
)

func draw(figures map[string]map[string]map[string]scale.ReportValue, backend string, sources []string) string {
	var sizes []string
	for s := range figures {
		sizes = append(sizes, s)
	}
	slices.SortFunc(sizes, func(a, b string) int { return servicesOf(a) - servicesOf(b) })
	minS, maxS := servicesOf(sizes[0]), servicesOf(sizes[len(sizes)-1])
	height := headerH + legendH + 2*panelH + panelGap + footerH
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="26" font-size="18" font-weight="bold">iptproxy vs upstream kube-proxy by cluster size (iptables backend: %s; log scales)</text>`+"\n",
		20, html.EscapeString(backend))
	// Legend.
	ly := headerH + 14
	for i, s := range allSeries {
		x := 20 + (i%2)*480
		y := ly + (i/2)*24
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3" stroke-dasharray="%s"/>`+"\n", x, y, x+36, y, s.color, s.dash)
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="4" fill="%s"/>`+"\n", x+18, y, s.color)
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="13">%s</text>`+"\n", x+44, y+4, html.EscapeString(s.label))
	}
	fmt.Fprintf(&b, `<path d="M %d %d l 5 -9 l 5 9 z" fill="white" stroke="#444" stroke-width="1.5"/>`+"\n", 20+13, ly+48+4)
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="13">hollow triangle: the phase ran out of time there (a lower bound)</text>`+"\n", 20+44, ly+48+4)

	for i, pn := range panels {
		ox := 20 + (i%2)*(panelW+20)
		oy := headerH + legendH + (i/2)*(panelH+panelGap)
		drawPanel(&b, figures, pn, ox, oy, sizes, minS, maxS)
	}
	fy := height - footerH + 16
	fmt.Fprintf(&b, `<text x="20" y="%d" font-size="11" fill="#555">%s</text>`+"\n", fy,
		html.EscapeString("Services x 10 endpoints each; data: "+strings.Join(sources, ", ")))
	fmt.Fprintf(&b, `<text x="20" y="%d" font-size="11" fill="#555">Generated by hack/benchchart from make bench's JSON reports (docs/benchmarks.md).</text>`+"\n", fy+16)
	b.WriteString("</svg>\n")
	return b.String()
}

func drawPanel(b *strings.Builder, figures map[string]map[string]map[string]scale.ReportValue, pn panel, ox, oy int, sizes []string, minS, maxS int) {
	px, py := ox+marginL, oy+marginT
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#ccc"/>`+"\n", ox, oy, panelW, panelH)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="14" font-weight="bold">%s</text>`+"\n", ox+10, oy+22, html.EscapeString(pn.title))
	// Collect the panel's points to scale the y axis.
	lo, hi := math.Inf(1), math.Inf(-1)
	type line struct {
		s   series
		pts []point
	}
	var lines []line
	for _, s := range allSeries {
		if s.onlyPanel != "" && s.onlyPanel != pn.key {
			continue
		}
		pts := pointsFor(figures, pn.key, pn.unit, s)
		for _, p := range pts {
			lo, hi = math.Min(lo, p.y), math.Max(hi, p.y)
		}
		lines = append(lines, line{s, pts})
	}
	if math.IsInf(lo, 1) {
		fmt.Fprintf(b, `<text x="%d" y="%d" font-size="13" fill="#888">no figures</text>`+"\n", px+plotW/2-30, py+plotH/2)
		return
	}
	// Whole decades, with some room below the lowest point.
	ylo, yhi := math.Floor(math.Log10(lo)-0.1), math.Ceil(math.Log10(hi))
	if yhi-ylo < 1 {
		yhi = ylo + 1
	}
	if math.Log10(hi) > yhi-0.15 {
		yhi += math.Log10(2) + 1e-6 // room for the labels of points at the top
	}
	yOf := func(v float64) float64 { return float64(py+plotH) - (math.Log10(v)-ylo)/(yhi-ylo)*float64(plotH) }
	xOf := func(services int) float64 {
		if minS == maxS {
			return float64(px + plotW/2)
		}
		pad := 0.08
		f := (math.Log10(float64(services)) - math.Log10(float64(minS))) / (math.Log10(float64(maxS)) - math.Log10(float64(minS)))
		return float64(px) + (pad+f*(1-2*pad))*float64(plotW)
	}
	// Grid: decades with labels, 2 and 5 without.
	for d := ylo; d <= yhi; d++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, d)
			if math.Log10(v) > yhi+1e-9 {
				continue
			}
			y := yOf(v)
			stroke, w := "#eee", 1
			if m == 1 {
				stroke = "#ccc"
			}
			fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="%d"/>`+"\n", px, y, px+plotW, y, stroke, w)
			if m == 1 || yhi-ylo <= 2 {
				fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" fill="#333">%s</text>`+"\n", px-6, y+4, html.EscapeString(format(v, pn.unit)))
			}
		}
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", px, py, px, py+plotH)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", px, py+plotH, px+plotW, py+plotH)
	for _, s := range sizes {
		x := xOf(servicesOf(s))
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/>`+"\n", x, py+plotH, x, py+plotH+5)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" font-size="12" text-anchor="middle">%s</text>`+"\n", x, py+plotH+19, html.EscapeString(sizeLabel(s)))
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="11" text-anchor="middle" fill="#555">Services (x 10 endpoints)</text>`+"\n", px+plotW/2, py+plotH+36)
	for li, l := range lines {
		// Figures of several proxies often coincide (a timeout, or close
		// values): set each proxy's points a little apart.
		jitter := (float64(li) - float64(len(lines)-1)/2) * 7
		for i := 1; i < len(l.pts); i++ {
			a, c := l.pts[i-1], l.pts[i]
			dash := l.s.dash
			if a.timedOut || c.timedOut {
				dash = "2 4"
			}
			fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5" stroke-dasharray="%s"/>`+"\n",
				xOf(a.services)+jitter, yOf(a.y), xOf(c.services)+jitter, yOf(c.y), l.s.color, dash)
		}
		for _, p := range l.pts {
			x, y := xOf(p.services)+jitter, yOf(p.y)
			if p.timedOut {
				fmt.Fprintf(b, `<path d="M %.1f %.1f l -6 10 l 12 0 z" fill="white" stroke="%s" stroke-width="2"><title>%s: more than %s (timeout)</title></path>`+"\n",
					x, y-5, l.s.color, html.EscapeString(l.s.label), html.EscapeString(format(p.y, pn.unit)))
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle" fill="%s">&gt;%s</text>`+"\n", x, y-9-float64(li%2)*10, l.s.color, html.EscapeString(format(p.y, pn.unit)))
				continue
			}
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s, %s: %s</title></circle>`+"\n",
				x, y, l.s.color, html.EscapeString(l.s.label), p.size, html.EscapeString(format(p.y, pn.unit)))
		}
	}
}

// sizeLabel prints "10000x10" as "10k".
func sizeLabel(size string) string {
	n := servicesOf(size)
	if n >= 1000 && n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// format prints an axis value.
func format(v float64, unit string) string {
	switch unit {
	case "seconds":
		if v < 1 {
			return trim(v*1000) + " ms"
		}
		return trim(v) + " s"
	case "memoryBytes":
		return trim(v) + " MiB"
	}
	return trim(v)
}

func trim(v float64) string {
	if v >= 10 {
		return strconv.FormatFloat(math.Round(v), 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}
