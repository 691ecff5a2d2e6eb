package ruleset

import (
	"bytes"
	"testing"
)

func BenchmarkParseLarge(b *testing.B) {
	payload := genKubeProxyPayload(33000)
	b.Logf("payload: %d lines, %d bytes", bytes.Count(payload, []byte("\n")), len(payload))
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseWith(payload, Options{Strict: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseLargeLenient(b *testing.B) {
	payload := genKubeProxyPayload(33000)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestoreIncremental measures a sync that rewrites one Service
// of a 10,000-Service table.
func BenchmarkRestoreIncremental(b *testing.B) {
	rs, err := ParseWith(genKubeProxyPayload(10000), Options{Strict: true, Family: FamilyIPv4})
	if err != nil {
		b.Fatal(err)
	}
	inc := []byte("*nat\n:KUBE-SVC-0000000000000007 - [0:0]\n:KUBE-SEP-0000000000000070 - [0:0]\n" +
		"-A KUBE-SVC-0000000000000007 -m comment --comment \"ns7/svc7:p80 -> 10.1.0.8:80\" -j KUBE-SEP-0000000000000070\n" +
		"-A KUBE-SEP-0000000000000070 -m comment --comment ns7/svc7:p80 -m tcp -p tcp -j DNAT --to-destination 10.1.0.8:80\nCOMMIT\n")
	b.ReportAllocs()
	for b.Loop() {
		if err := rs.Restore(inc, true); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSaveLarge(b *testing.B) {
	rs, err := Parse(genKubeProxyPayload(33000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = rs.Save("nat")
	}
}
