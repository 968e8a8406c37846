#!/usr/bin/env bash
# curl (libcurl over the shared libssl) HTTPS keep-alive client of scripts/bench-runtimes.sh.
#
# usage: client-curl.sh URL COUNT
#
# One curl process, one connection: a warm-up request (the handshake), then COUNT POST requests
# whose 1 KiB body carries $BENCH once; prints "ns_per_request N" from curl's own per-transfer
# times (process start-up excluded). Trusts $SSL_CERT_FILE.
set -euo pipefail
url=$1 count=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mark=${BENCH:-}
{ printf 'x%.0s' $(seq 64); printf '%s' "$mark"; printf 'y%.0s' $(seq $((1024 - 64 - ${#mark}))); } > "$work/body"
for _ in $(seq 0 "$count"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done > "$work/urls"
curl -sS --fail --cacert "$SSL_CERT_FILE" --data-binary "@$work/body" -w '%{time_total}\n' -K "$work/urls" |
  awk -v n="$count" 'NR > 1 { total += $1 } END {
    if (NR != n + 1) { print "client-curl.sh: " NR " of " n + 1 " transfers" > "/dev/stderr"; exit 1 }
    printf "ns_per_request %d\n", total / n * 1e9 }'
