# Helpers for end-to-end scenarios; sourced by scenarios.sh and go_matrix.sh.
# Every wait is bounded; every scenario prints PASS/FAIL lines.

PASSED=0
FAILED=0
PIDS=()

pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# wait_ready FILE: until a background server printed "ready" (10 s at most).
wait_ready() {
  for _ in $(seq 1 100); do
    grep -q ready "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start: $(cat "$1")" >&2
  return 1
}

start_tls_server() { # ADDR RECORD_FILE [--h2]
  : > "$2"
  python3 "$FIXTURES/tls_server.py" --listen "$1" --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
    --record "$2" "${@:3}" > "$2.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$2.log"
}

start_dns_server() { # ADDR LOG RECORD...
  local addr=$1 log=$2; shift 2
  python3 "$FIXTURES/dns_server.py" --listen "$addr" "$@" > "$log" 2>&1 &
  PIDS+=($!)
  wait_ready "$log"
}


# received FILE: everything the TLS server got, decoded.
received() { python3 -c '
import base64, json, sys
for line in open(sys.argv[1]):
    sys.stdout.buffer.write(base64.b64decode(json.loads(line)["data_b64"]) + b"\n")' "$1"; }

# kloak_run NAME [kloak args...] -- CMD: runs kloak with trace logs and a JSON
# events file, in a private mount namespace whose /etc/resolv.conf names only
# $RESOLVER (so clients resolve through the test DNS server), for at most $KLOAK_RUN_TIMEOUT seconds
# (default 120).
kloak_run() {
  local name=$1; shift
  local conf=$WORK/resolv.$RESOLVER.conf
  printf 'nameserver %s\noptions attempts:1 timeout:2\n' "$RESOLVER" > "$conf"
  local start=$SECONDS
  KLOAK_LOG=trace unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$conf" \
    timeout "${KLOAK_RUN_TIMEOUT:-120}" "$KLOAK" run --events "$WORK/$name.events" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"
  echo "ran $name in $((SECONDS - start))s"
}

events_have() { # NAME JQ-LIKE-SUBSTRING
  grep -q -- "$2" "$WORK/$1.events" 2>/dev/null
}

summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
