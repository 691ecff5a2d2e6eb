#!/usr/bin/env bash
# Checks that need no root: formatting, go vet, and shellcheck on every
# shell script.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
unformatted="$(git ls-files -z '*.go' | xargs -0 gofmt -l)"
if [[ -n "${unformatted}" ]]; then
  echo "gofmt would change:" >&2
  echo "${unformatted}" >&2
  exit 1
fi
go vet ./...
if ! command -v shellcheck >/dev/null; then
  hack/install-deps.sh
fi
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
if [[ ${#scripts[@]} -gt 0 ]]; then
  shellcheck "${scripts[@]}"
fi
hack/verify-manifests.sh
echo "verify: ok"
