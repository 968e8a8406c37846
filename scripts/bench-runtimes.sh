#!/usr/bin/env bash
# Per-request cost of kloak for each TLS runtime, side by side in one run (root):
#   without   the client alone
#   kloak     the client under `kloak run`, its 1 KiB body carrying the placeholder once
# Each client (benches/runtimes/) opens one keep-alive connection to the local test TLS
# server, sends a warm-up request, then COUNT timed POST requests (one TLS write each) and
# prints its own time per request, so start-up, program loading and the handshake are not
# counted. The two modes alternate REPS times; the table shows medians, the added time per
# request and the ratio. The "placeholders seen" column counts kloak's decisions for the last
# kloak run of each runtime: COUNT + 1 proves the probe ran on every write (0: not hooked).
# On a lockdown kernel kloak is in observe mode: the probe scans, compares, decides and
# reports, but writes nothing.
#
# usage: sudo scripts/bench-runtimes.sh   (COUNT=1000 REPS=5 by default; BUN=/path/to/bun adds Bun)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "bench needs root (kloak run loads eBPF programs)" >&2; exit 2; }
count=${COUNT:-1000}
reps=${REPS:-5}
cargo build --locked --bin kloak >/dev/null
scripts/build-test-clients.sh >/dev/null

KLOAK=$root/target/debug/kloak
FIXTURES=$root/tests/fixtures
CERTS=$root/target/e2e/certs
clients=$root/benches/runtimes
# tmpfs: the server fsyncs every request it records.
WORK=$(mktemp -d /dev/shm/kloak-bench.XXXXXX)
# shellcheck source=tests/e2e/lib.sh
. "$root/tests/e2e/lib.sh"
trap 'cleanup; rm -rf "$WORK"' EXIT
export SSL_CERT_FILE=$CERTS/ca.pem

printf 'sk-bench-0123456789abcdefghijklmn' > "$WORK/secret"
# Without kloak the body carries bytes of the placeholder's length that are no placeholder.
standin=$(head -c "$(wc -c < "$WORK/secret")" /dev/zero | tr '\0' 'z')
start_tls_server 127.0.0.1:9443 "$WORK/server.rec" || exit 1
url=https://127.0.0.1:9443/bench

runtimes=(curl python node go)
command -v ruby >/dev/null && runtimes+=(ruby)
[ -n "${BUN:-}" ] && runtimes+=(bun)
client() { # RUNTIME: the command line of its client
  case $1 in
    curl) echo "$clients/client-curl.sh" ;;
    python) echo "python3 $clients/client.py" ;;
    node) echo "node $clients/client.js" ;;
    go) echo "$root/target/e2e/runtime-goclient" ;;
    ruby) echo "ruby $clients/client.rb" ;;
    bun) echo "$BUN $clients/client.js" ;;
  esac
}
ns() { # LOG: the client's ns_per_request, or fail loudly with what it said
  awk '$1 == "ns_per_request" { print $2; found = 1 } END { exit !found }' "$1" || {
    echo "client failed ($1): $(grep -v -e '^{"' -e '^kloak: placeholder' "$1" | tail -5)" >&2
    exit 1
  }
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

for rep in $(seq "$reps"); do
  for rt in "${runtimes[@]}"; do
    read -ra cmd <<<"$(client "$rt")"
    : > "$WORK/server.rec"
    BENCH=$standin "${cmd[@]}" "$url" "$count" > "$WORK/$rt.without.log" 2>&1
    ns "$WORK/$rt.without.log" >> "$WORK/$rt.without"
    : > "$WORK/server.rec"
    rm -f "$WORK/$rt.events"
    "$KLOAK" --log error run --events "$WORK/$rt.events" --secret "BENCH=@$WORK/secret" \
      --allow-host 127.0.0.1 -- "${cmd[@]}" "$url" "$count" > "$WORK/$rt.kloak.log" 2>&1
    ns "$WORK/$rt.kloak.log" >> "$WORK/$rt.kloak"
  done
  echo "run $rep of $reps done" >&2
done

echo "kernel $(uname -r), $(grep -o '\[[a-z]*\]' /sys/kernel/security/lockdown 2>/dev/null || echo '[unknown]') lockdown;" \
  "$count requests of 1 KiB per run, medians of $reps runs"
printf '%-8s %14s %14s %14s %8s %20s\n' runtime "without (us)" "kloak (us)" "added (us)" ratio "placeholders seen"
for rt in "${runtimes[@]}"; do
  without=$(median < "$WORK/$rt.without")
  with=$(median < "$WORK/$rt.kloak")
  seen=$(grep -c '"secret":"BENCH"' "$WORK/$rt.events" || true)
  awk -v rt="$rt" -v a="$without" -v b="$with" -v seen="$seen" -v total=$((count + 1)) 'BEGIN {
    printf "%-8s %14.1f %14.1f %14.1f %7.2fx %14d/%d\n", rt, a / 1000, b / 1000, (b - a) / 1000, b / a, seen, total }'
done
