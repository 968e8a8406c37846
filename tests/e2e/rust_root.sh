#!/usr/bin/env bash
# Root-only Rust tests that need a kernel allowing user-memory writes (the VM tier), run from their
# built test binaries: BINARY [FILTER] pairs separated by `--`. Ends with one "N passed, N failed" line.
# usage: tests/e2e/rust_root.sh BIN [FILTER] [-- BIN [FILTER]]...
set -uo pipefail
passed=0
failed=0
run() {
  local bin=$1 filter=${2:-} out line
  out=$("$bin" --ignored --test-threads=1 ${filter:+"$filter"} 2>&1)
  echo "$out"
  line=$(grep -E '^test result: ' <<<"$out" | tail -1)
  if [ -z "$line" ]; then
    echo "FAIL $(basename "$bin"): no test result (the binary did not run to the end)"
    failed=$((failed + 1))
    return
  fi
  passed=$((passed + $(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
  if [ "$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")" -eq 0 ]; then
    echo "FAIL $(basename "$bin") ${filter}: no test ran"
    failed=$((failed + 1))
  fi
}
args=()
for arg in "$@" --; do
  if [ "$arg" = -- ]; then
    [ ${#args[@]} -gt 0 ] && run "${args[@]}"
    args=()
  else
    args+=("$arg")
  fi
done
echo "$passed passed, $failed failed"
