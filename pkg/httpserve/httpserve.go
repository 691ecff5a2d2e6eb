// Package httpserve runs an http.Server for the lifetime of a context, the
// one way iptproxy's health, metrics and health-check servers are served.
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// ShutdownTimeout bounds how long open requests may run once the context
// ends.
const ShutdownTimeout = 5 * time.Second

// UntilDone serves srv on ln until ctx ends or Serve fails. When ctx ends it
// shuts srv down, waiting at most ShutdownTimeout for open requests, and
// returns nil.
func UntilDone(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()

	select {
	case err := <-errCh:
		// Serve only returns early on a real failure: Shutdown and
		// Close are called below, after ctx ended.
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	if err := <-errCh; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
