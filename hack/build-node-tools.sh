#!/usr/bin/env bash
# Builds what a real local node runs, pinned, into IPTPROXY_TOOLS_DIR (default
# _output/bin), each with a version stamp (<binary>.version) so that a later
# run skips what is already there:
#
#   containerd, ctr, containerd-shim-runc-v2   github.com/containerd/containerd/v2
#                                              (hack/tools/containerd/go.mod)
#   kubelet, kube-controller-manager,          k8s.io/kubernetes
#   kube-scheduler, kubectl, agnhost,          (hack/tools/k8s/go.mod, the same
#   e2e.test                                   module as kube-apiserver)
#   pause                                      build/pause/linux/pause.c from
#                                              the same k8s.io/kubernetes module
#   regression-issue-74839                     test/images/regression-issue-74839
#                                              (the Conntrack e2e test's server)
#   coredns                                    github.com/coredns/coredns
#                                              (hack/tools/coredns/go.mod), the
#                                              cluster DNS the e2e tests need
#
# runc and the CNI plugins (bridge, host-local, loopback, portmap) come from
# Debian (runc, containernetworking-plugins): hack/install-node-deps.sh.
#
# Builds run one at a time with GOFLAGS=-p=2 (the CPU may be shared); set
# IPTPROXY_BUILD_P to change that.
#
# Usage: hack/build-node-tools.sh [--force] [component...]
#   components: containerd kubelet kube-controller-manager kube-scheduler
#               kubectl agnhost e2e.test pause coredns
#               regression-issue-74839 (default: all)
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
par="${IPTPROXY_BUILD_P:-2}"
force=false
wanted=()
for arg in "$@"; do
  case "${arg}" in
    --force) force=true ;;
    -h | --help)
      sed -n '2,/^set -o/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *) wanted+=("${arg}") ;;
  esac
done
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=(containerd pause coredns kubelet kube-controller-manager kube-scheduler kubectl agnhost regression-issue-74839 e2e.test)
fi

mkdir -p "${tools_dir}"
tools_dir="$(cd "${tools_dir}" && pwd)"
log() { echo "build-node-tools: $*"; }

# shellcheck source=hack/lib/tools.sh
source "${root}/hack/lib/tools.sh"

# up_to_date <binary> <stamp text>: the binary exists with that stamp.
up_to_date() {
  ! ${force} && [[ -x "$1" && -f "$1.version" && "$(cat "$1.version")" == "$2" ]]
}

k8s_dir="${root}/hack/tools/k8s"
k8s_version="$(pinned_version "${k8s_dir}" k8s.io/kubernetes)"

build_containerd() {
  local dir="${root}/hack/tools/containerd" version stamp b
  version="$(pinned_version "${dir}" github.com/containerd/containerd/v2)"
  stamp="github.com/containerd/containerd/v2 ${version}"
  local todo=()
  for b in containerd ctr containerd-shim-runc-v2; do
    if up_to_date "${tools_dir}/${b}" "${stamp}"; then
      log "${b} ${version} is up to date"
    else
      todo+=("github.com/containerd/containerd/v2/cmd/${b}")
    fi
  done
  [[ ${#todo[@]} -gt 0 ]] || return 0
  log "building ${todo[*]} at ${version}"
  local pkg=github.com/containerd/containerd/v2/version
  # Static, without cgo: no btrfs snapshotter (overlayfs is the default) and
  # no seccomp in the shim (runc applies the profile).
  (cd "${dir}" && CGO_ENABLED=0 go build -p "${par}" -trimpath \
    -tags 'no_btrfs no_devmapper no_zfs' \
    -ldflags "-s -w -X ${pkg}.Version=${version} -X ${pkg}.Package=github.com/containerd/containerd/v2" \
    -o "${tools_dir}/" "${todo[@]}")
  for b in "${todo[@]}"; do
    echo "${stamp}" >"${tools_dir}/${b##*/}.version"
  done
}

build_coredns() {
  local dir="${root}/hack/tools/coredns" version stamp
  version="$(pinned_version "${dir}" github.com/coredns/coredns)"
  stamp="github.com/coredns/coredns ${version}"
  if up_to_date "${tools_dir}/coredns" "${stamp}"; then
    log "coredns ${version} is up to date"
    return
  fi
  log "building coredns ${version}"
  local start=${SECONDS}
  (cd "${dir}" && CGO_ENABLED=0 go build -p "${par}" -trimpath -ldflags "-s -w" -o "${tools_dir}/coredns" github.com/coredns/coredns)
  echo "${stamp}" >"${tools_dir}/coredns.version"
  log "coredns built in $((SECONDS - start))s"
}

# build_k8s_cmd <name> <package>: a command from k8s.io/kubernetes.
build_k8s_cmd() {
  local name="$1" pkg="$2" stamp="k8s.io/kubernetes ${k8s_version}"
  if up_to_date "${tools_dir}/${name}" "${stamp}"; then
    log "${name} ${k8s_version} is up to date"
    return
  fi
  log "building ${name} at ${k8s_version}"
  local start=${SECONDS}
  (cd "${k8s_dir}" && go build -p "${par}" -trimpath -ldflags "$(k8s_ldflags "${k8s_version}")" -o "${tools_dir}/${name}" "${pkg}")
  echo "${stamp}" >"${tools_dir}/${name}.version"
  log "${name} built in $((SECONDS - start))s"
}

build_e2e() {
  local stamp="k8s.io/kubernetes ${k8s_version}"
  if up_to_date "${tools_dir}/e2e.test" "${stamp}"; then
    log "e2e.test ${k8s_version} is up to date"
    return
  fi
  log "building e2e.test (go test -c k8s.io/kubernetes/test/e2e) at ${k8s_version}"
  local start=${SECONDS}
  (cd "${k8s_dir}" && go test -c -p "${par}" -trimpath -ldflags "$(k8s_ldflags "${k8s_version}")" \
    -o "${tools_dir}/e2e.test" k8s.io/kubernetes/test/e2e)
  echo "${stamp}" >"${tools_dir}/e2e.test.version"
  log "e2e.test built in $((SECONDS - start))s"
}

# pause: kubernetes' own pause.c, static, from the pinned module's source.
build_pause() {
  local stamp="k8s.io/kubernetes ${k8s_version}" src
  if up_to_date "${tools_dir}/pause" "${stamp}"; then
    log "pause ${k8s_version} is up to date"
    return
  fi
  src="$(cd "${k8s_dir}" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  if [[ ! -f "${src}" ]]; then
    (cd "${k8s_dir}" && go mod download k8s.io/kubernetes)
  fi
  local version
  version="$(sed -n 's/^TAG ?= *//p' "$(dirname "$(dirname "${src}")")/Makefile")"
  log "building pause ${version} from ${src}"
  gcc -Os -Wall -Werror -static -DVERSION="v${version}-${k8s_version}" -o "${tools_dir}/pause" "${src}"
  strip "${tools_dir}/pause"
  echo "${stamp}" >"${tools_dir}/pause.version"
}

for c in "${wanted[@]}"; do
  case "${c}" in
    containerd) build_containerd ;;
    pause) build_pause ;;
    coredns) build_coredns ;;
    kubelet | kube-controller-manager | kube-scheduler) build_k8s_cmd "${c}" "k8s.io/kubernetes/cmd/${c}" ;;
    kubectl) build_k8s_cmd kubectl k8s.io/kubernetes/cmd/kubectl ;;
    agnhost) build_k8s_cmd agnhost k8s.io/kubernetes/test/images/agnhost ;;
    regression-issue-74839)
      # Static: its image has nothing else in it.
      CGO_ENABLED=0 build_k8s_cmd regression-issue-74839 k8s.io/kubernetes/test/images/regression-issue-74839
      ;;
    e2e.test) build_e2e ;;
    *)
      echo "build-node-tools: unknown component ${c} (see --help)" >&2
      exit 2
      ;;
  esac
done
log "binaries in ${tools_dir}"
