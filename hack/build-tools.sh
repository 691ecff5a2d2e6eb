#!/usr/bin/env bash
# Builds the binaries the end-to-end harness and the benchmarks run, at the
# versions pinned in hack/tools/k8s/go.mod and hack/tools/etcd/go.mod:
#   kube-apiserver, kube-proxy (k8s.io/kubernetes) and etcd (go.etcd.io/etcd).
# They land in IPTPROXY_TOOLS_DIR (default: _output/bin at the repository
# root). A binary that is already there for the pinned version is kept: the
# version is recorded in a stamp file next to it (<binary>.version) and, for a
# binary without a stamp, read back from its Go build information.
#
# Usage: hack/build-tools.sh [--force]
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
force=false
if [[ "${1-}" == "--force" ]]; then
  force=true
fi

mkdir -p "${tools_dir}"
tools_dir="$(cd "${tools_dir}" && pwd)"

# pinned_version <module dir> <module path>: the version go.mod requires.
pinned_version() {
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

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

k8s_dir="${root}/hack/tools/k8s"
k8s_version="$(pinned_version "${k8s_dir}" k8s.io/kubernetes)"
k8s_bins=()
for b in kube-apiserver kube-proxy; do
  if ${force} || ! up_to_date "${tools_dir}/${b}" k8s.io/kubernetes "${k8s_version}"; then
    k8s_bins+=("k8s.io/kubernetes/cmd/${b}")
  else
    echo "build-tools: ${b} ${k8s_version} is up to date"
  fi
done
if [[ ${#k8s_bins[@]} -gt 0 ]]; then
  echo "build-tools: building ${k8s_bins[*]} at ${k8s_version} (takes ~5 minutes on 2 cores)"
  minor="${k8s_version#v*.}"
  minor="${minor%%.*}"
  major="${k8s_version#v}"
  major="${major%%.*}"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X ${pkg}.gitVersion=${k8s_version} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
  (cd "${k8s_dir}" && go build -trimpath -ldflags "${ldflags}" -o "${tools_dir}/" "${k8s_bins[@]}")
  for p in "${k8s_bins[@]}"; do
    echo "k8s.io/kubernetes ${k8s_version}" >"${tools_dir}/${p##*/}.version"
  done
fi

etcd_dir="${root}/hack/tools/etcd"
etcd_version="$(pinned_version "${etcd_dir}" go.etcd.io/etcd/server/v3)"
if ${force} || ! up_to_date "${tools_dir}/etcd" go.etcd.io/etcd/server/v3 "${etcd_version}"; then
  echo "build-tools: building etcd ${etcd_version}"
  (cd "${etcd_dir}" && go build -trimpath -o "${tools_dir}/etcd" .)
  echo "go.etcd.io/etcd/server/v3 ${etcd_version}" >"${tools_dir}/etcd.version"
else
  echo "build-tools: etcd ${etcd_version} is up to date"
fi

echo "build-tools: binaries in ${tools_dir}"
