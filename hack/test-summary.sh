#!/usr/bin/env bash
# Passes `go test -v` output through and keeps its exit status meaningful:
# prints a closing "N passed, N failed, N skipped" line and exits non-zero
# when any test failed or the run did not finish.
set -o errexit -o nounset -o pipefail
passed=0 failed=0 skipped=0 finished=false
while IFS= read -r line; do
  printf '%s\n' "${line}"
  case "${line}" in
    *"--- PASS:"*) passed=$((passed + 1)) ;;
    *"--- FAIL:"*) failed=$((failed + 1)) ;;
    *"--- SKIP:"*) skipped=$((skipped + 1)) ;;
    "FAIL"*|"ok "*|"PASS") finished=true ;;
  esac
  case "${line}" in
    "FAIL"*) failed=$((failed > 0 ? failed : 1)) ;;
  esac
done
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
if [[ "${failed}" -gt 0 || "${finished}" != true ]]; then
  exit 1
fi
