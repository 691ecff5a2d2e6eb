#!/usr/bin/env bash
# Installs the Debian packages a local node (hack/local-cluster.sh) needs on
# top of hack/install-deps.sh's: runc, the CNI plugins (bridge, host-local,
# loopback, portmap), a static busybox (the e2e busybox image), openssl (the
# cluster's certificates), curl, and gcc with a static libc (the pause
# binary). Only what is missing is installed; safe to rerun.
set -o errexit -o nounset -o pipefail

"$(dirname "${BASH_SOURCE[0]}")/install-deps.sh"

# path:package pairs.
wanted=(
  /usr/sbin/runc:runc
  /usr/lib/cni/bridge:containernetworking-plugins
  /bin/busybox:busybox-static
  /usr/bin/openssl:openssl
  /usr/bin/curl:curl
  /usr/bin/gcc:gcc
  /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
)
missing=()
for pair in "${wanted[@]}"; do
  path="${pair%%:*}"
  pkg="${pair#*:}"
  if [[ ! -e "${path}" ]] || { [[ "${pkg}" == busybox-static ]] && ! file -b "${path}" 2>/dev/null | grep -q 'statically linked'; }; then
    missing+=("${pkg}")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-node-deps: all dependencies present"
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-node-deps: missing packages: ${missing[*]}; run as root (or install them) first" >&2
  exit 1
fi
echo "install-node-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" file
