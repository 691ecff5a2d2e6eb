#!/usr/bin/env bash
# Assembles the iptproxy image's filesystem without Docker and checks that the
# binary works in it:
#
#   1. debootstrap a minimal Debian bookworm with iptables (nft and legacy),
#      conntrack and iproute2, as the Dockerfile's final stage installs them
#      (cached: skipped when the rootfs is already there for the same
#      packages and mirror);
#   2. install bin/iptproxy as /usr/local/bin/iptproxy and
#      /usr/local/bin/kube-proxy, hack/iptables-wrapper.sh as the iptables
#      alternatives, and hack/remove-dispatch-chains.sh as
#      /usr/local/bin/remove-dispatch-chains, as the Dockerfile does;
#   3. check, chrooted into the rootfs: iptproxy --version; then, in private
#      network namespaces, that the wrapper follows kubelet's hint chain to
#      the legacy and to the nft backend, that remove-dispatch-chains removes
#      unused KUBE-SVC-DSP-* chains (and only those), and that iptproxy --cleanup
#      removes kube-proxy's chains.
#
# The Debian mirror is the one apt already uses (the bookworm entry of
# /etc/apt/sources.list or /etc/apt/sources.list.d/*); set DEBIAN_MIRROR to
# override it. The rootfs goes to IPTPROXY_ROOTFS (default _output/rootfs).
#
# Usage: hack/image-rootfs.sh [--rebuild] [--skip-if-unsupported]
#   --rebuild              debootstrap again even when the rootfs is cached
#   --skip-if-unsupported  exit 0 with a SKIP message when this machine cannot
#                          do it (not root, no network namespaces, no
#                          debootstrap and no apt to install it, no Debian
#                          bookworm mirror configured or reachable); for CI.
#                          IPTPROXY_SKIP_IMAGE_CHECK=1 skips unconditionally.
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rootfs="${IPTPROXY_ROOTFS:-${root}/_output/rootfs}"
binary="${IPTPROXY_BIN:-${root}/bin/iptproxy}"
wrapper="${root}/hack/iptables-wrapper.sh"
suite=bookworm
packages=iptables,conntrack,iproute2

rebuild=false
skip_unsupported=false
for arg in "$@"; do
  case "${arg}" in
    --rebuild) rebuild=true ;;
    --skip-if-unsupported) skip_unsupported=true ;;
    -h | --help)
      sed -n '2,/^set -o/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "image-rootfs: unknown argument ${arg} (see --help)" >&2
      exit 2
      ;;
  esac
done

log() { echo "image-rootfs: $*"; }

# unsupported <reason>: skip or fail, depending on --skip-if-unsupported.
unsupported() {
  if ${skip_unsupported}; then
    log "SKIP: $*"
    exit 0
  fi
  echo "image-rootfs: $*" >&2
  exit 1
}

if [[ "${IPTPROXY_SKIP_IMAGE_CHECK:-}" == 1 ]]; then
  log "SKIP: IPTPROXY_SKIP_IMAGE_CHECK=1"
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  unsupported "needs root (debootstrap, chroot and network namespaces)"
fi
if ! unshare --net --mount true 2>/dev/null; then
  unsupported "cannot create network and mount namespaces here (unshare --net --mount failed)"
fi
if [[ ! -x "${binary}" ]]; then
  echo "image-rootfs: ${binary} not found; run 'make build' first" >&2
  exit 1
fi

# debian_mirror prints the URI apt uses for the ${suite} suite, from the
# deb822 .sources files or the one-line sources.list format.
debian_mirror() {
  local f
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    awk -v suite="${suite}" '
      function flush() {
        if (uri != "" && has_suite && deb) { print uri; found = 1; exit }
        uri = ""; has_suite = 0; deb = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
      tolower($1) == "enabled:" && tolower($2) == "no" { deb = 0 }
      END { if (!found) flush() }
    ' "${f}"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "${f}" ]] || continue
    # deb [options] URI suite components...
    awk -v suite="${suite}" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) print $i
      }
    ' "${f}"
  done
  shopt -u nullglob
}

ensure_debootstrap() {
  if command -v debootstrap >/dev/null 2>&1; then
    return
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    unsupported "debootstrap is not installed and there is no apt-get to install it"
  fi
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap
  fi
}

# mounts_under <dir>: the mount points at or below dir, deepest first.
mounts_under() {
  # Field 5 of /proc/self/mountinfo is the mount point.
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# unmount_under <dir>: unmounts everything mounted at or below dir
# (debootstrap can leave the target's /proc mounted), and fails if anything
# is left: never rm -rf a tree with /proc or /sys mounted in it.
unmount_under() {
  local dir mnt
  dir="$(realpath -m "$1")"
  while read -r mnt; do
    umount -l "${mnt}" || true
  done < <(mounts_under "${dir}")
  if [[ -n "$(mounts_under "${dir}")" ]]; then
    echo "image-rootfs: could not unmount everything under ${dir}:" >&2
    mounts_under "${dir}" >&2
    exit 1
  fi
}

# mirror_reachable <mirror>: fetches the suite's Release file, so that a
# machine without network to the mirror skips (with --skip-if-unsupported)
# instead of failing in the middle of debootstrap.
mirror_reachable() {
  local url="$1/dists/${suite}/Release"
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 20 -o /dev/null "${url}" 2>/dev/null ||
      unsupported "cannot reach the Debian mirror (${url}); set DEBIAN_MIRROR to one this machine can reach"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 20 -t 1 -O /dev/null "${url}" ||
      unsupported "cannot reach the Debian mirror (${url}); set DEBIAN_MIRROR to one this machine can reach"
  fi
}

# The stamp records what the cached rootfs was built from.
stamp="${rootfs}/.iptproxy-rootfs"
build_rootfs() {
  local mirror="$1" want="$2"
  if ! ${rebuild} && [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    log "reusing ${rootfs} (${want}); --rebuild to start over"
    return
  fi
  ensure_debootstrap
  mirror_reachable "${mirror}"
  local tmp="${rootfs}.tmp"
  unmount_under "${tmp}"
  rm -rf "${tmp}"
  mkdir -p "$(dirname "${rootfs}")"
  log "debootstrap ${suite} from ${mirror} with ${packages} (takes a minute or two)"
  local start=${SECONDS}
  if ! debootstrap --variant=minbase --include="${packages}" "${suite}" "${tmp}" "${mirror}" \
      >"${tmp}.log" 2>&1; then
    unmount_under "${tmp}"
    tail -n 30 "${tmp}.log" >&2
    echo "image-rootfs: debootstrap failed; full log in ${tmp}.log" >&2
    exit 1
  fi
  unmount_under "${tmp}"
  # Keep the rootfs as small as the image: no apt lists or package cache.
  rm -rf "${tmp}/var/lib/apt/lists/"* "${tmp}/var/cache/apt/archives/"*.deb
  echo "${want}" >"${tmp}/.iptproxy-rootfs"
  unmount_under "${rootfs}"
  rm -rf "${rootfs}" "${tmp}.log"
  mv "${tmp}" "${rootfs}"
  log "debootstrap done in $((SECONDS - start))s"
}

# in_rootfs <command...>: runs a command chrooted into the rootfs, in fresh
# network and mount namespaces with /proc mounted (iptables-legacy reads
# /proc/net), so nothing touches this machine's own rules.
in_rootfs() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --net --mount --fork -- \
    sh -c 'mount --make-rprivate / && mount -t proc proc "$1/proc" && shift && exec chroot "$@"' \
    sh "${rootfs}" "${rootfs}" "$@"
}

mirror="${DEBIAN_MIRROR:-$(debian_mirror | head -n 1)}"
if [[ -z "${mirror}" ]]; then
  unsupported "no Debian ${suite} entry in /etc/apt/sources.list*; set DEBIAN_MIRROR to a Debian mirror URL"
fi
build_rootfs "${mirror}" "${suite} ${packages} ${mirror}"

# Same layout as the Dockerfile's final stage. Redone every run (it is
# cheap), so the rootfs always holds the current binary and wrapper.
install -m 0755 "${binary}" "${rootfs}/usr/local/bin/iptproxy"
ln -sfn iptproxy "${rootfs}/usr/local/bin/kube-proxy"
install -m 0755 "${wrapper}" "${rootfs}/usr/sbin/iptables-wrapper"
install -m 0755 "${root}/hack/remove-dispatch-chains.sh" "${rootfs}/usr/local/bin/remove-dispatch-chains"
chroot "${rootfs}" /usr/sbin/iptables-wrapper install

log "checking the binary in ${rootfs}"
chroot "${rootfs}" /usr/local/bin/iptproxy --version
chroot "${rootfs}" /usr/local/bin/kube-proxy --version

# The checks run inside the rootfs, each in its own network namespace, with
# the rootfs's shell and tools. Each leaves the wrapper in front again.
check_wrapper() {
  local backend="$1"
  # shellcheck disable=SC2016 # expanded by the shell in the rootfs
  in_rootfs /bin/sh -eu -c '
    backend="$1"
    # What kubelet does on a node: its hint chain, in its backend.
    "iptables-${backend}" -t mangle -N KUBE-IPTABLES-HINT
    iptables -t nat -N KUBE-WRAPPER-CHECK
    picked="$(readlink -f /usr/sbin/iptables)"
    case "${picked}" in
      *-"${backend}"-multi) ;;
      *) echo "iptables-wrapper picked ${picked}, want the ${backend} backend" >&2; exit 1 ;;
    esac
    # The plain tools now reach the same backend as the suffixed ones.
    iptables-save -t nat | grep -q "^:KUBE-WRAPPER-CHECK "
    "iptables-${backend}-save" -t nat | grep -q "^:KUBE-WRAPPER-CHECK "
    echo "iptables-wrapper: kubelet hint in ${backend} -> $(iptables --version)"
    iptables-wrapper install
  ' sh "${backend}"
}
check_wrapper legacy
check_wrapper nft

# remove-dispatch-chains, through the wrapper as an operator runs it: it
# refuses while KUBE-SERVICES still jumps into a dispatch chain, and removes
# the tree (chains jumping to each other and to a KUBE-SVC- chain) once
# kube-proxy has rewritten KUBE-SERVICES, leaving everything else.
# shellcheck disable=SC2016 # expanded by the shell in the rootfs
in_rootfs /bin/sh -eu -c '
  iptables-nft -t mangle -N KUBE-IPTABLES-HINT
  printf "%s\n" "*nat" ":KUBE-SERVICES - [0:0]" ":KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]" \
    ":KUBE-SVC-DSP-0 - [0:0]" ":KUBE-SVC-DSP-01 - [0:0]" \
    "-A KUBE-SERVICES -j KUBE-SVC-DSP-0" "-A KUBE-SVC-DSP-0 -d 10.0.0.0/8 -j KUBE-SVC-DSP-01" \
    "-A KUBE-SVC-DSP-01 -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-ABCDEFGHIJKLMNOP" \
    COMMIT | iptables-nft-restore --noflush
  if remove-dispatch-chains; then
    echo "remove-dispatch-chains removed chains KUBE-SERVICES still uses" >&2
    exit 1
  fi
  iptables-save -t nat | grep -q "^:KUBE-SVC-DSP-01 "
  iptables -t nat -F KUBE-SERVICES
  remove-dispatch-chains
  if iptables-save -t nat | grep -q KUBE-SVC-DSP-; then
    echo "remove-dispatch-chains left KUBE-SVC-DSP- chains" >&2
    exit 1
  fi
  iptables-save -t nat | grep -q "^:KUBE-SVC-ABCDEFGHIJKLMNOP "
'

# shellcheck disable=SC2016 # expanded by the shell in the rootfs
in_rootfs /bin/sh -eu -c '
  # kube-proxy-style leftovers in both backends, plus a chain that is not
  # ours and must survive.
  for b in nft legacy; do
    printf "%s\n" "*nat" ":KUBE-SERVICES - [0:0]" ":KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]" \
      ":KUBE-POSTROUTING - [0:0]" ":NOT-KUBE - [0:0]" \
      "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" \
      "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-ABCDEFGHIJKLMNOP" \
      "-A POSTROUTING -j KUBE-POSTROUTING" \
      COMMIT | "iptables-${b}-restore" --noflush
  done
  iptproxy --cleanup --v=2
  for b in nft legacy; do
    echo "--- iptables-${b}-save -t nat after iptproxy --cleanup:"
    "iptables-${b}-save" -t nat | grep -v "^#"
    if "iptables-${b}-save" -t nat | grep -q KUBE-; then
      echo "iptproxy --cleanup left KUBE- chains or rules in ${b}" >&2
      exit 1
    fi
    "iptables-${b}-save" -t nat | grep -q "^:NOT-KUBE "
  done
'
log "ok: ${rootfs} runs iptproxy with both iptables backends"
