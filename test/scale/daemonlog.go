package scale

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// klogTime matches a klog header ("I1122 20:35:31.894601 ...") and the
// elapsed value of iptproxy's "Synced rules" line.
var (
	klogTime      = regexp.MustCompile(`^[IWE](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})`)
	syncedElapsed = regexp.MustCompile(`elapsed="([^"]+)"`)
)

// FirstFullSync finds iptproxy's first IPv4 "Synced rules" line with
// full=true in a daemon log and returns when the sync began (its log time minus its
// elapsed time) and how long it took. year and loc complete klog's
// timestamps, which carry neither; ok is false when no such line parses.
func FirstFullSync(log string, year int, loc *time.Location) (began time.Time, took time.Duration, ok bool) {
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, "Synced rules") || !strings.Contains(line, "full=true") || !strings.Contains(line, `ipFamily="IPv4"`) {
			continue
		}
		m := klogTime.FindStringSubmatch(line)
		e := syncedElapsed.FindStringSubmatch(line)
		if m == nil || e == nil {
			continue
		}
		at, err := time.ParseInLocation("2006 0102 15:04:05.000000", fmt.Sprint(year)+" "+m[1], loc)
		if err != nil {
			continue
		}
		d, err := time.ParseDuration(e[1])
		if err != nil {
			continue
		}
		return at.Add(-d), d, true
	}
	return time.Time{}, 0, false
}
