#!/usr/bin/env bash
# nft-shim.sh: stands in for nft at the front of a benchmarked daemon's PATH
# (kube-proxy's nftables mode runs "nft -f -" through knftables for every
# transaction). A transaction ("nft -f -") is logged as restore-shim.sh logs
# a restore, to $IPTPROXY_BENCH_RESTORE_LOG:
#   <start> <end> <bytes> <exit code> <nft | nft-ip6>
# ("nft-ip6" when the payload's first line names an ip6 table). Everything
# else (listings, --check, --version) runs the real nft ("$0.real") as is.
set -o nounset
export LC_ALL=C
real="$(readlink "$0.real")" || { echo "nft-shim: $0.real is missing" >&2; exit 2; }
if [[ $# -ne 2 || "$1" != "-f" || "$2" != "-" ]]; then
  exec "${real}" "$@"
fi
log="${IPTPROXY_BENCH_RESTORE_LOG:?nft-shim: IPTPROXY_BENCH_RESTORE_LOG is not set}"
payload="$(mktemp)" || exit 2
# "<log>.running.<pid>" exists while the real tool runs (the harness waits
# for none to be left before it calls the daemon settled).
marker="${log}.running.$$"
: >"${marker}"
trap 'rm -f "${payload}" "${marker}"' EXIT
start="${EPOCHREALTIME}"
cat >"${payload}"
bytes="$(stat -c %s "${payload}")"
name=nft
if head -n 1 "${payload}" | grep -q ' ip6 '; then
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
