#!/usr/bin/env bash
# Runs the end-to-end tests (test/e2e/...) as root, then checks that they
# left no network namespace behind. Extra arguments go to "go test", for
# example: hack/e2e.sh -run TestPodNetwork
#
# Expects the tools (hack/build-tools.sh) and, for the iptproxy tests,
# bin/iptproxy (make build); tests whose prerequisites are missing skip
# unless IPTPROXY_E2E_STRICT=1.
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
if [[ "$(id -u)" -ne 0 ]]; then
  echo "e2e: needs root to create network namespaces" >&2
  exit 1
fi
export IPTPROXY_BIN="${IPTPROXY_BIN:-${root}/bin/iptproxy}"

status=0
go test -count=1 -timeout 25m ./test/e2e/... "$@" || status=$?
# A passing run must not leak; a failing one may have been killed mid-way.
if ! hack/e2e-cleanup.sh --check --quiet; then
  echo "e2e: the tests left namespaces behind (removed now)" >&2
  [[ ${status} -ne 0 ]] || status=1
fi
exit "${status}"
