package framework

import (
	"context"
	"fmt"
	"time"
)

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 5 s) and
// leaves etcd running, as an apiserver outage or upgrade would. Clients
// see connection errors until StartAPIServer.
func (c *Cluster) StopAPIServer(t T) {
	t.Helper()
	c.mu.Lock()
	p := c.cp.apiserver
	c.mu.Unlock()
	if p == nil || p.Exited() {
		t.Fatalf("kube-apiserver is not running")
	}
	if err := p.Stop(t.Context(), 5*time.Second); err != nil {
		t.Fatalf("stopping kube-apiserver: %v", err)
	}
}

// StartAPIServer starts kube-apiserver again, with the same flags and the
// same etcd, and waits until it is ready.
func (c *Cluster) StartAPIServer(t T) {
	t.Helper()
	c.mu.Lock()
	running := c.cp.apiserver != nil && !c.cp.apiserver.Exited()
	c.mu.Unlock()
	if running {
		t.Fatalf("kube-apiserver is already running")
	}
	p, err := c.startProcess(c.host, "kube-apiserver", c.cp.apiserverArgs)
	if err != nil {
		t.Fatalf("%v", err)
	}
	c.mu.Lock()
	c.cp.apiserver = p
	c.mu.Unlock()
	if err := waitFor(t.Context(), 120*time.Second, p, func(ctx context.Context) error {
		body, err := c.cp.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		if err != nil {
			return fmt.Errorf("readyz: %w: %s", err, body)
		}
		return nil
	}); err != nil {
		t.Fatalf("kube-apiserver did not become ready again: %v", err)
	}
}
