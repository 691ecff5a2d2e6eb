package scale

import (
	"testing"
	"time"
)

func TestFirstFullSync(t *testing.T) {
	log := `I1122 20:35:31.000000 1 app.go:153] "Using iptables proxier"
I1122 20:35:33.500000 1 proxier.go:450] "Synced rules" ipFamily="IPv4" full=false elapsed="1s"
I1122 20:35:33.600000 1 proxier.go:450] "Synced rules" ipFamily="IPv6" full=true elapsed="11ms"
I1122 20:35:34.750000 1 proxier.go:450] "Synced rules" ipFamily="IPv4" full=true elapsed="1.25s" changedServices=7
I1122 20:35:36.000000 1 proxier.go:450] "Synced rules" ipFamily="IPv4" full=true elapsed="2s"
`
	for _, tc := range []struct {
		name      string
		log       string
		wantBegan time.Time
		wantTook  time.Duration
		wantOK    bool
	}{
		{"first full sync", log, time.Date(2026, 11, 22, 20, 35, 33, 500000000, time.UTC), 1250 * time.Millisecond, true},
		{"no full sync", "I1122 20:35:33.500000 1 proxier.go:450] \"Synced rules\" full=false elapsed=\"1s\"\n", time.Time{}, 0, false},
		{"empty", "", time.Time{}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			began, took, ok := FirstFullSync(tc.log, 2026, time.UTC)
			if ok != tc.wantOK || !began.Equal(tc.wantBegan) || took != tc.wantTook {
				t.Errorf("got %v %v %v, want %v %v %v", began, took, ok, tc.wantBegan, tc.wantTook, tc.wantOK)
			}
		})
	}
}
