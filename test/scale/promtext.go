package scale

import (
	"bufio"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Histogram is a Prometheus histogram read from the text exposition
// format, summed over all label sets.
type Histogram struct {
	// Buckets are the cumulative counts by upper bound, ascending; the
	// last bound is +Inf.
	Buckets []Bucket
	// Count and Sum are the histogram's _count and _sum.
	Count, Sum float64
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound float64
	Count      float64
}

// ParseHistogram reads the histogram called name from Prometheus text
// output (the _bucket, _count and _sum samples), adding up label sets. A
// histogram that is not in the text is empty, not an error.
func ParseHistogram(text, name string) (Histogram, error) {
	byBound := map[float64]float64{}
	var h Histogram
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		metric, labels, value, err := parseSample(line)
		if err != nil {
			return Histogram{}, err
		}
		switch metric {
		case name + "_bucket":
			le, ok := labels["le"]
			if !ok {
				return Histogram{}, fmt.Errorf("%s without le label: %q", metric, line)
			}
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return Histogram{}, fmt.Errorf("bad le %q: %w", le, err)
			}
			byBound[bound] += value
		case name + "_count":
			h.Count += value
		case name + "_sum":
			h.Sum += value
		}
	}
	if err := sc.Err(); err != nil {
		return Histogram{}, fmt.Errorf("reading metrics: %w", err)
	}
	for b, c := range byBound {
		h.Buckets = append(h.Buckets, Bucket{UpperBound: b, Count: c})
	}
	slices.SortFunc(h.Buckets, func(a, b Bucket) int { return cmpFloat(a.UpperBound, b.UpperBound) })
	return h, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// parseSample parses `name{k="v",...} value [timestamp]`.
func parseSample(line string) (string, map[string]string, float64, error) {
	labels := map[string]string{}
	name, rest := line, ""
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		name, rest = line[:i], line[i:]
	}
	if strings.HasPrefix(rest, "{") {
		end := strings.LastIndex(rest, "}")
		if end < 0 {
			return "", nil, 0, fmt.Errorf("unterminated labels: %q", line)
		}
		for _, kv := range splitLabels(rest[1:end]) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return "", nil, 0, fmt.Errorf("bad label %q in %q", kv, line)
			}
			uq, err := strconv.Unquote(strings.TrimSpace(v))
			if err != nil {
				return "", nil, 0, fmt.Errorf("bad label value %q in %q", v, line)
			}
			labels[strings.TrimSpace(k)] = uq
		}
		rest = rest[end+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 1 {
		return "", nil, 0, fmt.Errorf("sample without value: %q", line)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", nil, 0, fmt.Errorf("bad value in %q: %w", line, err)
	}
	return name, labels, v, nil
}

// splitLabels splits `a="x",b="y,z"` at the commas outside quotes.
func splitLabels(s string) []string {
	var out []string
	inQuote, escaped, start := false, false, 0
	for i, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
		case r == ',' && !inQuote:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if strings.TrimSpace(s[start:]) != "" {
		out = append(out, s[start:])
	}
	return out
}

// Sub returns the observations h has beyond an earlier snapshot of the same
// histogram (buckets missing from before count as zero).
func (h Histogram) Sub(before Histogram) Histogram {
	prev := map[float64]float64{}
	for _, b := range before.Buckets {
		prev[b.UpperBound] = b.Count
	}
	out := Histogram{Count: h.Count - before.Count, Sum: h.Sum - before.Sum}
	for _, b := range h.Buckets {
		out.Buckets = append(out.Buckets, Bucket{UpperBound: b.UpperBound, Count: b.Count - prev[b.UpperBound]})
	}
	return out
}

// Quantile estimates the q-quantile (0..1) as Prometheus's
// histogram_quantile does: linear interpolation inside the bucket that holds
// it, the lower bound of the first bucket taken as 0, and the highest finite
// bound when the quantile falls in the +Inf bucket. It returns NaN for an
// empty histogram.
func (h Histogram) Quantile(q float64) float64 {
	if len(h.Buckets) == 0 {
		return math.NaN()
	}
	total := h.Buckets[len(h.Buckets)-1].Count
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lower, prevCount := 0.0, 0.0
	for i, b := range h.Buckets {
		if b.Count >= rank {
			if math.IsInf(b.UpperBound, 1) {
				if i == 0 {
					return math.NaN()
				}
				return h.Buckets[i-1].UpperBound
			}
			if b.Count == prevCount {
				return b.UpperBound
			}
			return lower + (b.UpperBound-lower)*(rank-prevCount)/(b.Count-prevCount)
		}
		lower, prevCount = b.UpperBound, b.Count
	}
	return h.Buckets[len(h.Buckets)-1].UpperBound
}
