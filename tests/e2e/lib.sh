# Helpers for end-to-end scenarios; sourced by scenarios.sh, go_matrix.sh, matrix.sh, bun.sh, doctor.sh
# and ciphertext.sh.
# Every wait is bounded; every scenario prints PASS/FAIL lines.

# parse_expect ARGS...: the `--expect rewrite|observe` every scenario file takes, into EXPECT.
parse_expect() {
  EXPECT=
  while [ $# -gt 0 ]; do
    case $1 in
      --expect) EXPECT=${2:-}; shift 2 || break ;;
      *) echo "usage: $0 --expect rewrite|observe" >&2; exit 2 ;;
    esac
  done
  case $EXPECT in rewrite|observe) ;; *) echo "usage: $0 --expect rewrite|observe" >&2; exit 2 ;; esac
}

# e2e_paths PREFIX: where a scenario file (in $E2E) finds kloak, the test-only segment dropper, the
# clients and fixtures, and its work directory ($E2E_WORK, or a new one under /tmp named after PREFIX).
e2e_paths() {
  ROOT=$(cd "$E2E/../.." && pwd)
  FIXTURES=$ROOT/tests/fixtures
  KLOAK=${KLOAK:-$ROOT/target/debug/kloak}
  DROPPER=${KLOAK_DROP_FIRST:-$ROOT/target/debug/examples/kloak-drop-first}
  CLIENTS=${CLIENTS:-$ROOT/target/e2e}
  CERTS=$CLIENTS/certs
  WORK=${E2E_WORK:-$(mktemp -d "/tmp/$1.XXXXXX")}
  mkdir -p "$WORK"
}

PASSED=0
FAILED=0
PIDS=()

pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: ${*:2}"; }  # NAME WHY... (long reasons may come in parts)

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# wait_for_text FILE TEXT [SECONDS [PID]]: until FILE contains TEXT (10 s unless told), giving up early
# when process PID has ended; false if FILE never did.
wait_for_text() {
  for _ in $(seq 1 $((${3:-10} * 10))); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    [ -z "${4:-}" ] || kill -0 "$4" 2>/dev/null || break
    sleep 0.1
  done
  grep -qF -- "$2" "$1" 2>/dev/null
}

# wait_ready FILE [SECONDS]: until a background server printed "ready" (10 s unless told).
wait_ready() {
  wait_for_text "$1" ready "${2:-10}" && return 0
  echo "server did not start: $(cat "$1" 2>/dev/null)" >&2
  return 1
}

# ns_prefix: NS_PREFIX=(ip netns exec $NETNS) when $NETNS is set, else empty. "${NS_PREFIX[@]}" CMD runs
# CMD in that namespace as a plain command, so $! of a background one is CMD itself (ip netns exec execs
# it), not a shell whose death would leave CMD running.
ns_prefix() {
  NS_PREFIX=()
  [ -z "${NETNS:-}" ] || NS_PREFIX=(ip netns exec "$NETNS")
}

start_tls_server() { # ADDR RECORD_FILE [tls_server.py args...]   (inside $NETNS when set)
  local addr=$1 record=$2; shift 2
  : > "$record"
  ns_prefix
  "${NS_PREFIX[@]}" python3 "$FIXTURES/tls_server.py" --listen "$addr" --cert "$CERTS/server.pem" \
    --key "$CERTS/server.key" --record "$record" "$@" > "$record.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$record.log"
}

start_dns_server() { # ADDR LOG RECORD...
  local addr=$1 log=$2; shift 2
  python3 "$FIXTURES/dns_server.py" --listen "$addr" "$@" > "$log" 2>&1 &
  PIDS+=($!)
  wait_ready "$log"
}


# received_sessions FILE: one line per request the TLS server got: "version cipher carried", carried
# being real (the real value of $WORK/api_key and no placeholder), placeholder (the reverse), both or
# none. What the session negotiated matters to the ciphertext strategy, which patches AES-GCM only.
received_sessions() { python3 -c '
import base64, json, sys
secret = open(sys.argv[2], "rb").read().rstrip(b"\n")
carried = {(True, False): "real", (False, True): "placeholder", (True, True): "both", (False, False): "none"}
for line in open(sys.argv[1]):
    r = json.loads(line)
    data = base64.b64decode(r["data_b64"])
    print(r.get("version"), r.get("cipher"), carried[(secret in data, b"kloak:" in data)])' "$1" "$WORK/api_key"; }

# received FILE: everything the TLS server got, decoded.
received() { python3 -c '
import base64, json, sys
for line in open(sys.argv[1]):
    sys.stdout.buffer.write(base64.b64decode(json.loads(line)["data_b64"]) + b"\n")' "$1"; }

# received_text FILE [PATH]: what the TLS server got, readable: HTTP/2 streams as their decoded
# "name: value" lines and body. With PATH, only the requests for PATH or below it (PATH/..., PATH?...).
received_text() { records text "$@"; }

# received_meta FILE PATH: "alpn=<protocol> huffman=<names>" for each request for PATH or below it,
# names being the headers whose value was HPACK Huffman-coded.
received_meta() { records meta "$@"; }

records() { # MODE FILE [PATH]
  python3 -c '
import base64, json, sys
mode, path = sys.argv[1], sys.argv[3].encode() if len(sys.argv) > 3 else None

def request_path(text):
    lines = text.split(b"\r\n")
    for line in lines:
        if line.startswith(b":path: "):
            return line[len(b":path: "):]
    parts = lines[0].split(b" ")
    return parts[1] if len(parts) == 3 else b""

for line in open(sys.argv[2]):
    record = json.loads(line)
    text = base64.b64decode(record["text_b64"])
    found = request_path(text)
    if path is not None and not (found == path or found.startswith((path + b"/", path + b"?"))):
        continue
    if mode == "text":
        sys.stdout.buffer.write(text + b"\n")
    else:
        print("alpn=%s huffman=%s" % (record["alpn"], ",".join(record.get("h2_huffman", []))))' "$@"
}

# kloak_run NAME [kloak args...] -- CMD: runs kloak with trace logs and a JSON
# events file, in a private mount namespace whose /etc/resolv.conf names only
# $RESOLVER (so clients resolve through the test DNS server), for at most
# $RUN_TIMEOUT seconds (120 unless set).
kloak_run() {
  local name=$1; shift
  local conf=$WORK/resolv.$RESOLVER.conf
  printf 'nameserver %s\noptions attempts:1 timeout:2\n' "$RESOLVER" > "$conf"
  local start=$SECONDS
  KLOAK_LOG=trace,libbpf=debug unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$conf" \
    timeout "${RUN_TIMEOUT:-120}" "$KLOAK" run --events "$WORK/$name.events" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"
  echo "ran $name in $((SECONDS - start))s"
}

events_have() { # NAME JQ-LIKE-SUBSTRING
  grep -q -- "$2" "$WORK/$1.events" 2>/dev/null
}

# events_count NAME FIELD=VALUE...: how many of NAME's events have every FIELD equal to VALUE (as text,
# whatever the key order: event=rewritten strategy=ciphertext peer=127.0.0.1:8443). FIELD!=VALUE: differs.
events_count() {
  local name=$1; shift
  python3 -c '
import json, sys
tests = []
for arg in sys.argv[2:]:
    field, op, value = arg.partition("!=") if "!=" in arg else arg.partition("=")
    tests.append((field, op == "=", value))
n = 0
try:
    lines = open(sys.argv[1]).readlines()
except OSError:
    lines = []
for line in lines:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if all((str(event.get(f)) == v) == eq for f, eq, v in tests):
        n += 1
print(n)' "$WORK/$name.events" "$@"
}

# need WHAT COMMAND...: a FAIL line naming WHAT, and missing=1, unless COMMAND succeeds. A scenario file
# that lacks something says so and stops: it never passes by running less.
need() {
  local what=$1; shift
  "$@" > /dev/null 2>&1 || { fail prerequisites "$what"; missing=1; }
}

summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# Shared checks: they read SECRET, WORK and EXPECT (rewrite|observe).

# The standard policy: the secret may go to allowed.kloak.test:8443 only. Names resolve through the
# trusted resolver $DNS (127.0.0.53 unless set); $STRATEGY, when set, is kloak's --strategy.
run_allowed() { # NAME CMD...
  local name=$1 dns=${DNS:-127.0.0.53}; shift
  : > "$WORK/a.rec"; : > "$WORK/b.rec"
  # shellcheck disable=SC2086  # ${STRATEGY:+...} is two words or none
  RESOLVER=$dns kloak_run "$name" --secret "API_KEY=@$WORK/api_key" \
    --allow-host allowed.kloak.test --port 8443 --dns-server "$dns" ${STRATEGY:+--strategy "$STRATEGY"} -- "$@"
}

# check_delivery NAME RECORD: the allowed server got the real value (rewrite)
# or only the placeholder (observe), and the matching event was emitted.
check_delivery() {
  local name=$1 record=$2 got
  got=$(received "$record")
  if [ "$EXPECT" = rewrite ]; then
    if grep -qF "$SECRET" <<<"$got" && ! grep -q 'kloak:' <<<"$got"; then pass "$name: server received the real value"
    else fail "$name" "server did not receive the real value: $(head -c 300 <<<"$got")"; fi
    events_have "$name" '"event":"rewritten"' && pass "$name: rewritten event" || fail "$name" "no rewritten event"
  else
    if grep -q 'kloak:' <<<"$got" && ! grep -qF "$SECRET" <<<"$got"; then pass "$name: server received the placeholder only"
    else fail "$name" "server did not receive the placeholder: $(head -c 300 <<<"$got")"; fi
    events_have "$name" '"reason":"rewrite_unavailable"' && pass "$name: rewrite_unavailable event" \
      || fail "$name" "no rewrite_unavailable event"
  fi
}

# check_placeholder NAME RECORD REASON: placeholder only, and the event says why.
check_placeholder() {
  local name=$1 record=$2 reason=$3 got
  got=$(received "$record")
  if grep -q 'kloak:' <<<"$got" && ! grep -qF "$SECRET" <<<"$got"; then pass "$name: placeholder only"
  else fail "$name" "expected the placeholder only: $(head -c 300 <<<"$got")"; fi
  events_have "$name" "\"reason\":\"$reason\"" && pass "$name: event reason $reason" \
    || fail "$name" "no event with reason $reason: $(cat "$WORK/$name.events" 2>/dev/null | head -c 600)"
}

# ---- Forced loss, network namespaces, memory: for the ciphertext strategy (ciphertext.sh) -------------

# tcp_retrans_segs: TCP segments retransmitted so far in this network namespace (/proc/net/snmp).
tcp_retrans_segs() {
  awk '/^Tcp:/ { if (!col) { for (i = 1; i <= NF; i++) if ($i == "RetransSegs") col = i } else print $col }' \
    /proc/net/snmp
}

# start_dropper NAME DEV: kloak-drop-first on DEV's ingress for port 8443 (inside $NETNS when set), output
# in $WORK/NAME.drop. It drops the first copy of each TLS application-data segment and passes the
# retransmission. stop_dropper NAME: SIGTERM, then DROPPED=<first copies dropped> (empty if it never said).
start_dropper() {
  local name=$1 dev=$2
  ns_prefix
  "${NS_PREFIX[@]}" "$DROPPER" --dev "$dev" --direction ingress --port 8443 > "$WORK/$name.drop" 2>&1 &
  DROPPER_PID=$!
  PIDS+=("$DROPPER_PID")
  wait_ready "$WORK/$name.drop" || return 1
  # The order the filters run in, for a FAIL line's reader (tc lists them in that order).
  "${NS_PREFIX[@]}" tc filter show dev "$dev" ingress > "$WORK/$name.filters" 2>&1
}
stop_dropper() {
  kill -TERM "$DROPPER_PID" 2>/dev/null
  wait "$DROPPER_PID" 2>/dev/null
  DROPPED=$(sed -n 's/^dropped=\([0-9]*\) .*/\1/p' "$WORK/$1.drop")
}

# run_allowed_lossy NAME DEV CMD...: run_allowed with the dropper on DEV's ingress (inside $NETNS when
# set). The dropper starts once CMD is about to run, that is once kloak attached its own tc filters:
# among filters of one priority the newest runs first, and a filter that answers TC_ACT_OK ends the
# chain, so one attached before kloak's might never see a packet. Sets DROPPED, and RETRANS: segments
# this namespace retransmitted meanwhile.
run_allowed_lossy() {
  local name=$1 dev=$2 gate=$WORK/$1.gate runner before; shift 2
  rm -f "$gate" "$gate.started"
  before=$(tcp_retrans_segs)
  run_allowed "$name" sh -c 'echo ready > "$0.started"
    i=0; while [ ! -e "$0" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    exec "$@"' "$gate" "$@" &
  runner=$!
  DROPPER_PID=
  if wait_for_text "$gate.started" ready "${RUN_TIMEOUT:-120}" "$runner"; then
    start_dropper "$name" "$dev" || echo "the dropper did not start: $(cat "$WORK/$name.drop")" >&2
  fi
  touch "$gate"
  wait "$runner"
  DROPPED=
  [ -z "$DROPPER_PID" ] || stop_dropper "$name"
  RETRANS=$(($(tcp_retrans_segs) - before))
}

# netns_up NS HOST_IF NS_IF HOST_CIDR NS_CIDR: network namespace NS joined to this one by a veth pair,
# HOST_IF here and NS_IF in NS, both up with their addresses, and NS's loopback up. Replaces a leftover.
# netns_down NS HOST_IF: removes both (the veth pair goes with either end).
netns_up() {
  local ns=$1 host_if=$2 ns_if=$3 host_cidr=$4 ns_cidr=$5
  netns_down "$ns" "$host_if"
  ip netns add "$ns" &&
    ip link add "$host_if" type veth peer name "$ns_if" netns "$ns" &&
    ip addr add "$host_cidr" dev "$host_if" && ip link set "$host_if" up &&
    ip -n "$ns" addr add "$ns_cidr" dev "$ns_if" && ip -n "$ns" link set "$ns_if" up &&
    ip -n "$ns" link set lo up
}
netns_down() {
  ip link del "$2" 2>/dev/null
  ip netns del "$1" 2>/dev/null
  true
}

# memory_count PID NEEDLE_FILE: how many times the bytes in NEEDLE_FILE (less a trailing newline) occur
# in the readable memory of process PID, read from outside. The needle never reaches a command line or
# any output, so this can look for the real secret.
memory_count() {
  python3 "$FIXTURES/memscan.py" "$1" "$2" | awk -v f="$2" '$1 == f { print $2 }'
}
