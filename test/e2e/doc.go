// Package e2e holds iptproxy's end-to-end tests: a real kube-apiserver and
// etcd, nodes, pods and clients as network namespaces (see
// test/e2e/framework), and iptproxy running on every node. Run them as root
// with "make e2e" (hack/e2e.sh).
package e2e
