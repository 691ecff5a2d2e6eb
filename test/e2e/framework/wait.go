package framework

import (
	"context"
	"time"
)

// Eventually calls fn every 200 ms until it returns nil, failing the test
// with fn's last error after timeout. Each call gets a context bounded by
// the time left.
func Eventually(t T, timeout time.Duration, fn func(ctx context.Context) error) {
	t.Helper()
	if err := waitFor(t.Context(), timeout, nil, fn); err != nil {
		t.Fatalf("condition not met within %v: %v", timeout, err)
	}
}
