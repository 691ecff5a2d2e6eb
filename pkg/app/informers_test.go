package app

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSameVersion checks that informer resyncs (the same object delivered
// again) are recognised, so bad parts of objects are not parsed and logged
// again every resync period, while real updates go through.
func TestSameVersion(t *testing.T) {
	svc := func(rv string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", ResourceVersion: rv}}
	}
	slice := func(rv string) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-1", ResourceVersion: rv}}
	}
	tests := []struct {
		name     string
		old, cur any
		want     bool
	}{
		{"Service resync", svc("7"), svc("7"), true},
		{"Service update", svc("7"), svc("8"), false},
		{"Service without a version (not from the API)", svc(""), svc(""), false},
		{"EndpointSlice resync", slice("9"), slice("9"), true},
		{"EndpointSlice update", slice("9"), slice("10"), false},
		{"not an object", "x", slice("9"), false},
	}
	for _, tc := range tests {
		if got := sameVersion(tc.old, tc.cur); got != tc.want {
			t.Errorf("%s: sameVersion = %v, want %v", tc.name, got, tc.want)
		}
	}
}
