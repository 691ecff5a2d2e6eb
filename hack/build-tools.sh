#!/usr/bin/env bash
# Builds the binaries the end-to-end harness, the demo and the benchmarks
# run, at the versions pinned in hack/tools/k8s/go.mod and
# hack/tools/etcd/go.mod: kube-apiserver, kube-proxy (k8s.io/kubernetes) and
# etcd (go.etcd.io/etcd). They land in IPTPROXY_TOOLS_DIR (default:
# _output/bin at the repository root). A binary that is already there for
# the pinned version is kept: the version is recorded in a stamp file next to
# it (<binary>.version) and, for a binary without a stamp, read back from its
# Go build information.
#
# Only the tools named are built (default: the three tools): `make demo`
# needs kube-apiserver and etcd, not kube-proxy. Two more targets let a
# script build everything it needs in the same run: iptproxy (bin/iptproxy,
# as `make build`) and demo (the demo and its helpers, in _output/bin/e2e).
# The Kubernetes binaries, etcd and iptproxy build in parallel (one go
# command each), and a progress line (elapsed time, then per build the
# packages compiled so far out of the most it may have to compile) is
# printed every 15 seconds (IPTPROXY_PROGRESS_SECONDS).
#
# Usage: hack/build-tools.sh [--force] [kube-apiserver] [kube-proxy] [etcd] [iptproxy] [demo]
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
progress_every="${IPTPROXY_PROGRESS_SECONDS:-15}"
force=false
wanted=()
for arg in "$@"; do
  case "${arg}" in
    --force) force=true ;;
    kube-apiserver | kube-proxy | etcd | iptproxy | demo) wanted+=("${arg}") ;;
    *)
      echo "build-tools: unknown argument ${arg}; usage: $0 [--force] [kube-apiserver] [kube-proxy] [etcd] [iptproxy] [demo]" >&2
      exit 2
      ;;
  esac
done
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=(kube-apiserver kube-proxy etcd)
fi
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

mkdir -p "${tools_dir}"
tools_dir="$(cd "${tools_dir}" && pwd)"

# shellcheck source=hack/lib/tools.sh
source "${root}/hack/lib/tools.sh"

# up_to_date <binary> <module path> <version>: true when the binary exists and
# was built from that module version. Writes the stamp when it was missing.
up_to_date() {
  local bin="$1" mod="$2" version="$3"
  local stamp="${bin}.version"
  [[ -x "${bin}" ]] || return 1
  if [[ -f "${stamp}" ]]; then
    [[ "$(cat "${stamp}")" == "${mod} ${version}" ]]
    return
  fi
  # No stamp (built by hand): trust the build information Go embeds.
  if go version -m "${bin}" 2>/dev/null | awk -v m="${mod}" -v v="${version}" \
      '($1 == "mod" || $1 == "dep") && $2 == m && $3 == v { found = 1 } END { exit !found }'; then
    echo "${mod} ${version}" >"${stamp}"
    return 0
  fi
  return 1
}

work="$(mktemp -d)"
# On exit (an error, or a build that failed) stop the builds still running:
# the background subshells and their go commands.
cleanup() {
  local pid
  for pid in $(jobs -p); do
    pkill -P "${pid}" 2>/dev/null || true
    kill "${pid}" 2>/dev/null || true
  done
  rm -rf "${work}"
}
trap cleanup EXIT

# start_build <name> <module dir> <go build args...>: runs `go build -v` in
# the background; its package lines go to ${work}/<name>.log, the number of
# packages it may have to compile to ${work}/<name>.total (from go list,
# in the background too: it also downloads the modules).
names=()
start_build() {
  local name="$1" dir="$2"
  shift 2
  names+=("${name}")
  local pkgs=()
  for a in "$@"; do
    [[ "${a}" == -* || "${a}" == */ ]] && continue
    pkgs+=("${a}")
  done
  (cd "${dir}" && go list -deps "${pkgs[@]}" 2>/dev/null | wc -l >"${work}/${name}.total.tmp" &&
    mv "${work}/${name}.total.tmp" "${work}/${name}.total") &
  (
    cd "${dir}"
    # iptproxy (and the demo helpers) are static, as `make build` builds
    # it; the tools keep go's default so that their cached packages stay
    # valid.
    [[ "${name}" == iptproxy ]] && export CGO_ENABLED=0
    go build -v "$@" >"${work}/${name}.log" 2>&1
    echo $? >"${work}/${name}.rc"
  ) &
}

k8s_dir="${root}/hack/tools/k8s"
k8s_bins=()
k8s_version=""
if want kube-apiserver || want kube-proxy; then
  k8s_version="$(pinned_version "${k8s_dir}" k8s.io/kubernetes)"
  for b in kube-apiserver kube-proxy; do
    want "${b}" || continue
    if ${force} || ! up_to_date "${tools_dir}/${b}" k8s.io/kubernetes "${k8s_version}"; then
      k8s_bins+=("k8s.io/kubernetes/cmd/${b}")
    else
      echo "build-tools: ${b} ${k8s_version} is up to date"
    fi
  done
fi
if [[ ${#k8s_bins[@]} -gt 0 ]]; then
  echo "build-tools: building ${k8s_bins[*]##*/} ${k8s_version} (cold: ~23 CPU-minutes, ~12 min on 2 idle cores; cached afterwards)"
  start_build kubernetes "${k8s_dir}" -trimpath -ldflags "$(k8s_ldflags "${k8s_version}")" -o "${tools_dir}/" "${k8s_bins[@]}"
fi

etcd_dir="${root}/hack/tools/etcd"
etcd_version=""
if want etcd; then
  etcd_version="$(pinned_version "${etcd_dir}" go.etcd.io/etcd/server/v3)"
  if ${force} || ! up_to_date "${tools_dir}/etcd" go.etcd.io/etcd/server/v3 "${etcd_version}"; then
    echo "build-tools: building etcd ${etcd_version} (~1 min cold)"
    start_build etcd "${etcd_dir}" -trimpath -o "${tools_dir}/etcd" .
  else
    echo "build-tools: etcd ${etcd_version} is up to date"
  fi
fi

# iptproxy and the demo helpers share most packages: one go command builds
# both (into _output/bin/e2e, iptproxy then moves to bin/).
ipt_pkgs=()
want iptproxy && ipt_pkgs+=(./cmd/iptproxy)
want demo && ipt_pkgs+=(./test/e2e/demo ./test/e2e/echoclient)
if [[ ${#ipt_pkgs[@]} -gt 0 ]]; then
  version="$(git -C "${root}" describe --tags --always --dirty 2>/dev/null || echo dev)"
  echo "build-tools: building ${ipt_pkgs[*]} (iptproxy ${version}; cold: ~5 CPU-minutes)"
  mkdir -p "${root}/bin" "${root}/_output/bin/e2e"
  start_build iptproxy "${root}" -trimpath -ldflags "-X github.com/iptproxy/iptproxy/pkg/version.Version=${version}" \
    -o "${root}/_output/bin/e2e/" "${ipt_pkgs[@]}"
fi

if [[ ${#names[@]} -eq 0 ]]; then
  echo "build-tools: binaries in ${tools_dir}"
  exit 0
fi

# Wait, printing progress every ${progress_every} s.
start=${SECONDS}
status=0
while :; do
  running=()
  for n in "${names[@]}"; do
    [[ -f "${work}/${n}.rc" ]] || running+=("${n}")
  done
  [[ ${#running[@]} -gt 0 ]] || break
  for ((i = 0; i < progress_every * 2; i++)); do
    sleep 0.5
    all_done=true
    for n in "${running[@]}"; do
      [[ -f "${work}/${n}.rc" ]] || all_done=false
    done
    ${all_done} && break
  done
  elapsed=$((SECONDS - start))
  line=""
  for n in "${names[@]}"; do
    compiled=$(grep -cv '^go: ' "${work}/${n}.log" 2>/dev/null || true)
    downloads=$(grep -c '^go: downloading' "${work}/${n}.log" 2>/dev/null || true)
    total=""
    [[ -f "${work}/${n}.total" ]] && total=" of $(tr -d ' ' <"${work}/${n}.total")"
    if [[ -f "${work}/${n}.rc" ]]; then
      state="done"
    elif [[ "${compiled}" -eq 0 && "${downloads}" -gt 0 ]]; then
      state="${downloads} modules downloaded"
    else
      state="${compiled}${total} packages compiled"
    fi
    line+="${line:+; }${n}: ${state}"
  done
  printf 'build-tools: %dm%02ds: %s\n' $((elapsed / 60)) $((elapsed % 60)) "${line}"
done

for n in "${names[@]}"; do
  rc="$(cat "${work}/${n}.rc")"
  if [[ "${rc}" -ne 0 ]]; then
    echo "build-tools: building ${n} failed:" >&2
    grep -v '^go: downloading' "${work}/${n}.log" | tail -n 30 >&2
    status=1
  fi
done
if [[ ${status} -ne 0 ]]; then
  exit "${status}"
fi
for p in "${k8s_bins[@]}"; do
  echo "k8s.io/kubernetes ${k8s_version}" >"${tools_dir}/${p##*/}.version"
done
if want iptproxy && [[ " ${names[*]} " == *" iptproxy "* ]]; then
  mv "${root}/_output/bin/e2e/iptproxy" "${root}/bin/iptproxy"
fi
if [[ " ${names[*]} " == *" etcd "* ]]; then
  echo "go.etcd.io/etcd/server/v3 ${etcd_version}" >"${tools_dir}/etcd.version"
fi
elapsed=$((SECONDS - start))
printf 'build-tools: built in %dm%02ds; binaries in %s\n' $((elapsed / 60)) $((elapsed % 60)) "${tools_dir}"
