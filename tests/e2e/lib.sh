# Helpers for end-to-end scenarios; sourced by scenarios.sh, go_matrix.sh, matrix.sh and bun.sh.
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

# e2e_paths PREFIX: where a scenario file (in $E2E) finds kloak, the clients and fixtures, and its
# work directory ($E2E_WORK, or a new one under /tmp named after PREFIX).
e2e_paths() {
  ROOT=$(cd "$E2E/../.." && pwd)
  FIXTURES=$ROOT/tests/fixtures
  KLOAK=${KLOAK:-$ROOT/target/debug/kloak}
  CLIENTS=${CLIENTS:-$ROOT/target/e2e}
  CERTS=$CLIENTS/certs
  WORK=${E2E_WORK:-$(mktemp -d "/tmp/$1.XXXXXX")}
  mkdir -p "$WORK"
}

PASSED=0
FAILED=0
PIDS=()

pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# wait_ready FILE [SECONDS]: until a background server printed "ready" (10 s unless told).
wait_ready() {
  for _ in $(seq 1 $((${2:-10} * 10))); do
    grep -q ready "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start: $(cat "$1")" >&2
  return 1
}

start_tls_server() { # ADDR RECORD_FILE [tls_server.py args...]
  local addr=$1 record=$2; shift 2
  : > "$record"
  python3 "$FIXTURES/tls_server.py" --listen "$addr" --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
    --record "$record" "$@" > "$record.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$record.log"
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
  KLOAK_LOG=trace unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$conf" \
    timeout "${RUN_TIMEOUT:-120}" "$KLOAK" run --events "$WORK/$name.events" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"
  echo "ran $name in $((SECONDS - start))s"
}

events_have() { # NAME JQ-LIKE-SUBSTRING
  grep -q -- "$2" "$WORK/$1.events" 2>/dev/null
}

summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# Shared checks: they read SECRET, WORK and EXPECT (rewrite|observe).

# The standard policy: the secret may go to allowed.kloak.test:8443 only.
run_allowed() { # NAME CMD...
  local name=$1; shift
  : > "$WORK/a.rec"; : > "$WORK/b.rec"
  RESOLVER=127.0.0.53 kloak_run "$name" --secret "API_KEY=@$WORK/api_key" \
    --allow-host allowed.kloak.test --port 8443 --dns-server 127.0.0.53 -- "$@"
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
