#!/usr/bin/env bash
# Runs the benchmarks in test/scale against the e2e harness (real
# kube-apiserver, namespace nodes), iptproxy and upstream kube-proxy
# (iptables and nftables modes) one after the other, each with its default
# flags, and prints Markdown tables (also written to _output/bench/, with a
# JSON copy of the figures).
#
#   hack/bench.sh          TestBench: cold start, endpoint change, restart,
#                          memory, bytes per sync, first-packet connect time;
#                          then the chart (hack/benchchart)
#   hack/bench.sh churn    TestChurn: sustained EndpointSlice churn
#   hack/bench.sh chart    only redraw the chart from docs/benchmarks-data/
#
# Configure with BENCH_SIZES (1000x10,10000x10; 50000x10 works too),
# BENCH_BACKENDS (nft,legacy), BENCH_PROXIES
# (iptproxy,iptproxy-backend,kube-proxy,kube-proxy-nft: iptproxy-backend is
# iptproxy given --iptables-backend, measured for its restart only),
# BENCH_PHASE_TIMEOUT (15m), BENCH_CONNECTS (2000), BENCH_CHANGES (5),
# BENCH_OUTPUT (_output/bench), BENCH_LOAD_WORKERS (32 parallel creates),
# BENCH_LOAD_ONLY=1 (only create the objects and report how fast),
# BENCH_APISERVER_ARGS (extra kube-apiserver flags), BENCH_KEEP_PAYLOADS=1
# (keep every restore or nft payload of 1 MB and more in the output
# directory, to replay with test/scale/restorecost); for churn
# BENCH_CHURN_SIZE (10000x10), BENCH_CHURN_RATE (100 per second) and
# BENCH_CHURN_DURATION (10m). BENCH_PROFILE=1 saves each daemon's heap
# profile (enableProfiling) next to the table.
#
# After TestBench, the run's JSON report is copied to docs/benchmarks-data/
# and the chart docs/benchmarks-chart.svg (and .png, when rsvg-convert is
# installed) is drawn from every report there, the newest winning for each
# size (BENCH_CHART=0 skips this; BENCH_CHART_BACKEND picks the backend,
# nft).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export IPTPROXY_TOOLS_DIR="${IPTPROXY_TOOLS_DIR:-${PWD}/_output/bin}"
export IPTPROXY_BIN="${IPTPROXY_BIN:-${PWD}/bin/iptproxy}"
export IPTPROXY_E2E_STRICT=1
out="${BENCH_OUTPUT:-${PWD}/_output/bench}"
mkdir -p "${out}"
chart() {
  local data=docs/benchmarks-data
  local reports=("${data}"/bench-*.json)
  if [[ ! -e "${reports[0]}" ]]; then
    echo "bench: no reports in ${data}/, no chart" >&2
    return 0
  fi
  go run ./hack/benchchart -backend "${BENCH_CHART_BACKEND:-nft}" -o docs/benchmarks-chart.svg "${reports[@]}"
  if command -v rsvg-convert >/dev/null 2>&1; then
    rsvg-convert -o docs/benchmarks-chart.png docs/benchmarks-chart.svg
  fi
}

case "${1:-bench}" in
  chart)
    chart
    exit 0
    ;;
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
stamp="$(mktemp)"
trap 'rm -f "${stamp}"' EXIT
go test -count=1 -timeout 0 -v -run "${test}" ./test/scale/ 2>&1 | tee "${out}/last-${1:-bench}.log"
if [[ "${1:-bench}" == bench && "${BENCH_CHART:-1}" == 1 && "${BENCH_LOAD_ONLY:-0}" != 1 ]]; then
  mkdir -p docs/benchmarks-data
  # This run's report: the newest one written since it started.
  report="$(find "${out}" -maxdepth 1 -name 'bench-*.json' -newer "${stamp}" | sort | tail -n 1)"
  if [[ -n "${report}" ]]; then
    cp "${report}" docs/benchmarks-data/
    chart
  fi
fi
