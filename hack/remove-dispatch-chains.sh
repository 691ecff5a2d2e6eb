#!/bin/sh
# Removes iptproxy's leftover dispatch chains (KUBE-SVC-DSP-*) from a node
# after rolling back to kube-proxy. Optional tidying: nothing depends on it.
#
# iptproxy splits kube-proxy's long KUBE-SERVICES, KUBE-NODEPORTS, ... lists
# into trees of small KUBE-SVC-DSP-* chains. kube-proxy rewrites those
# top-level chains on its first sync, and in the nat table it also deletes
# the dispatch chains, since their names start like its own KUBE-SVC-*
# chains. In the filter table (trees of REJECT/DROP rules for Services
# without endpoints) kube-proxy deletes no stale chain, so they stay behind,
# unreferenced and harmless; this script removes them.
#
# The script refuses to touch a table where a chain other than a KUBE-SVC-DSP-*
# one still jumps to a KUBE-SVC-DSP-* chain (iptproxy still runs, or kube-proxy
# has not synced yet). Each table is changed in one iptables-restore
# transaction. Plain POSIX sh and awk: it runs on a node or in the iptproxy
# image ("kubectl exec" into a privileged pod with host networking).
#
# Usage: remove-dispatch-chains.sh [--backend nft|legacy] [--dry-run]
#   --backend  use iptables-<backend>-save/-restore instead of the
#              iptables-save/-restore on PATH (pick the one kube-proxy uses)
#   --dry-run  print what would be removed, change nothing
set -eu

backend=""
dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="-$2"; shift 2 ;;
    --backend=*) backend="-${1#--backend=}"; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "remove-dispatch-chains: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

status=0
for family in ip ip6; do
  save="${family}tables${backend}-save"
  restore="${family}tables${backend}-restore"
  if ! command -v "${save}" >/dev/null 2>&1; then
    echo "remove-dispatch-chains: ${save} not found; skipping ${family}tables"
    continue
  fi
  for table in nat filter; do
    dump="$("${save}" -t "${table}" 2>/dev/null)" || continue
    chains="$(printf '%s\n' "${dump}" | awk '/^:KUBE-SVC-DSP-/ { print substr($1, 2) }')"
    if [ -z "${chains}" ]; then
      continue
    fi
    # Rules outside the dispatch chains that still jump into them.
    users="$(printf '%s\n' "${dump}" | awk '$1 == "-A" && $2 !~ /^KUBE-SVC-DSP-/ && / -[jg] KUBE-SVC-DSP-/ { print $2 }' | sort -u)"
    if [ -n "${users}" ]; then
      echo "remove-dispatch-chains: ${family}tables ${table}: still in use by $(echo "${users}" | tr '\n' ' ')- has kube-proxy synced on this node (and is iptproxy stopped)? Not changed." >&2
      status=1
      continue
    fi
    n="$(printf '%s\n' "${chains}" | wc -l)"
    if ${dry_run}; then
      echo "remove-dispatch-chains: ${family}tables ${table}: would remove ${n} KUBE-SVC-DSP-* chains"
      continue
    fi
    # A chain line flushes the chain (with --noflush, only that chain); all
    # are flushed before any is deleted, since they jump to each other.
    {
      echo "*${table}"
      printf '%s\n' "${chains}" | awk '{ print ":" $1 " - [0:0]" }'
      printf '%s\n' "${chains}" | awk '{ print "-X " $1 }'
      echo "COMMIT"
    } | "${restore}" --noflush
    echo "remove-dispatch-chains: ${family}tables ${table}: removed ${n} KUBE-SVC-DSP-* chains"
  done
done
exit "${status}"
