//go:build tools

// Package tools pins the containerd commands a local node runs: the daemon,
// its CLI (image import) and the runc v2 shim.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
