#!/usr/bin/env bash
# Builds container image archives without Docker, and optionally imports them
# into a containerd:
#
#   iptproxy    the filesystem hack/image-rootfs.sh assembles (Debian bookworm,
#               iptables nft+legacy with the wrapper, bin/iptproxy at
#               /usr/local/bin/iptproxy and /usr/local/bin/kube-proxy)
#   kube-proxy  the same filesystem with upstream kube-proxy (the pinned
#               build in IPTPROXY_TOOLS_DIR) at /usr/local/bin/kube-proxy,
#               for parity: registry.k8s.io/kube-proxy:<version>
#   pause       kubernetes' pause (hack/build-node-tools.sh pause) as
#               registry.k8s.io/pause:<tag>, the sandbox image
#   agnhost     the pinned agnhost on Debian with the tools the e2e tests exec
#               in it (curl, nc, ip, dig, socat, bash), under the name and tag
#               the e2e framework expects (test/utils/image/manifest.go)
#   busybox     Debian's busybox-static as the e2e framework's busybox image
#   regression-issue-74839
#               the Conntrack e2e test's server (test/images/regression-issue-74839)
#   coredns     the pinned CoreDNS build as registry.k8s.io/coredns/coredns:<version>
#
# The image format is go-containerregistry's (hack/tools/image); layers are
# plain tar archives of the filesystem trees. Archives go to
# IPTPROXY_IMAGES_DIR (default _output/images), in the "docker save" layout
# that "ctr images import" and "docker load" read.
#
# Usage: hack/build-images.sh [--import <containerd socket>] [image...]
#   images: iptproxy kube-proxy pause agnhost busybox coredns
#           regression-issue-74839 (default: all)
# Environment: IMAGE (iptproxy's reference, default ghcr.io/iptproxy/iptproxy:dev)
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
images_dir="${IPTPROXY_IMAGES_DIR:-${root}/_output/images}"
rootfs="${IPTPROXY_ROOTFS:-${root}/_output/rootfs}"
agnhost_rootfs="${root}/_output/agnhost-rootfs"
image="${IMAGE:-ghcr.io/iptproxy/iptproxy:dev}"

import_sock=""
wanted=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --import)
      import_sock="$2"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -o/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *) wanted+=("$1") ;;
  esac
  shift
done
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=(iptproxy kube-proxy pause agnhost busybox coredns regression-issue-74839)
fi

log() { echo "build-images: $*"; }
mkdir -p "${images_dir}" "${tools_dir}"
tools_dir="$(cd "${tools_dir}" && pwd)"

# shellcheck source=hack/lib/images.sh
source "${root}/hack/lib/images.sh"
k8s_version="$(k8s_version)"
k8s_src="$(k8s_module_dir)"

# oci_image_tool: go-containerregistry's image writer (hack/tools/image), cached.
oci_image_tool() {
  local bin="${tools_dir}/oci-image" stamp
  stamp="$(cd "${root}/hack/tools/image" && go list -m -f '{{.Path}} {{.Version}}' github.com/google/go-containerregistry) $(sha256sum "${root}/hack/tools/image/main.go" | cut -c1-12)"
  if [[ ! -x "${bin}" || ! -f "${bin}.version" || "$(cat "${bin}.version")" != "${stamp}" ]]; then
    log "building oci-image (${stamp})" >&2
    (cd "${root}/hack/tools/image" && CGO_ENABLED=0 go build -trimpath -o "${bin}" .)
    echo "${stamp}" >"${bin}.version"
  fi
  echo "${bin}"
}

# need_tool <name>: a binary hack/build-node-tools.sh or hack/build-tools.sh builds.
need_tool() {
  if [[ ! -x "${tools_dir}/$1" ]]; then
    echo "build-images: ${tools_dir}/$1 not found; run hack/build-node-tools.sh $1 (or hack/build-tools.sh)" >&2
    exit 1
  fi
}

# layer <dir> <tar>: the tree as an image layer (numeric owners, no atime).
layer() {
  tar --numeric-owner --xattrs --sort=name --mtime=@0 -C "$1" \
    --exclude=./.iptproxy-rootfs --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
    -cf "$2" .
}

# write_image <name> <tree> <oci-image args...>
write_image() {
  local n="$1" tree="$2" tool
  shift 2
  tool="$(oci_image_tool)"
  local tmp="${images_dir}/${n}.layer.tar"
  layer "${tree}" "${tmp}"
  "${tool}" -layer "${tmp}" -o "${images_dir}/${n}.tar" "$@"
  rm -f "${tmp}"
}

build_iptproxy() {
  if [[ ! -x "${root}/bin/iptproxy" ]]; then
    (cd "${root}" && make build)
  fi
  IPTPROXY_ROOTFS="${rootfs}" "${root}/hack/image-rootfs.sh"
  write_image iptproxy "${rootfs}" -tag "${image}" -entrypoint /usr/local/bin/iptproxy
}

build_kube_proxy() {
  need_tool kube-proxy
  if [[ ! -f "${rootfs}/.iptproxy-rootfs" ]]; then
    IPTPROXY_ROOTFS="${rootfs}" "${root}/hack/image-rootfs.sh"
  fi
  # A hard-linked copy of the iptproxy filesystem with the binaries swapped.
  local tree="${images_dir}/kube-proxy-rootfs"
  rm -rf "${tree}"
  cp -al "${rootfs}" "${tree}"
  rm -f "${tree}/usr/local/bin/iptproxy" "${tree}/usr/local/bin/kube-proxy" "${tree}/usr/local/bin/remove-dispatch-chains"
  install -m 0755 "${tools_dir}/kube-proxy" "${tree}/usr/local/bin/kube-proxy"
  write_image kube-proxy "${tree}" -tag "registry.k8s.io/kube-proxy:${k8s_version}" -entrypoint /usr/local/bin/kube-proxy
  rm -rf "${tree}"
}

build_pause() {
  need_tool pause
  local tree="${images_dir}/pause-rootfs"
  rm -rf "${tree}"
  mkdir -p "${tree}"
  install -m 0755 "${tools_dir}/pause" "${tree}/pause"
  write_image pause "${tree}" -tag "$(e2e_image Pause)" -entrypoint /pause
  rm -rf "${tree}"
}

# agnhost's image is alpine with bind-tools, curl, netcat-openbsd, iproute2,
# iperf, bash, util-linux-misc and socat, and busybox's wget; this is the
# Debian equivalent (GNU wget: Debian's static busybox wget segfaults).
agnhost_packages=curl,wget,netcat-openbsd,iproute2,iputils-ping,bind9-dnsutils,bash,socat,iperf,util-linux,procps,ca-certificates
build_agnhost() {
  local want
  want="bookworm ${agnhost_packages}"
  if [[ ! -f "${agnhost_rootfs}/.iptproxy-rootfs" || "$(cat "${agnhost_rootfs}/.iptproxy-rootfs")" != "${want}" ]]; then
    local mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    log "debootstrap the agnhost filesystem from ${mirror} (a minute or two)"
    rm -rf "${agnhost_rootfs}.tmp"
    if ! debootstrap --variant=minbase --include="${agnhost_packages}" bookworm "${agnhost_rootfs}.tmp" "${mirror}" \
        >"${agnhost_rootfs}.log" 2>&1; then
      tail -n 20 "${agnhost_rootfs}.log" >&2
      exit 1
    fi
    rm -rf "${agnhost_rootfs}.tmp/var/lib/apt/lists/"* "${agnhost_rootfs}.tmp/var/cache/apt/archives/"*.deb
    echo "${want}" >"${agnhost_rootfs}.tmp/.iptproxy-rootfs"
    rm -rf "${agnhost_rootfs}"
    mv "${agnhost_rootfs}.tmp" "${agnhost_rootfs}"
  fi
  [[ -n "${AGNHOST_ROOTFS_ONLY:-}" ]] && return
  need_tool agnhost
  # What agnhost's Dockerfile adds on top of the packages.
  install -m 0755 "${tools_dir}/agnhost" "${agnhost_rootfs}/agnhost"
  ln -sfn agnhost "${agnhost_rootfs}/agnhost-2"
  mkdir -p "${agnhost_rootfs}/uploads"
  install -m 0644 "${k8s_src}/test/images/agnhost/porter/localhost.crt" "${agnhost_rootfs}/localhost.crt"
  install -m 0644 "${k8s_src}/test/images/agnhost/porter/localhost.key" "${agnhost_rootfs}/localhost.key"
  if ! grep -q '^user-defined-in-image:' "${agnhost_rootfs}/etc/passwd"; then
    chroot "${agnhost_rootfs}" useradd -u 1000 -M user-defined-in-image
    chroot "${agnhost_rootfs}" groupadd -g 50000 group-defined-in-image
    chroot "${agnhost_rootfs}" usermod -a -G group-defined-in-image user-defined-in-image
  fi
  write_image agnhost "${agnhost_rootfs}" -tag "$(e2e_image Agnhost)" -tag "$(e2e_image AgnhostPrev)" -entrypoint /agnhost -cmd pause
}

build_busybox() {
  local bb=/bin/busybox tree="${images_dir}/busybox-rootfs"
  if [[ ! -x "${bb}" ]] || ! file -b "${bb}" | grep -q 'statically linked'; then
    echo "build-images: a static busybox is needed (apt-get install busybox-static)" >&2
    exit 1
  fi
  rm -rf "${tree}"
  mkdir -p "${tree}/bin" "${tree}/tmp" "${tree}/etc"
  install -m 0755 "${bb}" "${tree}/bin/busybox"
  local applet
  for applet in $("${bb}" --list); do
    [[ "${applet}" == busybox ]] || ln -s busybox "${tree}/bin/${applet}"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"${tree}/etc/passwd"
  echo 'root:x:0:' >"${tree}/etc/group"
  write_image busybox "${tree}" -tag "$(e2e_image BusyBox)" -cmd sh
  rm -rf "${tree}"
}

build_coredns() {
  need_tool coredns
  local tree="${images_dir}/coredns-rootfs" version
  version="$(cut -d' ' -f2 "${tools_dir}/coredns.version")"
  rm -rf "${tree}"
  mkdir -p "${tree}/etc/coredns" "${tree}/tmp"
  install -m 0755 "${tools_dir}/coredns" "${tree}/coredns"
  write_image coredns "${tree}" -tag "registry.k8s.io/coredns/coredns:${version}" -entrypoint /coredns
  rm -rf "${tree}"
}

build_regression() {
  need_tool regression-issue-74839
  local tree="${images_dir}/regression-rootfs"
  rm -rf "${tree}"
  mkdir -p "${tree}"
  install -m 0755 "${tools_dir}/regression-issue-74839" "${tree}/regression-issue-74839"
  write_image regression-issue-74839 "${tree}" -tag "$(e2e_image RegressionIssue74839)" -entrypoint /regression-issue-74839
  rm -rf "${tree}"
}

for i in "${wanted[@]}"; do
  case "${i}" in
    iptproxy) build_iptproxy ;;
    kube-proxy) build_kube_proxy ;;
    pause) build_pause ;;
    agnhost) build_agnhost ;;
    busybox) build_busybox ;;
    coredns) build_coredns ;;
    regression-issue-74839) build_regression ;;
    *)
      echo "build-images: unknown image ${i} (see --help)" >&2
      exit 2
      ;;
  esac
done

if [[ -n "${import_sock}" ]]; then
  need_tool ctr
  for i in "${wanted[@]}"; do
    log "importing ${i} into containerd (${import_sock})"
    "${tools_dir}/ctr" --address "${import_sock}" -n k8s.io images import --no-unpack=false "${images_dir}/${i}.tar"
  done
fi
log "archives in ${images_dir}"
