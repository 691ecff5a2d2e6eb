// Package framework is iptproxy's end-to-end test harness: a real etcd and
// kube-apiserver, and a cluster whose nodes, pods and outside clients are
// Linux network namespaces joined by veth pairs and bridges, with real TCP,
// UDP and SCTP traffic between them.
//
// # Network layout
//
// Every run has a random six-hex-digit ID and only ever changes netfilter
// rules, routes and interfaces inside the namespaces it creates, all named
// "ipt-<id>-<name>":
//
//	ipt-<id>-host      control plane: bridge br0 198.18.0.1/24 fd00:198:18::1/64,
//	                   etcd on 127.0.0.1:2379, kube-apiserver on :6443
//	ipt-<id>-node-N    node N: eth0 198.18.0.(10+N) fd00:198:18::(10+N) on br0;
//	                   bridge cbr0 198.18.(128+N).1/24 fd00:198:18:(128+N)::1/64
//	                   for its pods (hairpin on every pod port); routes to the
//	                   other nodes' pod CIDRs via their node IPs
//	ipt-<id>-<pod>     pod k on node N: eth0 198.18.(128+N).(1+k)
//	                   fd00:198:18:(128+N)::(1+k), default routes via cbr0
//	ipt-<id>-<client>  outside client j: eth0 198.18.0.(100+j)
//	                   fd00:198:18::(100+j) on br0; not a cluster node
//
// IPv6 addresses mirror the IPv4 ones: 198.18.X.Y is fd00:198:18:X::Y, with
// X and Y written in decimal digits. The node network is 198.18.0.0/24, the
// cluster (pod) CIDR 198.18.128.0/17 and fd00:198:18:100::/56, the Service
// CIDRs 198.19.0.0/16 and fd00:198:19::/112, and 198.18.64.0/24 and
// fd00:198:18:64::/64 are free for external and load-balancer IPs. No
// interface connects these namespaces to the machine's own network; the
// test process talks to the apiserver with sockets it creates inside the
// host namespace.
//
// # Lifetime
//
// Everything a helper creates is removed by a cleanup registered on the T it
// was given, also when the test fails: processes are stopped and the
// namespaces deleted (which kills whatever still runs inside). A run that
// dies without cleaning up (SIGKILL, go test -timeout) is recognised by its
// dead owner process and removed by the next run (see CleanupStale) or by
// hack/e2e-cleanup.sh.
//
// # Prerequisites
//
// Root, iproute2 and iptables (hack/install-deps.sh), and etcd and
// kube-apiserver built by hack/build-tools.sh. Tests skip with the reason
// when something is missing; set IPTPROXY_E2E_STRICT=1 to make that a
// failure instead.
package framework
