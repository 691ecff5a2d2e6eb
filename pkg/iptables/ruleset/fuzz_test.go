package ruleset

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that its errors name a line of
// the input, and that whatever it accepts survives a Save/Parse round trip.
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add(genKubeProxyPayload(2))
	f.Add([]byte(lines("*filter", ":INPUT ACCEPT [1:2]", "[1:2] -A INPUT -m comment --comment \"a \\\"b\\\"\" -j ACCEPT", "COMMIT")))
	f.Add([]byte(lines("*nat", ":X - [0:0]", "-A X -m weird --opt 1 2 ! --flag -j MASQUERADE --random-fully", "COMMIT")))
	f.Add([]byte("*filter\n-A INPUT ab\"c d\"e\nCOMMIT"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Parse(data)
		if err != nil {
			checkLineError(t, err, data)
			return
		}
		saved := rs.SaveAll()
		again, err := Parse(saved)
		if err != nil {
			t.Fatalf("Save output does not parse: %v\ninput:\n%q\nsaved:\n%s", err, data, saved)
		}
		if got := again.SaveAll(); !bytes.Equal(got, saved) {
			t.Fatalf("round trip differs:\n%s\nvs\n%s", saved, got)
		}
	})
}

// FuzzRestore applies payloads to a fixed ruleset and checks the
// transaction semantics: a failed restore leaves exactly what the tables
// committed before the failing line left, and a successful one leaves a
// ruleset that round-trips.
func FuzzRestore(f *testing.F) {
	f.Add([]byte(lines("*nat", ":KUBE-SVC-A - [0:0]", ":KUBE-SEP-A - [0:0]", "-X KUBE-SEP-A", "COMMIT")), true)
	f.Add([]byte(lines("*filter", "-A OTHER -j DROP", "COMMIT", "*nat", "-A KUBE-SVC-A -j NOPE", "COMMIT")), true)
	f.Add([]byte(lines("*nat", ":L1 - [0:0]", "-A L1 -j KUBE-SVC-A", "-A KUBE-SEP-A -j L1", "COMMIT")), true)
	f.Add([]byte(lines("*filter", "-I OTHER 1 -s 10.0.0.1 -j DROP", "-D OTHER 2", "-E OTHER OTHER2", "-F", "-X", "COMMIT")), true)
	f.Add([]byte(lines("*filter", ":KUBE-NEW - [0:0]", "-A INPUT -j KUBE-NEW", "COMMIT")), false)
	f.Add(genKubeProxyPayload(3), true)
	f.Fuzz(func(t *testing.T, payload []byte, noflush bool) {
		opts := Options{Strict: true, Family: FamilyIPv4}
		start, err := ParseWith([]byte(base), opts)
		if err != nil {
			t.Fatal(err)
		}
		rs := start.Clone()
		err = rs.Restore(payload, noflush)
		if err != nil {
			le := checkLineError(t, err, payload)
			// Replay the payload up to the last COMMIT before the failing
			// line: that must succeed and give the same tables.
			ls := strings.SplitAfter(string(payload), "\n")
			committed := 0
			for i := 0; i < le.Line-1 && i < len(ls); i++ {
				if trimSpace(ls[i]) == "COMMIT" {
					committed = i + 1
				}
			}
			want := start.Clone()
			if err := want.Restore([]byte(strings.Join(ls[:committed], "")), noflush); err != nil {
				t.Fatalf("replaying the committed prefix failed: %v", err)
			}
			if got, w := rs.SaveAll(), want.SaveAll(); !bytes.Equal(got, w) {
				t.Fatalf("failed restore (%v) left\n%s\nwant\n%s", err, got, w)
			}
			return
		}
		saved := rs.SaveAll()
		again, err := ParseWith(saved, opts)
		if err != nil {
			t.Fatalf("Save output does not parse: %v\n%s", err, saved)
		}
		if got := again.SaveAll(); !bytes.Equal(got, saved) {
			t.Fatalf("round trip differs:\n%s\nvs\n%s", saved, got)
		}
		if got := start.SaveAll(); string(got) != base {
			t.Fatalf("restore on a clone changed the original")
		}
	})
}

func checkLineError(t *testing.T, err error, data []byte) *LineError {
	t.Helper()
	var le *LineError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T) is not a *LineError", err, err)
	}
	n := strings.Count(string(data), "\n")
	if len(data) > 0 && data[len(data)-1] != '\n' {
		n++
	}
	if le.Line < 1 || le.Line > n+1 {
		t.Fatalf("error line %d outside 1..%d: %v", le.Line, n+1, err)
	}
	if le.Err == nil {
		t.Fatalf("LineError without a cause")
	}
	return le
}
