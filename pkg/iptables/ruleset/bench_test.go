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
