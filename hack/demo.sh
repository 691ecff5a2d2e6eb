#!/usr/bin/env bash
# Demo: a local control plane, a two-node cluster made of network
# namespaces, iptproxy on each node, and a Service with three backend pods
# that answers requests load-balanced. Needs root. Everything is removed on
# exit (also on Ctrl-C).
#
# Usage: hack/demo.sh [--keep] [--proxy iptproxy|kube-proxy] [--requests N]
#   --keep     keep the cluster running and print how to reach it, until Ctrl-C
#   --proxy    run upstream kube-proxy instead of iptproxy (for comparison)
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "demo: needs root to create network namespaces; run: sudo make demo" >&2
  exit 1
fi

proxy=iptproxy
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --proxy=*) proxy="${args[i]#--proxy=}" ;;
    --proxy) proxy="${args[i + 1]-}" ;;
  esac
done

start=${SECONDS}
hack/install-deps.sh
# One run of build-tools builds, in parallel and with progress lines, only
# what this demo needs: kube-apiserver and etcd (kube-proxy only for
# --proxy kube-proxy), bin/iptproxy (its show and trace explain the rules
# either way), and the demo with its helpers.
targets=(kube-apiserver etcd iptproxy demo)
if [[ "${proxy}" == "kube-proxy" ]]; then
  targets+=(kube-proxy)
fi
hack/build-tools.sh "${targets[@]}"
helpers="${root}/_output/bin/e2e"
echo "demo: ready to start after $((SECONDS - start)) s of preparation"

# The demo removes everything itself; this catches what a killed demo (or an
# earlier killed test run) left behind.
trap 'hack/e2e-cleanup.sh --quiet || true' EXIT

status=0
"${helpers}/demo" "$@" || status=$?
exit "${status}"
