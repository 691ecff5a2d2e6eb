#!/usr/bin/env bash
# Regenerates docs/images/chains.{dot,svg,png}: kube-proxy's nat
# KUBE-SERVICES beside iptproxy's dispatch tree, drawn from a real render by
# hack/chaindiagram (see there). Needs Graphviz's dot (Debian: graphviz),
# installed with apt-get when missing and running as root.
#
# Usage: hack/diagram.sh [SERVICES]   (default 48)
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v dot >/dev/null 2>&1; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "diagram: needs Graphviz's dot: apt-get install graphviz" >&2
    exit 1
  fi
  echo "diagram: installing graphviz"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null
fi

out=docs/images
mkdir -p "${out}"
go run ./hack/chaindiagram -services "${1:-48}" >"${out}/chains.dot"
dot -Tsvg "${out}/chains.dot" -o "${out}/chains.svg"
dot -Tpng -Gdpi=110 "${out}/chains.dot" -o "${out}/chains.png"
echo "diagram: wrote ${out}/chains.dot, chains.svg and chains.png"
