#!/usr/bin/env bash
# Installs the system packages the end-to-end harness and the demo need:
# iptables (nft and legacy backends), iproute2 (ip, bridge), conntrack,
# nft (kube-proxy's nftables mode in make bench),
# ncat (handy for poking at Services by hand), shellcheck, and debootstrap
# (make check-image assembles the image's filesystem with it).
# Only packages whose command is missing are installed; safe to rerun.
set -o errexit -o nounset -o pipefail

# command:package pairs.
wanted=(
  iptables:iptables
  iptables-legacy:iptables
  ip:iproute2
  bridge:iproute2
  conntrack:conntrack
  nft:nftables
  ncat:ncat
  shellcheck:shellcheck
  debootstrap:debootstrap
)

missing=()
for pair in "${wanted[@]}"; do
  cmd="${pair%%:*}"
  pkg="${pair#*:}"
  if ! command -v "${cmd}" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/${cmd}" && ! -x "/sbin/${cmd}" ]]; then
    if [[ " ${missing[*]-} " != *" ${pkg} "* ]]; then
      missing+=("${pkg}")
    fi
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all dependencies present"
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or install them) first" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]} (apt-get update, then install)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# -q, not -qq: one line per package fetched and set up, so a slow mirror shows progress.
apt-get install -y -q --no-install-recommends "${missing[@]}"
