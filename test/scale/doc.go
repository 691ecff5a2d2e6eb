// Package scale benchmarks iptproxy against upstream kube-proxy (iptables
// mode) on the end-to-end harness: one real kube-apiserver holding N Services
// x M endpoints, each proxy in a fresh node namespace, endpoints that answer
// real TCP connections. TestBench (run by "make bench"; skipped unless
// IPTPROXY_BENCH=1) measures cold start, endpoint-change latency, restart
// latency, memory, bytes written per sync and first-packet connect time, and
// prints one Markdown table with both proxies and their ratio.
//
// The non-test files hold the pure helpers the benchmark uses (percentiles,
// the table, the restore-shim log, iptables-save parsing, the endpoint
// address plan), so that they can be unit-tested without root.
package scale
