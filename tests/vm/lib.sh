# shellcheck shell=bash
# Helpers for test scenarios that run on the host or inside the VM (scripts/vm.sh). Source it from a bash
# script that uses `set -euo pipefail`:
#
#   . "$(dirname "$0")/lib.sh"
#   isolate_network "$@"                      # optional: re-exec in a private network namespace
#   start_dns_server 127.0.0.53:53 allowed.kloak.test=127.0.0.1 other.kloak.test=127.0.0.2,30
#   start_tls_server 127.0.0.1:8443 "$WORK/a.rec" [--h2]
#   with_resolver 127.0.0.53 -- curl ... https://allowed.kloak.test:8443/
#   assert_received "$WORK/a.rec" 'Bearer test-value-123456' [CHECK_NAME]
#   finish                                    # prints "N passed, N failed", stops servers, exits 0/1
#
# Every wait is bounded. Output: "PASS name" / "FAIL name: reason" lines, then exactly one summary line.

# shellcheck disable=SC2034  # FIXTURES, CLIENTS_SRC, ... are for the scenarios that source this file
KLOAK_ROOT=${KLOAK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
FIXTURES=$KLOAK_ROOT/tests/fixtures
CLIENTS_SRC=$KLOAK_ROOT/tests/clients
# Built clients and certificates (scripts/build-fixture-clients.sh); must be visible in the VM.
TEST_CLIENTS=${KLOAK_TEST_CLIENTS:-$KLOAK_ROOT/target/test-clients}
PYTHON=${KLOAK_PYTHON:-python3}
# Python needs seconds to start under TCG with a cold 9p cache, so the VM gets a longer readiness bound.
if [ -n "${KLOAK_VM:-}" ]; then READY_TIMEOUT=${KLOAK_READY_TIMEOUT:-60}; else READY_TIMEOUT=${KLOAK_READY_TIMEOUT:-10}; fi
# Scratch space: inside the VM the shared results directory (inspectable from the host after the run),
# else a private directory under /tmp. Kept on failure, removed on success.
if [ -z "${WORK:-}" ]; then
  if [ -n "${KLOAK_VM_SHARE:-}" ]; then
    WORK=$(mktemp -d "$KLOAK_VM_SHARE/work.XXXXXX")
  else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/kloak-test.XXXXXX")
  fi
fi
export WORK

PASSED=0
FAILED=0
SERVER_PIDS=()

pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: ${2:-failed}"; }

# isolate_network "$@": re-executes the calling script in a new network and mount namespace with only lo
# (up), so fixed addresses like 127.0.0.53:53 and :8443 never collide with other tests running on the same
# host. Call it before starting anything. No-op when already isolated or when KLOAK_NO_NETNS=1.
isolate_network() {
  if [ -z "${KLOAK_NETNS_ISOLATED:-}" ] && [ "${KLOAK_NO_NETNS:-0}" != 1 ]; then
    exec env KLOAK_NETNS_ISOLATED=1 WORK="$WORK" unshare --net --mount -- bash "$0" "$@"
  fi
  ip link set lo up
  # Routing needs nothing more (127/8 is local), but glibc's getaddrinfo(AI_ADDRCONFIG) ignores 127.0.0.1
  # and finds no IPv4 address without a second one.
  ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
}

# wait_for_line FILE WORD SECONDS: until FILE has a line starting with WORD (servers print "ready").
wait_for_line() {
  local file=$1 word=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    grep -q "^$word" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# _start_server NAME LOG CMD...: starts CMD in the background and waits until it prints "ready".
_start_server() {
  local name=$1 log=$2 pid
  shift 2
  "$@" > "$log" 2>&1 &
  pid=$!
  SERVER_PIDS+=("$pid")
  if ! wait_for_line "$log" ready "$READY_TIMEOUT"; then
    echo "$name did not become ready within ${READY_TIMEOUT}s; its output:" >&2
    cat "$log" >&2 || true
    return 1
  fi
}

# start_tls_server ADDR RECORD_FILE [--h2] [--cert C --key K]: certificate defaults to $TEST_CLIENTS/certs.
start_tls_server() {
  local addr=$1 record=$2
  shift 2
  local cert=$TEST_CLIENTS/certs/server.pem key=$TEST_CLIENTS/certs/server.key extra=()
  while [ $# -gt 0 ]; do
    case $1 in
      --cert) cert=$2; shift 2 ;;
      --key) key=$2; shift 2 ;;
      *) extra+=("$1"); shift ;;
    esac
  done
  : > "$record"
  _start_server "tls server $addr" "$record.log" \
    "$PYTHON" "$FIXTURES/tls_server.py" --listen "$addr" --cert "$cert" --key "$key" --record "$record" \
    "${extra[@]}"
}

# start_dns_server ADDR NAME=IP[,TTL]...: query log in $WORK/dns-ADDR.log.
start_dns_server() {
  local addr=$1 args=() r
  shift
  for r in "$@"; do args+=(--record "$r"); done
  _start_server "dns server $addr" "$WORK/dns-$addr.out" \
    "$PYTHON" "$FIXTURES/dns_server.py" --listen "$addr" --log "$WORK/dns-$addr.log" "${args[@]}"
}

# stop_servers: SIGTERM to every server started here, then a bounded wait, then SIGKILL.
stop_servers() {
  local pid i
  [ ${#SERVER_PIDS[@]} -gt 0 ] || return 0
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${SERVER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${SERVER_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}

# with_resolver DNS_IP -- CMD...: runs CMD in a private mount namespace where /etc/resolv.conf names only
# DNS_IP (port 53: resolv.conf cannot say another port), so glibc, Go and Python resolve through the test
# DNS server while the rest of the system is untouched. CMD is killed after $CMD_TIMEOUT (60) seconds.
with_resolver() {
  local ip=$1
  shift
  [ "${1:-}" = -- ] && shift
  local conf=$WORK/resolv.$ip.conf
  printf 'nameserver %s\noptions attempts:2 timeout:2\n' "$ip" > "$conf"
  # shellcheck disable=SC2016  # $0 and $@ belong to the inner shell
  timeout -k 5 "${CMD_TIMEOUT:-60}" unshare --mount --propagation private -- sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$conf" "$@"
}

# received FILE: the readable form of every record in a tls_server.py record file, one after another.
received() {
  "$PYTHON" -c '
import base64, json, sys
for line in open(sys.argv[1], "rb"):
    r = json.loads(line)
    sys.stdout.buffer.write(base64.b64decode(r.get("text_b64") or r["data_b64"]) + b"\n")
' "$1"
}

# received_raw FILE: the bytes exactly as they came off the wire (HPACK for HTTP/2).
received_raw() {
  "$PYTHON" -c '
import base64, json, sys
for line in open(sys.argv[1], "rb"):
    sys.stdout.buffer.write(base64.b64decode(json.loads(line)["data_b64"]) + b"\n")
' "$1"
}

# assert_received [-i] FILE PATTERN [NAME]: PASS when the server recorded PATTERN (a fixed string; -i: any
# case, e.g. HTTP/2 header names are lower case). Records are written before the server answers, so no
# waiting is needed once the client has its response. (grep without -q: -q would stop reading early, the
# writer would die of SIGPIPE and pipefail would turn a match into a failure.)
assert_received() {
  local icase=()
  [ "$1" = -i ] && { icase=(-i); shift; }
  local file=$1 pattern=$2 name=${3:-"received '$2' in ${1##*/}"}
  if received "$file" 2>/dev/null | grep -F "${icase[@]}" -- "$pattern" >/dev/null; then
    pass "$name"
  else
    fail "$name" "'$pattern' not among $(grep -c . "$file" 2>/dev/null || true) record(s) in $file"
  fi
}

# assert_not_received [-i] FILE PATTERN [NAME]: PASS when no record (readable or raw form) has PATTERN.
assert_not_received() {
  local icase=()
  [ "$1" = -i ] && { icase=(-i); shift; }
  local file=$1 pattern=$2 name=${3:-"did not receive '$2' in ${1##*/}"}
  [ -e "$file" ] || { fail "$name" "no record file $file"; return; }
  if { received "$file"; received_raw "$file"; } 2>/dev/null | grep -F "${icase[@]}" -- "$pattern" >/dev/null; then
    fail "$name" "'$pattern' was recorded in $file"
  else
    pass "$name"
  fi
}

# check NAME CMD...: PASS when CMD exits 0, else FAIL with the end of its output. Programs get at most
# $CMD_TIMEOUT (60) seconds; shell functions (with_resolver, ...) bound themselves.
check() {
  local name=$1 out rc=0
  shift
  if declare -F "$1" >/dev/null; then
    out=$("$@" 2>&1) || rc=$?
  else
    out=$(timeout -k 5 "${CMD_TIMEOUT:-60}" "$@" 2>&1) || rc=$?
  fi
  if [ "$rc" -eq 0 ]; then
    pass "$name"
  else
    fail "$name" "exit $rc: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
  fi
}

# finish: stops servers, prints the one summary line, exits 1 when anything failed (0 otherwise).
finish() {
  stop_servers
  echo "$PASSED passed, $FAILED failed"
  if [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]; then
    [ -n "${KLOAK_KEEP_WORK:-}" ] || [ -n "${KLOAK_VM_SHARE:-}" ] || rm -rf "$WORK"
    exit 0
  fi
  echo "work files kept in $WORK" >&2
  exit 1
}

# Servers never outlive the scenario, whatever way it ends.
trap stop_servers EXIT
