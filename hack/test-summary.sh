#!/usr/bin/env bash
# Passes `go test -v` output through and keeps its exit status meaningful:
# prints a closing "N passed, N failed, N skipped" line (tests and subtests)
# and exits non-zero when any test failed or the run did not finish.
#
# Usage:
#   go test -v ... 2>&1 | hack/test-summary.sh
#       one run: everything passed through, the closing line, the status.
#   go test -v ... 2>&1 | hack/test-summary.sh --quiet --part NAME --counts FILE
#       one part of a larger run (make test: unit, then e2e): adds its counts
#       to FILE and prints "NAME: N passed, ..." instead of the closing line;
#       always exits 0 so that the next part runs. --quiet prints a package's
#       output only when it failed (and the ok lines).
#   hack/test-summary.sh --total FILE
#       the closing line over every part in FILE, alone on the last line (CI
#       reads it), and the status: non-zero when a part failed or stopped.
set -o errexit -o nounset -o pipefail

quiet=false part="" counts="" total=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quiet) quiet=true ;;
    --part) part="$2"; shift ;;
    --counts) counts="$2"; shift ;;
    --total) total="$2"; shift ;;
    *) echo "test-summary: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "${total}" ]]; then
  passed=0 failed=0 skipped=0
  if [[ -f "${total}" ]]; then
    while read -r name p f s; do
      echo "${name}: ${p} passed, ${f} failed, ${s} skipped"
      passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
    done <"${total}"
  else
    failed=1
  fi
  echo "${passed} passed, ${failed} failed, ${skipped} skipped"
  [[ "${failed}" -eq 0 ]]
  exit
fi

passed=0 failed=0 skipped=0 finished=false
buffer=()
while IFS= read -r line; do
  if ${quiet}; then
    case "${line}" in
      "ok "* | "?"*)
        printf '%s\n' "${line}"
        buffer=()
        ;;
      "FAIL"$'\t'* | "FAIL "*)
        printf '%s\n' "${buffer[@]}" "${line}"
        buffer=()
        ;;
      *) buffer+=("${line}") ;;
    esac
  else
    printf '%s\n' "${line}"
  fi
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
if ${quiet} && [[ ${#buffer[@]} -gt 0 && "${finished}" != true ]]; then
  printf '%s\n' "${buffer[@]}"
fi
if [[ "${finished}" != true ]]; then
  failed=$((failed > 0 ? failed : 1))
fi

if [[ -n "${counts}" ]]; then
  echo "${part:-tests} ${passed} ${failed} ${skipped}" >>"${counts}"
  echo "${part:-tests}: ${passed} passed, ${failed} failed, ${skipped} skipped"
  exit 0
fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
if [[ "${failed}" -gt 0 ]]; then
  exit 1
fi
