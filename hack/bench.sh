#!/usr/bin/env bash
# Runs the benchmark (TestBench in test/scale): iptproxy and upstream
# kube-proxy, one after the other, against the same kube-apiserver, and
# prints one Markdown table (also written to _output/bench/).
# Configure with BENCH_SIZES (1000x10,10000x10), BENCH_BACKENDS (nft,legacy),
# BENCH_PROXIES (iptproxy,kube-proxy), BENCH_PHASE_TIMEOUT (15m),
# BENCH_CONNECTS (2000), BENCH_CHANGES (5) and BENCH_OUTPUT (_output/bench).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export IPTPROXY_TOOLS_DIR="${IPTPROXY_TOOLS_DIR:-${PWD}/_output/bin}"
export IPTPROXY_BIN="${IPTPROXY_BIN:-${PWD}/bin/iptproxy}"
export IPTPROXY_BENCH=1 IPTPROXY_E2E_STRICT=1
out="${BENCH_OUTPUT:-${PWD}/_output/bench}"
mkdir -p "${out}"
go test -count=1 -timeout 0 -v -run '^TestBench$' ./test/scale/ 2>&1 | tee "${out}/last-run.log"
