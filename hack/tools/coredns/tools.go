//go:build tools

// Package tools pins CoreDNS, the cluster DNS of hack/local-cluster.sh.
package tools

import _ "github.com/coredns/coredns"
