#!/usr/bin/env bash
# Per-SSL_write cost of kloak, side by side in one run (root):
#   baseline     no probe at all
#   empty        an empty entry + return uprobe on SSL_write (the kernel's own trap: the floor)
#   enabled      the writer runs under `kloak run` with one placeholder in every write
#   not enabled  kloak is attached, the writer is outside its cgroup
# for 1 KiB and 16 KiB writes over a socketpair. Reports medians of 5 runs and
# ratios of added cost against the empty probe. On a lockdown kernel "enabled"
# is observe mode (scan, compare, decide, event; no write).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "bench needs root (it loads eBPF programs)" >&2; exit 2; }
out=target/bench
mkdir -p "$out"
cargo build --locked --bins >/dev/null
scripts/build-test-clients.sh >/dev/null
gcc -O2 -o "$out/ssl_write_bench" benches/ssl_write_bench.c -lssl -lcrypto
bench=$root/$out/ssl_write_bench
certs=$root/target/e2e/certs
lib=$(readlink -f /usr/lib/x86_64-linux-gnu/libssl.so.3)
kloak=$root/target/debug/kloak
printf 'sk-bench-0123456789abcdefghijklmn\n' > "$out/secret"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # SIZE ITERATIONS WRAPPER...: median ns per write of 5 runs
  local size=$1 iterations=$2; shift 2
  for _ in 1 2 3 4 5; do "$@" "$bench" "$size" "$iterations" "$certs/server.pem" "$certs/server.key"; done | median
}
plain() { "$@"; }
empty() { target/debug/kloak-empty-probe "$lib" -- "$@"; }
enabled() {
  "$kloak" --log error run --secret "BENCH=@$root/$out/secret" --allow-host 127.0.0.1 -- \
    sh -c 'BENCH_PLACEHOLDER=$BENCH exec "$@"' sh "$@" 2>/dev/null
}

printf '%-8s %10s %10s %10s %12s   %s\n' size baseline empty enabled "not enabled" "ratios of added cost (vs empty probe)"
for spec in "1024 20000" "16384 5000"; do
  set -- $spec
  base=$(measure "$1" "$2" plain)
  floor=$(measure "$1" "$2" empty)
  on=$(measure "$1" "$2" enabled)
  "$kloak" --log error run --secret "BENCH=@$root/$out/secret" -- sleep 600 2>/dev/null &
  runner=$!
  sleep 8 # loaded and attached
  off=$(measure "$1" "$2" plain)
  kill -TERM $runner; wait $runner 2>/dev/null || true
  awk -v s="$1" -v b="$base" -v f="$floor" -v e="$on" -v o="$off" 'BEGIN {
    df = f - b; if (df <= 0) df = 1
    printf "%-8s %8dns %8dns %8dns %10dns   enabled %.2fx, not enabled %.2fx (total: enabled %.2fx of empty-probe write)\n",
      s, b, f, e, o, (e - b) / df, (o - b) / df, e / f }'
done
