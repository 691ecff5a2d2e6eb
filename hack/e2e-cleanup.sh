#!/usr/bin/env bash
# Removes what end-to-end runs left behind when their process died without
# cleaning up (SIGKILL, go test -timeout, a killed demo): their network
# namespaces "ipt-<run>-*" (killing every process inside), their records in
# /run/iptproxy-e2e and their work directories. Runs whose owner is still
# alive are left alone unless --all is given. The harness does the same at
# the start of every run (framework.CleanupStale).
#
# Usage: hack/e2e-cleanup.sh [--all] [--check] [--quiet]
#   --all    also remove the namespaces of runs that are still going
#   --check  exit with status 3 if anything had to be removed (a leak)
#   --quiet  print only what was removed
set -o errexit -o nounset -o pipefail

registry=/run/iptproxy-e2e
all=false
check=false
quiet=false
for arg in "$@"; do
  case "${arg}" in
    --all) all=true ;;
    --check) check=true ;;
    --quiet) quiet=true ;;
    *)
      echo "usage: $0 [--all] [--check] [--quiet]" >&2
      exit 2
      ;;
  esac
done

if [[ "$(id -u)" -ne 0 ]]; then
  echo "e2e-cleanup: needs root" >&2
  exit 1
fi

# alive <run id>: true when the run's owner process still runs (same PID and
# same start time as recorded).
alive() {
  local rec="${registry}/$1" pid start _rest now
  [[ -f "${rec}" ]] || return 1
  read -r pid start _rest <"${rec}"
  [[ -r "/proc/${pid}/stat" ]] || return 1
  now="$(sed 's/.*) //' "/proc/${pid}/stat" 2>/dev/null | awk '{print $20}')"
  [[ "${now}" == "${start}" ]]
}

removed=0
while read -r name _; do
  [[ "${name}" =~ ^ipt-([0-9a-f]{6})- ]] || continue
  id="${BASH_REMATCH[1]}"
  if ! ${all} && alive "${id}"; then
    continue
  fi
  for _ in $(seq 50); do
    mapfile -t pids < <(ip netns pids "${name}" 2>/dev/null || true)
    [[ ${#pids[@]} -eq 0 ]] && break
    kill -9 "${pids[@]}" 2>/dev/null || true
    sleep 0.1
  done
  ip netns del "${name}"
  echo "e2e-cleanup: removed netns ${name}"
  removed=$((removed + 1))
done < <(ip netns list 2>/dev/null)

if [[ -d "${registry}" ]]; then
  for rec in "${registry}"/*; do
    [[ -f "${rec}" ]] || continue
    id="$(basename "${rec}")"
    if ! ${all} && alive "${id}"; then
      continue
    fi
    read -r _pid _start workdir <"${rec}" || true
    if [[ -n "${workdir-}" && "${workdir}" == *iptproxy-e2e-* ]]; then
      rm -rf "${workdir}"
    fi
    rm -f "${rec}"
  done
fi

if ! ${quiet} || [[ ${removed} -gt 0 ]]; then
  echo "e2e-cleanup: removed ${removed} namespace(s)"
fi
if ${check} && [[ ${removed} -gt 0 ]]; then
  exit 3
fi
