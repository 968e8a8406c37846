#!/usr/bin/env bash
# The client matrix: real clients of every runtime kloak must serve, under `kloak run`, against a TLS
# server that speaks HTTP/1.1 and HTTP/2 and a PostgreSQL server with TLS. Per client: the allowed host
# gets the real value, another host gets the placeholder, the events say so, and the client's own buffer
# holds the placeholder again after the write (S5) where the client lets us see it. HTTP/2 clients must
# also have negotiated h2 and Huffman-coded the header, so the Huffman path is what is proven.
#
# usage: matrix.sh --expect rewrite|observe
#   rewrite: allowed requests must carry the real value
#   observe: nothing may carry the real value; events say "rewrite_unavailable"
# Needs root. Build first: cargo build, and scripts/build-test-clients.sh (certificates, Python venv).
# Prints PASS/FAIL per check and ends with "N passed, N failed".
#
# kloak start is slow in a TCG guest (10-20 s), so there is one `kloak run` per runtime family, running
# that family's clients one after another; each client prints "client <name> pid <pid>" and sends to
# /<name>, which is how checks find its requests and events.
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
parse_expect "$@"
e2e_paths kloak-matrix
CLIENT_DIR=$E2E/clients
VENV=${KLOAK_CLIENT_VENV:-${KLOAK_CACHE:-/var/cache/kloak}/venv-clients}
trap cleanup EXIT

PG_PORT=15432  # not 5432: a distribution's own cluster may hold that one
PG_BIN=$(find /usr/lib/postgresql -path '*/bin/postgres' 2>/dev/null | sort -V | tail -1)
PG_BIN=${PG_BIN%/postgres}

# Every missing piece is one FAIL line (need, in lib.sh): this tier never passes by running less.
missing=0
[ "$(id -u)" -eq 0 ] || { fail prerequisites "the matrix needs root"; summary; exit 1; }
need "kloak binary $KLOAK (cargo build)" test -x "$KLOAK"
need "test certificates in $CERTS (scripts/build-test-clients.sh)" test -e "$CERTS/server.pem"
need "node (the machine's Node.js; not installed by scripts/install-deps.sh)" node --version
need "ruby (scripts/install-deps.sh)" ruby --version
need "curl with HTTP/2" sh -c 'curl --version | grep -q HTTP2'
need "psql (scripts/install-deps.sh)" psql --version
need "PostgreSQL server under /usr/lib/postgresql (scripts/install-deps.sh)" test -x "$PG_BIN/postgres"
need "the postgres user (created by Debian's postgresql package)" id postgres
need "Python client venv $VENV (scripts/client-venv.sh)" \
  "$VENV/bin/python" -c 'import requests, httpx, h2, openai, anthropic'
[ "$missing" -eq 0 ] || { summary; exit 1; }

export SSL_CERT_FILE=$CERTS/ca.pem CURL_CA_BUNDLE=$CERTS/ca.pem NODE_EXTRA_CA_CERTS=$CERTS/ca.pem
SECRET=sk-live-0123456789abcdefXYZ
printf '%s\n' "$SECRET" > "$WORK/api_key"
ALLOWED=https://allowed.kloak.test:8443
OTHER=https://other.kloak.test:8443

# start_postgres DIR: one server on 127.0.0.1 and 127.0.0.2, TLS only (the test certificate), trust
# authentication, data and log under DIR. Runs as the postgres user (it refuses root); the guest's / is
# read-only, so nothing outside DIR is written (no socket directory, no system cluster).
start_postgres() {
  local dir=$1 as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  rm -rf "$dir" && mkdir -p "$dir"
  chmod 0755 "$WORK"  # mktemp made it 0700; postgres must reach its own directory inside
  chown postgres: "$dir"
  timeout 600 "${as_pg[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 \
    --locale=C > "$dir/initdb.log" 2>&1 || { echo "initdb failed: $(tail -5 "$dir/initdb.log")" >&2; return 1; }
  install -o postgres -m 0600 "$CERTS/server.pem" "$dir/data/server.pem"
  install -o postgres -m 0600 "$CERTS/server.key" "$dir/data/server.key"
  echo 'hostssl all all 127.0.0.0/8 trust' > "$dir/data/pg_hba.conf"
  "${as_pg[@]}" "$PG_BIN/postgres" -D "$dir/data" -c listen_addresses=127.0.0.1,127.0.0.2 -c port=$PG_PORT \
    -c unix_socket_directories= -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key \
    -c fsync=off > "$dir/server.log" 2>&1 &
  PIDS+=($!)
  # "database system is ready to accept connections"; TCG needs far longer than a native start.
  wait_ready "$dir/server.log" 180
}

start_tls_server 127.0.0.1:8443 "$WORK/a.rec" --h2 || exit 1
start_tls_server 127.0.0.2:8443 "$WORK/b.rec" --h2 || exit 1
start_dns_server 127.0.0.53:53 "$WORK/dns.log" \
  --record allowed.kloak.test=127.0.0.1 --record other.kloak.test=127.0.0.2 || exit 1
start_postgres "$WORK/pg" || { fail postgres "the PostgreSQL server did not start"; summary; exit 1; }

# family NAME PORT CLIENT...: one `kloak run` for a runtime family, the secret allowed to
# allowed.kloak.test:PORT only. Each CLIENT is "label command args": run one after another, each with
# its output in $WORK/<label>.out and its exit code as that file's last line.
family() {
  local name=$1 port=$2 script=$WORK/$1.sh label; shift 2
  : > "$script"
  for client in "$@"; do
    label=${client%% *}
    printf '%s > %q 2>&1; echo "exit $?" >> %q\n' "${client#* }" "$WORK/$label.out" "$WORK/$label.out" \
      >> "$script"
  done
  RESOLVER=127.0.0.53 kloak_run "$name" --secret "API_KEY=@$WORK/api_key" \
    --allow-host allowed.kloak.test --port "$port" --dns-server 127.0.0.53 -- bash "$script"
}

# client_events FAMILY LABEL PEER TEXT: how many placeholders LABEL's process (as it announced itself in
# some output file) had events for, for PEER, whose line contains TEXT. Placeholders are told apart by
# their offset in the write, so a library that retries the same write is not counted twice.
client_events() {
  local pid
  pid=$(cat "$WORK"/*.out | sed -n "s/^client $2 pid \([0-9]*\)$/\1/p" | head -1)
  [ -n "$pid" ] || { echo 0; return; }
  grep -E "\"pid\":${pid}[,}]" "$WORK/$1.events" 2>/dev/null | grep -F "\"peer\":\"$3\"" | grep -F -- "$4" |
    grep -o '"offset":[0-9]*' | sort -u | wc -l
}

# what_got TEXT: a short description for FAIL lines.
what_got() { if [ -z "$1" ]; then echo "nothing"; else head -c 300 <<<"$1" | tr '\r\n' '  '; fi; }

# check_value FAMILY LABEL WHERE PEER N TEXT: TEXT is what the server at PEER got from LABEL, which sent
# N placeholders there. The allowed host must get the real value (rewrite) or the placeholder (observe),
# any other host the placeholder, and LABEL's events must say so once per placeholder: an HTTP/2 header
# the data plane did not recognise under its Huffman coding shows up as a missing event.
check_value() {
  local family=$1 label=$2 where=$3 peer=$4 want=$5 text=$6 event n
  if [ "$where" = allowed ] && [ "$EXPECT" = rewrite ]; then
    if grep -qF "$SECRET" <<<"$text" && ! grep -q 'kloak:' <<<"$text"; then
      pass "$label: allowed host received the real value"
    else fail "$label" "allowed host did not receive the real value: $(what_got "$text")"; fi
    event='"event":"rewritten"'
  else
    if grep -q 'kloak:' <<<"$text" && ! grep -qF "$SECRET" <<<"$text"; then
      pass "$label: $where host received the placeholder only"
    else fail "$label" "$where host did not receive the placeholder only: $(what_got "$text")"; fi
    event='"reason":"host_not_allowed"'
    [ "$where" = allowed ] && event='"reason":"rewrite_unavailable"'
  fi
  n=$(client_events "$family" "$label" "$peer" "$event")
  if [ "$n" -eq "$want" ]; then pass "$label: $where host: $event for each of its $n placeholders"
  else fail "$label" "$where host: $event events for $n placeholders to $peer from its process, expected $want"; fi
}

# check_http FAMILY LABEL [h2]: LABEL's requests to both servers, its S5 verdict, and for HTTP/2 clients
# the protocol and the Huffman coding the allowed request really used.
check_http() {
  local family=$1 label=$2 h2=${3:-} meta
  if ! grep -q "^client $label pid " "$WORK/$label.out" 2>/dev/null; then
    fail "$label" "the client did not start: $(tail -c 300 "$WORK/$label.out" 2>/dev/null)"
    return
  fi
  # Every client sends the placeholder twice per host: in the Authorization (or x-api-key) header and the body.
  check_value "$family" "$label" allowed 127.0.0.1:8443 2 "$(received_text "$WORK/a.rec" "/$label")"
  check_value "$family" "$label" other 127.0.0.2:8443 2 "$(received_text "$WORK/b.rec" "/$label")"
  case $label in
    curl-h2|python-openai|python-anthropic) ;;  # their buffers are their own: nothing of ours to check
    *) if grep -q "S5 VIOLATION" "$WORK/$label.out"; then fail "$label" "$(grep "S5 VIOLATION" "$WORK/$label.out")"
       else pass "$label: its buffer holds the placeholder after the write (S5)"; fi ;;
  esac
  if [ -n "$h2" ]; then
    meta=$(received_meta "$WORK/a.rec" "/$label")
    if [ -n "$meta" ] && ! grep -qv '^alpn=h2 huffman=.*authorization' <<<"$meta"; then
      pass "$label: HTTP/2 with a Huffman-coded authorization header"
    else fail "$label" "expected h2 and a Huffman-coded authorization header, got: $(what_got "$meta")"; fi
  fi
  grep -q '^exit 0$' "$WORK/$label.out" || echo "note: $label: $(grep -v '^client ' "$WORK/$label.out" | tail -3)"
}

# ---- HTTP clients, one kloak run per runtime -------------------------------------------------------------
ARGS="--allowed $ALLOWED --other $OTHER"
PY=$VENV/bin/python
# Under TCG every Python process spends seconds importing the SDKs.
RUN_TIMEOUT=900 family python 8443 \
  "python-urllib $PY $CLIENT_DIR/python.py --client urllib $ARGS" \
  "python-requests $PY $CLIENT_DIR/python.py --client requests $ARGS" \
  "python-httpx $PY $CLIENT_DIR/python.py --client httpx $ARGS" \
  "python-httpx-h2 $PY $CLIENT_DIR/python.py --client httpx-h2 $ARGS" \
  "python-openai $PY $CLIENT_DIR/python.py --client openai $ARGS" \
  "python-anthropic $PY $CLIENT_DIR/python.py --client anthropic $ARGS"
for label in python-urllib python-requests python-httpx python-openai python-anthropic; do
  check_http python "$label"
done
check_http python python-httpx-h2 h2

RUN_TIMEOUT=300 family node 8443 \
  "node-https node $CLIENT_DIR/node.js --client https $ARGS" \
  "node-fetch node $CLIENT_DIR/node.js --client fetch $ARGS" \
  "node-http2 node $CLIENT_DIR/node.js --client http2 $ARGS"
check_http node node-https
check_http node node-fetch
check_http node node-http2 h2

RUN_TIMEOUT=300 family ruby 8443 "ruby-net-http ruby $CLIENT_DIR/ruby.rb $ARGS"
check_http ruby ruby-net-http

family curl 8443 "curl-h2 $CLIENT_DIR/curl.sh $ARGS"
check_http curl curl-h2 h2

# ---- PostgreSQL over TLS: the server echoes the query's literal back -------------------------------------
family psql $PG_PORT "psql $CLIENT_DIR/psql.sh --allowed allowed.kloak.test --other 127.0.0.2 --port $PG_PORT"
got_allowed=$(sed -n 's/^psql-allowed //p' "$WORK/psql.out")
got_other=$(sed -n 's/^psql-other //p' "$WORK/psql.out")
if [ -z "$got_allowed$got_other" ]; then
  fail psql "no query answered: $(tail -c 300 "$WORK/psql.out")"
else
  check_value psql psql-allowed allowed "127.0.0.1:$PG_PORT" 1 "$got_allowed"
  check_value psql psql-other other "127.0.0.2:$PG_PORT" 1 "$got_other"
fi

# S7: the first 16 bytes of a placeholder (its lookup key) followed by other bytes: never modified, and
# no decision at all, in either mode.
family psql-prefix $PG_PORT "psql-prefix $CLIENT_DIR/psql.sh --prefix allowed.kloak.test --port $PG_PORT"
sent=$(sed -n 's/^psql-prefix sent //p' "$WORK/psql-prefix.out")
got=$(sed -n 's/^psql-prefix got //p' "$WORK/psql-prefix.out")
if [ -n "$sent" ] && [ "$sent" = "$got" ]; then pass "psql-prefix: partial placeholder came back unchanged (S7)"
else fail psql-prefix "sent '$sent', the server got '$got': $(tail -c 300 "$WORK/psql-prefix.out")"; fi
if grep -q '"event":"rewritten"\|"event":"blocked"' "$WORK/psql-prefix.events" 2>/dev/null; then
  fail psql-prefix "a decision was made on a partial placeholder: $(head -c 300 "$WORK/psql-prefix.events")"
else pass "psql-prefix: no decision event on a partial placeholder"; fi

# S1: kloak's own trace logs and events never carry the real value (the clients' outputs may: the
# PostgreSQL server echoes what it received).
if grep -lF "$SECRET" "$WORK"/*.log "$WORK"/*.events 2>/dev/null; then
  fail no-leak "the real value appears in the kloak logs or events above"
else pass "no-leak: real value absent from kloak's trace logs and events"; fi

summary
