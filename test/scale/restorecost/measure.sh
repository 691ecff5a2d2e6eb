#!/usr/bin/env bash
# Restore-cost measurement in a private network namespace (see README.md).
set -o nounset -o pipefail
cd "${WORK:?set WORK to the directory with the payloads}" || exit 1
ns=restorecost
ip netns add "${ns}" 2>/dev/null || true
run() { ip netns exec "${ns}" "$@"; }
empty() { printf '*nat\nCOMMIT\n' | run iptables-nft-restore; run nft flush ruleset; }
now() { date +%s.%N; }
tiny() { # one small chain into whatever is there: the floor per transaction
  for k in 1 2 3; do
    local t0; t0=$(now)
    printf '*nat\n:KUBE-TINY-%s - [0:0]\n-A KUBE-TINY-%s -j RETURN\nCOMMIT\n' "$k" "$k" | run iptables-nft-restore --noflush || echo "tiny failed"
    echo "tiny $1 $k $(echo "$(now) - ${t0}" | bc)"
  done
}
chunks() { # layout size: separate processes
  local d="$1-$2" before=0
  empty
  tiny "empty-$1"
  local start; start=$(now)
  for f in "${d}"/*; do
    local n; n=$(wc -l <"${f}")
    local t0; t0=$(now)
    # shellcheck disable=SC2094 # the strace log is another file
    if [[ " ${STRACE:-} " == *" $(basename "${f}") "* ]]; then
      run strace -c -f -o "strace-$1-$2-$(basename "${f}").txt" iptables-nft-restore --noflush <"${f}" || echo "FAILED ${f}"
    elif [[ -n "${CPU:-}" ]]; then
      run /usr/bin/time -f "cpu %U %S" -a -o "cpu-$1-$2.txt" iptables-nft-restore --noflush <"${f}" || echo "FAILED ${f}"
    else
      run iptables-nft-restore --noflush <"${f}" || echo "FAILED ${f}"
    fi
    echo "tx $1 $2 $(basename "${f}") lines=${n} before=${before} secs=$(echo "$(now) - ${t0}" | bc)"
    before=$((before + n))
  done
  echo "total $1 $2 separate $(echo "$(now) - ${start}" | bc)"
  tiny "full-$1"
  run strace -c -f -o "strace-$1-tiny-full.txt" iptables-nft-restore --noflush < <(printf '*nat\n:KUBE-TINY-9 - [0:0]\n-A KUBE-TINY-9 -j RETURN\nCOMMIT\n')
}
onecommit() { # layout size: one process, several COMMITs
  local d="$1-$2"
  empty
  local t0; t0=$(now)
  cat "${d}"/* | run iptables-nft-restore --noflush || echo "FAILED one process"
  echo "total $1 $2 one-process $(echo "$(now) - ${t0}" | bc)"
}
"$@"
