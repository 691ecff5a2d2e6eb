//go:build tools

// Package tools pins the Kubernetes commands the end-to-end harness and the
// benchmarks build: kube-apiserver (the control plane) and kube-proxy (the
// upstream baseline).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
