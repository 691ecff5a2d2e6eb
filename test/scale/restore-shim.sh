#!/usr/bin/env bash
# restore-shim.sh: stands in for iptables-restore (and ip6tables-restore, and
# their -nft and -legacy names) at the front of a benchmarked daemon's PATH.
# It counts the bytes of the payload on standard input, runs the real tool
# (the target of the symlink "$0.real") with the same arguments and payload,
# and appends one line to $IPTPROXY_BENCH_RESTORE_LOG:
#   <start> <end> <bytes> <exit code> <name it was called by>
# with times as $EPOCHREALTIME. Its exit status is the real tool's.
#
# Called as "nft" it stands in for nft (kube-proxy's nftables mode runs
# "nft -f -" through knftables for every transaction): a transaction is
# logged the same way, named "nft", or "nft-ip6" when the payload's first
# line names an ip6 table; everything else (listings, --check, --version)
# runs the real nft as is.
set -o nounset
export LC_ALL=C
real="$(readlink "$0.real")" || { echo "restore-shim: $0.real is missing" >&2; exit 2; }
name="${0##*/}"
if [[ "${name}" == nft && ($# -ne 2 || "$1" != "-f" || "$2" != "-") ]]; then
  exec "${real}" "$@"
fi
log="${IPTPROXY_BENCH_RESTORE_LOG:?restore-shim: IPTPROXY_BENCH_RESTORE_LOG is not set}"
payload="$(mktemp)" || exit 2
# "<log>.running.<pid>" exists while the real tool runs (the harness waits
# for none to be left before it calls the daemon settled).
marker="${log}.running.$$"
: >"${marker}"
trap 'rm -f "${payload}" "${marker}"' EXIT
start="${EPOCHREALTIME}"
cat >"${payload}"
bytes="$(stat -c %s "${payload}")"
if [[ "${name}" == nft ]] && head -n 1 "${payload}" | grep -q ' ip6 '; then
  name=nft-ip6
fi
rc=0
"${real}" "$@" <"${payload}" || rc=$?
end="${EPOCHREALTIME}"
# With $IPTPROXY_BENCH_KEEP set, payloads of 1 MB and more are kept there
# (after the timing) for replay.
if [[ -n "${IPTPROXY_BENCH_KEEP:-}" && "${bytes}" -ge 1000000 ]]; then
  cp "${payload}" "${IPTPROXY_BENCH_KEEP}/${0##*/}-${start}.txt" || true
fi
printf '%s %s %s %s %s\n' "${start}" "${end}" "${bytes}" "${rc}" "${name}" >>"${log}"
exit "${rc}"
