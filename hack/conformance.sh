#!/usr/bin/env bash
# Kubernetes' own Service e2e tests (the pinned e2e.test, see
# hack/build-node-tools.sh) against the local cluster of hack/local-cluster.sh,
# once with iptproxy's DaemonSet and once with upstream kube-proxy's (kubeadm's
# addon, deploy/kubeadm), then a per-test table in docs/conformance.md and the
# two summaries as the last lines of output:
#
#   conformance iptproxy: N passed, N failed, N skipped
#   conformance kube-proxy: N passed, N failed, N skipped
#
# Focus: [sig-network] Services, EndpointSlice, Networking Granular Checks:
# Services, Conntrack, Service endpoints latency. Skipped: Serial, Disruptive,
# Flaky, Feature:* (cloud load balancers and alpha features) and DNS (no
# CoreDNS runs). A cluster is brought up (CONFORMANCE_NODES nodes, default 2)
# and down again unless one is already up, which is then left as it was.
#
# Environment: CONFORMANCE_PROXIES (default "iptproxy kube-proxy"),
# CONFORMANCE_PROCS (parallel ginkgo processes, default 4), CONFORMANCE_FOCUS
# and CONFORMANCE_SKIP (override the regular expressions),
# CONFORMANCE_DOC (default docs/conformance.md; "" to not write it),
# CONFORMANCE_REPORT_ONLY=1 (no run: the table and summaries from the last
# run's results in _output/conformance).
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export IPTPROXY_TOOLS_DIR="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
tools="${IPTPROXY_TOOLS_DIR}"
dir="${IPTPROXY_CLUSTER_DIR:-/var/lib/iptproxy-cluster}"
out="${root}/_output/conformance"
proxies="${CONFORMANCE_PROXIES:-iptproxy kube-proxy}"
procs="${CONFORMANCE_PROCS:-4}"
nodes="${CONFORMANCE_NODES:-2}"
doc="${CONFORMANCE_DOC-${root}/docs/conformance.md}"
focus="${CONFORMANCE_FOCUS:-\[sig-network\] (Services|EndpointSlice|Networking Granular Checks: Services|Conntrack|Service endpoints latency)}"
skip="${CONFORMANCE_SKIP:-\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Feature:|DNS}"

log() { echo "conformance: $(date +%T) $*"; }

report_only=false
[[ "${CONFORMANCE_REPORT_ONLY:-}" != 1 ]] || report_only=true
${report_only} || "${root}/hack/build-node-tools.sh" e2e.test
# The ginkgo CLI runs the specs in parallel processes; same pinned module.
ginkgo_version="$(cd "${root}/hack/tools/k8s" && go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)"
if ! ${report_only} && [[ ! -x "${tools}/ginkgo" || "$(cat "${tools}/ginkgo.version" 2>/dev/null)" != "github.com/onsi/ginkgo/v2 ${ginkgo_version}" ]]; then
  log "building ginkgo ${ginkgo_version}"
  (cd "${root}/hack/tools/k8s" && go build -trimpath -o "${tools}/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
  echo "github.com/onsi/ginkgo/v2 ${ginkgo_version}" >"${tools}/ginkgo.version"
fi

brought_up=false
if ! ${report_only} && [[ ! -f "${dir}/admin.kubeconfig" ]]; then
  start=${SECONDS}
  "${root}/hack/local-cluster.sh" up --nodes "${nodes}" --proxy none
  log "cluster up in $((SECONDS - start))s"
  brought_up=true
fi
cleanup() {
  if ${brought_up}; then
    "${root}/hack/local-cluster.sh" down
  fi
}
trap cleanup EXIT

mkdir -p "${out}"
# k_nodes: the number of nodes (remembered for CONFORMANCE_REPORT_ONLY).
k_nodes() {
  if [[ -f "${out}/nodes" ]] && ${report_only}; then
    cat "${out}/nodes"
    return
  fi
  "${tools}/kubectl" --kubeconfig "${dir}/admin.kubeconfig" get nodes --no-headers 2>/dev/null | wc -l | tee "${out}/nodes"
}
if ! ${report_only}; then
  echo "$(date -u +%Y-%m-%d) $(git -C "${root}" describe --always --dirty 2>/dev/null || echo unknown)" >"${out}/run"
fi
# run_e2e <proxy>: deploys the proxy, runs the focused specs, and writes
# ${out}/<proxy>.tsv: one "status<TAB>name" line per spec that the focus
# selects (passed, failed or skipped at run time).
run_e2e() {
  local proxy="$1" report="${out}/$1"
  log "deploying ${proxy}"
  "${root}/hack/local-cluster.sh" proxy "${proxy}"
  rm -rf "${report}"
  mkdir -p "${report}"
  log "e2e.test with ${proxy} (${procs} processes; log in ${report}/e2e.log)"
  local start=${SECONDS}
  # Exits non-zero when a spec fails: the report says which.
  (cd "${report}" && "${tools}/ginkgo" --procs="${procs}" --timeout=2h --no-color \
    --focus="${focus}" --skip="${skip}" \
    "${tools}/e2e.test" -- \
    --kubeconfig="${dir}/admin.kubeconfig" \
    --kubectl-path="${tools}/kubectl" \
    --provider=skeleton \
    --num-nodes="$(k_nodes)" \
    --report-dir="${report}" \
    --dump-logs-on-failure=false \
    --e2e-output-dir="${report}" \
    >"${report}/e2e.log" 2>&1) || true
  log "e2e.test with ${proxy} took $((SECONDS - start))s"
  junit_table "${report}" >"${out}/${proxy}.tsv"
  if [[ ! -s "${out}/${proxy}.tsv" ]]; then
    tail -n 30 "${report}/e2e.log" >&2
    echo "conformance: no results from e2e.test with ${proxy}" >&2
    exit 1
  fi
}

# junit_table <dir>: status<TAB>name from the JUnit reports, for the specs the
# focus and skip expressions select.
junit_table() {
  cat "$1"/junit*.xml 2>/dev/null | tr '\n' ' ' | sed 's/<testcase /\n<testcase /g' |
    sed -n -E 's/^<testcase name="([^"]*)"[^>]*status="([a-z]+)".*/\2\t\1/p' |
    sed -e 's/&#39;/'"'"'/g' -e 's/&quot;/"/g' -e 's/&gt;/>/g' -e 's/&lt;/</g' -e 's/&amp;/\&/g' |
    awk -F '\t' -v f="${focus}" -v s="${skip}" '
      { name = $2; sub(/^\[It\] /, "", name) }
      name ~ f && name !~ s { st = $1; if (st == "pending") st = "skipped"; print st "\t" name }' |
    sort -t$'\t' -k2 -u
}

# summary <proxy>: "N passed, N failed, N skipped".
summary() {
  awk -F '\t' '{ n[$1]++ } END { printf "%d passed, %d failed, %d skipped\n", n["passed"], n["failed"] + n["timedout"] + n["panicked"] + n["interrupted"], n["skipped"] }' "${out}/$1.tsv"
}

if ! ${report_only}; then
  for p in ${proxies}; do
    run_e2e "${p}"
  done
fi

write_doc() {
  local commit date
  commit="$(git -C "${root}" describe --always --dirty 2>/dev/null || echo unknown)"
  date="$(date -u +%Y-%m-%d)"
  if ${report_only} && [[ -f "${out}/run" ]]; then
    read -r date commit <"${out}/run"
  fi
  {
    echo "# Conformance: Kubernetes' Service e2e tests, iptproxy and kube-proxy"
    echo
    echo "Run ${date} at commit ${commit} by \`make conformance\` (hack/conformance.sh) on a local"
    echo "cluster of $(k_nodes) node(s) built by hack/local-cluster.sh: Kubernetes $(cd "${root}/hack/tools/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes),"
    echo "containerd $("${tools}/containerd" --version | awk '{ print $3 }'), runc $(runc --version | awk 'NR == 1 { print $3 }'), the bridge CNI plugin; e2e.test from the same release."
    echo
    echo "Focus: \`${focus}\`"
    echo
    echo "Skip: \`${skip}\`"
    echo
    for p in ${proxies}; do
      echo "- ${p}: $(summary "${p}")"
    done
    echo
    echo "| Test | $(tr ' ' '\n' <<<"${proxies}" | paste -sd '|' | sed 's/|/ | /g') |"
    echo "|---|$(for _ in ${proxies}; do printf -- '---|'; done)"
    cut -f2 "${out}"/*.tsv | sort -u | while IFS= read -r name; do
      local row="| ${name//|/\\|} |"
      for p in ${proxies}; do
        row+=" $(awk -F '\t' -v n="${name}" '$2 == n { print $1; found = 1 } END { if (!found) print "-" }' "${out}/${p}.tsv") |"
      done
      echo "${row}"
    done
  } >"${doc}"
  log "wrote ${doc}"
}


[[ -z "${doc}" ]] || write_doc
# Specs that pass with kube-proxy and not with iptproxy.
if [[ -f "${out}/iptproxy.tsv" && -f "${out}/kube-proxy.tsv" ]]; then
  join -t$'\t' -1 2 -2 2 <(sort -t$'\t' -k2 "${out}/iptproxy.tsv") <(sort -t$'\t' -k2 "${out}/kube-proxy.tsv") |
    awk -F '\t' '$2 != $3 { print "conformance: differs: " $1 ": iptproxy " $2 ", kube-proxy " $3 }'
fi
# Down before the summaries, so that they are the last lines.
if ${brought_up}; then
  "${root}/hack/local-cluster.sh" down
  brought_up=false
fi
for p in ${proxies}; do
  echo "conformance ${p}: $(summary "${p}")"
done
