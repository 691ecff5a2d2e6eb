#!/usr/bin/env bash
# Runs the benchmarks in test/scale against the e2e harness (real
# kube-apiserver, namespace nodes), iptproxy and upstream kube-proxy one
# after the other, and prints Markdown tables (also written to
# _output/bench/).
#
#   hack/bench.sh          TestBench: cold start, endpoint change, restart,
#                          memory, bytes per sync, first-packet connect time
#   hack/bench.sh churn    TestChurn: sustained EndpointSlice churn
#
# Configure with BENCH_SIZES (1000x10,10000x10), BENCH_BACKENDS (nft,legacy),
# BENCH_PROXIES (iptproxy,kube-proxy), BENCH_PHASE_TIMEOUT (15m),
# BENCH_CONNECTS (2000), BENCH_CHANGES (5), BENCH_OUTPUT (_output/bench);
# for churn BENCH_CHURN_SIZE (10000x10), BENCH_CHURN_RATE (100 per second)
# and BENCH_CHURN_DURATION (10m). BENCH_PROFILE=1 saves each daemon's heap
# profile (enableProfiling) next to the table.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export IPTPROXY_TOOLS_DIR="${IPTPROXY_TOOLS_DIR:-${PWD}/_output/bin}"
export IPTPROXY_BIN="${IPTPROXY_BIN:-${PWD}/bin/iptproxy}"
export IPTPROXY_E2E_STRICT=1
out="${BENCH_OUTPUT:-${PWD}/_output/bench}"
mkdir -p "${out}"
case "${1:-bench}" in
  bench)
    export IPTPROXY_BENCH=1
    test='^TestBench$'
    ;;
  churn)
    export IPTPROXY_BENCH_CHURN=1
    test='^TestChurn$'
    ;;
  *)
    echo "usage: $0 [bench|churn]" >&2
    exit 2
    ;;
esac
go test -count=1 -timeout 0 -v -run "${test}" ./test/scale/ 2>&1 | tee "${out}/last-${1:-bench}.log"
