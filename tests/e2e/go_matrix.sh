#!/usr/bin/env bash
# Go clients of every build kind under `kloak run`: Debian bookworm's Go 1.19, trixie's newest Go and the current Go release, each
# as a default executable and as PIE, with and without symbols (target/e2e/go/*/goclient, built by
# scripts/build-test-clients.sh). All run under ONE `kloak run` (starting kloak is slow in a TCG guest).
# Each binary makes two connections from one process: to the allowed host (the real value must arrive
# when the kernel can rewrite, the placeholder otherwise) and to a non-allowed address (always the
# placeholder, S2). Then Go's default HTTP/2 client (ALPN h2) sends the header twice on one connection:
# Huffman-coded the first time, an HPACK index the second. With --expect rewrite, each rewrite must come
# from the expected strategy: the ciphertext one for Go's AES-GCM sessions (unless KLOAK_STRATEGY says
# in-place), in place for the Huffman-coded header.
#
# usage: go_matrix.sh --expect rewrite|observe
# Needs root. Prints PASS/FAIL per check and ends with "N passed, N failed".
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
parse_expect "$@"
e2e_paths kloak-e2e
GOCLIENT=$CLIENTS/goclient
trap cleanup EXIT

shopt -s nullglob
builds=("$CLIENTS"/go/*/goclient)
shopt -u nullglob
for need in "$KLOAK" "$GOCLIENT" "$CERTS/server.pem"; do
  [ -e "$need" ] || { echo "missing $need: build it first"; echo "0 passed, 1 failed"; exit 1; }
done
# Three toolchains x {exe, pie} x {plain, stripped}: fewer means a toolchain is missing, not a smaller test.
if [ ${#builds[@]} -ne 12 ]; then
  echo "expected 12 Go builds in $CLIENTS/go, found ${#builds[@]}: run scripts/build-test-clients.sh"
  echo "0 passed, 1 failed"; exit 1
fi
[ "$(id -u)" -eq 0 ] || { echo "go_matrix needs root"; echo "0 passed, 1 failed"; exit 1; }

export SSL_CERT_FILE=$CERTS/ca.pem
SECRET=sk-live-0123456789abcdefXYZ
printf '%s\n' "$SECRET" > "$WORK/api_key"
AUTH='Authorization: Bearer $API_KEY'

# The allowed server also offers h2; the HTTP/1.1 clients do not ask for it.
start_tls_server 127.0.0.1:8443 "$WORK/a.rec" --h2 || exit 1
start_tls_server 127.0.0.2:8443 "$WORK/b.rec" || exit 1
start_dns_server 127.0.0.53:53 "$WORK/dns.log" --record allowed.kloak.test=127.0.0.1 || exit 1

# Each client's pid goes to a file with its variant name, so events (which carry the pid) and records
# (which carry the request path) can be told apart per build.
: > "$WORK/pids"
# shellcheck disable=SC2016  # expanded by the inner shell and by goclient
loop='pids=$1 auth=$2 h2client=$3; shift 3
for client; do
  v=$(basename "$(dirname "$client")")
  "$client" -url "https://allowed.kloak.test:8443/$v" -url "https://127.0.0.2:8443/$v" -header "$auth" &
  echo "$! $v" >> "$pids"
  wait $! || echo "$v: client failed"
done
"$h2client" -h2 -repeat 2 -url https://allowed.kloak.test:8443/h2 -header "$auth" &
echo "$! h2" >> "$pids"
wait $! || echo "h2: client failed"'
RUN_TIMEOUT=600 RESOLVER=127.0.0.53 kloak_run matrix --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --port 8443 --dns-server 127.0.0.53 -- \
  bash -c "$loop" loop "$WORK/pids" "$AUTH" "$GOCLIENT" "${builds[@]}"

# facts_of VARIANT: one line of KEY=VALUE facts about what the servers received for the request path
# /VARIANT and which decisions the events file holds for that variant's pid, by peer.
facts_of() {
  python3 - "$1" "$SECRET" "$WORK/pids" "$WORK/matrix.events" "$WORK/a.rec" "$WORK/b.rec" <<'PY'
import base64, json, sys
variant, secret, pids, events, *records = sys.argv[1:]
secret = secret.encode()
pid = next((int(p) for p, v in (l.split() for l in open(pids)) if v == variant), None)

def path_of(text):
    first = text.split(b"\r\n", 1)[0].split(b" ")
    if len(first) == 3 and first[2].startswith(b"HTTP/1"):
        return first[1].decode("latin-1")
    for line in text.split(b"\r\n"):
        if line.startswith(b":path: "):
            return line[7:].decode("latin-1")
    return None

def got(texts):
    real = any(secret in t for t in texts)
    held = any(b"kloak:" in t for t in texts)
    return "none" if not texts else "mixed" if real and held else "real" if real else \
        "placeholder" if held else "neither"

facts = {}
for name, rec in zip("ab", records):
    recs = [json.loads(l) for l in open(rec) if l.strip()]
    recs = [r for r in recs if path_of(base64.b64decode(r["text_b64"])) == "/" + variant]
    facts[name] = got([base64.b64decode(r["text_b64"]) for r in recs])
    facts[name + "_requests"] = len(recs)
    facts[name + "_conns"] = len({r["conn"] for r in recs})
    facts[name + "_alpn"] = ",".join(sorted({str(r["alpn"]) for r in recs})) or "none"
# Decisions of this pid: on the allowed connection (peer 127.0.0.1:8443) and on any other one, whose
# reported peers are listed separately.
seen = {"a": [], "b": []}
b_peers = set()
strategies = set()
for line in open(events) if pid else []:
    e = json.loads(line)
    if e.get("pid") != pid or e["event"] not in ("rewritten", "blocked"):
        continue
    side = "a" if e.get("peer") == "127.0.0.1:8443" else "b"
    seen[side].append(e["event"] if e["event"] == "rewritten" else e.get("reason", "?"))
    if e["event"] == "rewritten":
        strategies.add(str(e.get("strategy")))
    if side == "b":
        b_peers.add(str(e.get("peer")))
for side in "ab":
    facts[side + "_events"] = ",".join(seen[side]) or "none"
facts["b_peers"] = ",".join(sorted(b_peers)) or "none"
facts["strategy"] = ",".join(sorted(strategies)) or "none"
print(" ".join("%s=%s" % kv for kv in facts.items()))
PY
}

fact() { # FACTS KEY
  tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"
}

b_peers=""
want_a=placeholder want_a_event=rewrite_unavailable
[ "$EXPECT" = rewrite ] && want_a=real want_a_event=rewritten
# Which strategy rewrites: Go's TLS 1.3 AES-GCM sessions go through the ciphertext unless kloak is told
# in-place; HPACK Huffman-coded headers (h2) can only be rewritten in place.
want_strategy=ciphertext
[ "${KLOAK_STRATEGY:-auto}" = in-place ] && want_strategy=in_place
# check_strategy NAME FACTS WANT: when the allowed write was rewritten, by the strategy WANT.
check_strategy() {
  [ "$EXPECT" = rewrite ] || return 0
  [ "$(fact "$2" strategy)" = "$3" ] && pass "$1: rewritten by the $3 strategy" \
    || fail "$1" "rewritten by: $(fact "$2" strategy), want $3"
}
for build in "${builds[@]}"; do
  v=$(basename "$(dirname "$build")")
  facts=$(facts_of "$v")
  echo "$v: $facts"
  a=$(fact "$facts" a); b=$(fact "$facts" b)
  [ "$a" = "$want_a" ] && pass "$v: allowed host got the $want_a" || fail "$v" "allowed host got: $a"
  [ "$b" = placeholder ] && pass "$v: other host got the placeholder (S2)" || fail "$v" "other host got: $b"
  # Every write was decided, so the binary was hooked; a refused file would leave no event at all.
  [ "$(fact "$facts" a_events)" = "$want_a_event" ] && pass "$v: allowed write $want_a_event" \
    || fail "$v" "allowed host events: $(fact "$facts" a_events), want $want_a_event"
  [ "$(fact "$facts" b_events)" = host_not_allowed ] && pass "$v: other write host_not_allowed" \
    || fail "$v" "other host events: $(fact "$facts" b_events), want host_not_allowed"
  check_strategy "$v" "$facts" "$want_strategy"
  b_peers+=" $(fact "$facts" b_peers)"
done
# Events say which peer was refused (one check for all builds: it is the same code path).
if [ "$(tr ' ' '\n' <<<"$b_peers" | sort -u | grep -v '^$')" = 127.0.0.2:8443 ]; then
  pass "events: every refused write names its peer 127.0.0.2:8443"
else fail events "refused writes named peers:$b_peers (want 127.0.0.2:8443 each)"; fi

# HTTP/2: two requests, one connection, ALPN h2. Go's HPACK encoder indexes the header, so only the
# first write carries the (Huffman-coded) value and the second refers to the server's dynamic table:
# one decision, and both decoded requests carry what that first write delivered.
facts=$(facts_of h2)
echo "h2: $facts"
if [ "$(fact "$facts" a_requests)" = 2 ] && [ "$(fact "$facts" a_conns)" = 1 ] && [ "$(fact "$facts" a_alpn)" = h2 ]; then
  pass "h2: two requests on one HTTP/2 connection (ALPN h2)"
else fail h2 "want 2 requests on 1 h2 connection: $facts"; fi
# What kloak said about the h2 client's file (hooked or not, and why), for a failure's message.
h2_hooking=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/matrix.log" | grep -v ' TRACE ' | grep -F "$GOCLIENT" | cut -c1-300 | head -5)
[ "$(fact "$facts" a)" = "$want_a" ] && pass "h2: allowed host got the $want_a" \
  || fail h2 "allowed host got: $(fact "$facts" a), want $want_a (HPACK-coded headers); kloak on $GOCLIENT: ${h2_hooking:-nothing}"
[ "$(fact "$facts" a_events)" = "$want_a_event" ] && pass "h2: the write carrying the value: $want_a_event" \
  || fail h2 "events: $(fact "$facts" a_events), want $want_a_event once"
check_strategy h2 "$facts" in_place

grep -q 'client failed' "$WORK/matrix.out" && fail clients "$(grep 'client failed' "$WORK/matrix.out" | tr '\n' ' ')" \
  || pass "clients: every request answered"
# S1: the real value never appears in any log line (trace level), event or output.
if grep -rlF "$SECRET" "$WORK"/*.log "$WORK"/*.out "$WORK"/*.events 2>/dev/null; then
  fail no-leak "the real value appears in the files above"
else pass "no-leak: real value absent from trace logs, events and outputs"; fi

summary
