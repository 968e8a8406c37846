#!/usr/bin/env bash
# Per-SSL_write cost of kloak, side by side in one run (root):
#   baseline     no probe at all
#   empty        an empty entry + return uprobe on SSL_write (the kernel's own trap: the floor)
#   in-place     the writer runs under `kloak run --strategy in-place`, one placeholder per write
#   ciphertext   the same under `--strategy ciphertext`: key capture, record binding, tag
#                difference and the TC patch of every segment
#   not enabled  kloak is attached, the writer is outside its cgroup
# for 1 KiB and 16 KiB writes over a TCP connection on 127.0.0.1 (the ciphertext
# strategy works on TCP). Reports medians of 5 runs and ratios of added cost
# against the empty probe. On a lockdown kernel "in-place" cannot write: it is
# the scan, compare, decide and event without the two user-memory writes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "bench needs root (it loads eBPF programs)" >&2; exit 2; }
out=target/bench
mkdir -p "$out"
cargo build --locked --bins --example kloak-empty-probe >/dev/null
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
empty() { target/debug/examples/kloak-empty-probe "$lib" -- "$@"; }
under() { # STRATEGY CMD...: the command under kloak run, its placeholder in every write
  local strategy=$1; shift
  "$kloak" --log error run --strategy "$strategy" --secret "BENCH=@$root/$out/secret" \
    --allow-host 127.0.0.1 --events "$root/$out/events-$strategy.jsonl" -- \
    sh -c 'BENCH_PLACEHOLDER=$BENCH exec "$@"' sh "$@" 2>/dev/null
}
in_place() { under in-place "$@"; }
ciphertext() { under ciphertext "$@"; }
export BENCH_TCP=1

printf '%-8s %10s %10s %10s %10s %12s   %s\n' size baseline empty in-place ciphertext "not enabled" \
  "ratios of added cost (vs empty probe)"
for spec in "1024 20000" "16384 5000"; do
  set -- $spec
  rm -f "$out"/events-*.jsonl
  base=$(measure "$1" "$2" plain)
  floor=$(measure "$1" "$2" empty)
  inplace=$(measure "$1" "$2" in_place)
  cipher=$(measure "$1" "$2" ciphertext)
  "$kloak" --log error run --secret "BENCH=@$root/$out/secret" -- sleep 600 2>/dev/null &
  runner=$!
  sleep 8 # loaded and attached
  off=$(measure "$1" "$2" plain)
  kill -TERM $runner; wait $runner 2>/dev/null || true
  awk -v s="$1" -v b="$base" -v f="$floor" -v i="$inplace" -v c="$cipher" -v o="$off" 'BEGIN {
    df = f - b; if (df <= 0) df = 1
    printf "%-8s %8dns %8dns %8dns %8dns %10dns   in-place %.2fx, ciphertext %.2fx, not enabled %.2fx\n",
      s, b, f, i, c, o, (i - b) / df, (c - b) / df, (o - b) / df }'
  # Every write's placeholder must have been handled, or the timing measured a shortcut.
  for strategy in in-place ciphertext; do
    printf '         %-10s decisions: %s\n' "$strategy" "$(grep -ho '"event":"[a-z_]*"\|"reason":"[a-z_]*"\|"strategy":"[a-z_]*"' \
      "$out/events-$strategy.jsonl" 2>/dev/null | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
  done
done
