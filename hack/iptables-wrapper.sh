#!/bin/sh
# iptables-wrapper: makes the plain iptables, iptables-save, iptables-restore,
# ip6tables, ip6tables-save and ip6tables-restore commands of the iptproxy
# image drive the same backend (nft or legacy) as the node, as the wrapper in
# kube-proxy's image does (kubernetes-sigs/iptables-wrappers).
#
# The image (Dockerfile, hack/image-rootfs.sh) installs this file as
# /usr/sbin/iptables-wrapper and registers it, with "iptables-wrapper
# install", as the highest-priority Debian alternative for those six names.
# On the first call it looks at the node's rules, points the iptables and
# ip6tables alternatives at the backend it picked, and runs the requested
# command with that backend. Later calls go straight to the backend;
# "iptables-wrapper install" puts the wrapper back in front, and
# "iptables-wrapper detect" prints what it would pick.
#
# How it picks (same order as kube-proxy's wrapper, and as iptproxy's own
# --iptables-backend=auto):
#   1. kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY chain: nft is
#      checked first (its mangle table only), then legacy;
#   2. otherwise the backend with more KUBE- chains and rules, nft on a tie
#      (including "no rules anywhere").
#
# iptproxy itself does not go through this script: it runs the
# iptables-nft-* or iptables-legacy-* tools directly.
set -eu

sbin=/usr/sbin

die() {
  echo "iptables-wrapper: $*" >&2
  exit 1
}

# install registers the wrapper in front of both alternative groups (Debian's
# iptables package registers iptables-nft at priority 20 and iptables-legacy
# at 10) and puts them in automatic mode, so the wrapper is what runs.
install_wrapper() {
  self="${sbin}/iptables-wrapper"
  [ -x "${self}" ] || die "install: ${self} is missing or not executable"
  for fam in iptables ip6tables; do
    update-alternatives --quiet \
      --install "${sbin}/${fam}" "${fam}" "${self}" 100 \
      --slave "${sbin}/${fam}-restore" "${fam}-restore" "${self}" \
      --slave "${sbin}/${fam}-save" "${fam}-save" "${self}"
    update-alternatives --quiet --auto "${fam}"
  done
}

# saves <backend> [iptables-save arguments]: both families' rules in that
# backend; nothing for a family whose tool fails or is missing.
saves() {
  backend="$1"
  shift
  for f in iptables ip6tables; do
    timeout 30 "${sbin}/${f}-${backend}-save" "$@" 2>/dev/null || true
  done
}

# has_hint: true when the input holds kubelet's hint or canary chain.
has_hint() {
  grep -q -E '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
}

# kube_lines: counts the input's KUBE- chains and rules.
kube_lines() {
  grep -c -E '^(:KUBE-|-A KUBE-)' || true
}

detect_mode() {
  # nft's mangle table is cheap to read; legacy is read in full, because
  # "iptables-legacy-save -t mangle" would load the legacy kernel module.
  if saves nft -t mangle | has_hint; then
    echo nft
    return
  fi
  if saves legacy | has_hint; then
    echo legacy
    return
  fi
  legacy="$(saves legacy | kube_lines)"
  nft="$(saves nft | kube_lines)"
  if [ "${legacy}" -gt "${nft}" ]; then
    echo legacy
  else
    echo nft
  fi
}

name="$(basename "$0")"
case "${name}" in
  iptables-wrapper)
    case "${1-}" in
      install)
        install_wrapper
        exit 0
        ;;
      detect)
        detect_mode
        exit 0
        ;;
      *)
        die "usage: iptables-wrapper install|detect (or run it as iptables, iptables-save, ...)"
        ;;
    esac
    ;;
  iptables | ip6tables)
    fam="${name}"
    suffix=""
    ;;
  iptables-save | iptables-restore | ip6tables-save | ip6tables-restore)
    fam="${name%-*}"
    suffix="-${name##*-}"
    ;;
  *)
    die "called as ${name}; expected iptables, iptables-save, iptables-restore or their ip6tables forms"
    ;;
esac

mode="$(detect_mode)"

for f in iptables ip6tables; do
  if ! update-alternatives --quiet --set "${f}" "${sbin}/${f}-${mode}" >/dev/null 2>&1; then
    echo "iptables-wrapper: could not select ${f}-${mode} with update-alternatives; will detect again next time" >&2
  fi
done

exec "${sbin}/${fam}-${mode}${suffix}" "$@"
