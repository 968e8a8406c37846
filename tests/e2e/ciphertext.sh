#!/usr/bin/env bash
# End-to-end scenarios for the ciphertext strategy: kloak patches the AES-GCM ciphertext and tag of the
# TLS records on the wire (tc), so no process's memory ever holds the real value, and keeps each patch
# until the data is acknowledged, so retransmitted segments are patched again. Real clients, a real TLS
# server (on loopback, and in a network namespace behind a veth pair), a real DNS server, and forced
# loss from kloak-drop-first (this kernel has no netem).
#
# usage: ciphertext.sh
#   No --expect: the strategy writes no user memory, so rewrites are expected on every kernel.
# Needs root. Build first: cargo build, and scripts/build-test-clients.sh.
# Prints PASS/FAIL per check and ends with "N passed, N failed"; exits nonzero when any failed.
#
# a. curl over loopback (TLS 1.3), then a host that is not allowed; a2. the same choice made by
# --strategy auto; b. Python, with its memory scanned from outside after sending; c. TLS 1.2, and both
# AES-GCM key sizes; d. ChaCha20-Poly1305 (fail closed); d2. an HPACK Huffman-coded header (fail
# closed); e. forced loss on loopback; f. a and e over a veth pair into a network namespace; g. Go: TLS
# 1.3 rewritten, a host that is not allowed gets the placeholder, TLS 1.2 fails closed (its keys are not
# linked to a connection); i. a client in a network namespace kloak patches nowhere (fail closed, and no
# event claims a rewrite); j. a layer-3 link (tun, framed like WireGuard: no Ethernet header); k. the
# secret rotated (kloak run re-reads it on SIGHUP) while records bound to the old value are in flight.
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
[ $# -eq 0 ] || { echo "usage: $0 (no arguments: the ciphertext strategy always rewrites)" >&2; exit 2; }
EXPECT=rewrite  # what check_delivery demands
e2e_paths kloak-ct
GOCLIENT=$CLIENTS/goclient
# The network namespace of scenario f, its veth pair and addresses (a /30 no test network uses).
NS=kloakct NS_HOST_IF=kct0 NS_IF=kct1 NS_HOST_ADDR=10.231.0.1/30 NS_ADDR=10.231.0.2
# g: Go's TLS 1.3 write keys are captured (bpf/gotls.bpf.h), so Go rewrites; its TLS 1.2 keys are not
# linked to a connection, so a Go TLS 1.2 client must fail closed.
# j: a layer-3 link into another namespace, two tun devices joined by tests/fixtures/tun_pair.py.
TUN_NS=kloaktun TUN_HOST_IF=ktun0 TUN_NS_IF=ktun1 TUN_HOST_ADDR=10.232.0.1 TUN_NS_ADDR=10.232.0.2
# i: the server and resolver on the host end of f's veth pair, which a client inside $NS reaches.
HOST_END_ADDR=${NS_HOST_ADDR%/*}
trap 'cleanup; netns_down "$NS" "$NS_HOST_IF"; ip netns del "$TUN_NS" 2>/dev/null' EXIT

missing=0
[ "$(id -u)" -eq 0 ] || { fail prerequisites "the ciphertext scenarios need root"; summary; exit 1; }
need "kloak binary $KLOAK (cargo build)" test -x "$KLOAK"
need "kloak run --strategy (the ciphertext strategy)" sh -c '"$0" run --help | grep -q -- --strategy' "$KLOAK"
need "segment dropper $DROPPER (cargo build --examples)" test -x "$DROPPER"
need "Go client $GOCLIENT (scripts/build-test-clients.sh)" test -x "$GOCLIENT"
need "test certificates in $CERTS (scripts/build-test-clients.sh)" test -e "$CERTS/server.pem"
need "curl" curl --version
need "network namespaces (ip netns)" ip netns list
[ -c /dev/net/tun ] || modprobe tun 2>/dev/null  # a guest's devtmpfs has the node once the module is in
need "tun devices (/dev/net/tun)" test -c /dev/net/tun
[ "$missing" -eq 0 ] || { summary; exit 1; }

export SSL_CERT_FILE=$CERTS/ca.pem CURL_CA_BUNDLE=$CERTS/ca.pem
SECRET=sk-live-0123456789abcdefXYZ
printf '%s\n' "$SECRET" > "$WORK/api_key"
AUTH='Authorization: Bearer $API_KEY'
STRATEGY=ciphertext  # every kloak run below, unless a scenario says otherwise (run_allowed reads it)

setup_failed() { fail setup "$1"; summary; exit 1; }
# Before kloak starts: it attaches to the interfaces that hold an address when it starts.
netns_up "$NS" "$NS_HOST_IF" "$NS_IF" "$NS_HOST_ADDR" "$NS_ADDR/30" || setup_failed "network namespace $NS"
start_tls_server 127.0.0.1:8443 "$WORK/a.rec" || setup_failed "TLS server on 127.0.0.1"
start_tls_server 127.0.0.2:8443 "$WORK/b.rec" || setup_failed "TLS server on 127.0.0.2"
NETNS=$NS start_tls_server "$NS_ADDR:8443" "$WORK/ns.rec" || setup_failed "TLS server in $NS"
start_dns_server 127.0.0.53:53 "$WORK/dns.log" \
  --record allowed.kloak.test=127.0.0.1 --record other.kloak.test=127.0.0.2 || setup_failed "DNS server"
# f's resolver: the allowed name is the server in the namespace.
start_dns_server 127.0.0.55:53 "$WORK/ns-dns.log" \
  --record allowed.kloak.test="$NS_ADDR" --record other.kloak.test=127.0.0.2 || setup_failed "DNS server for $NS"
start_tls_server "$HOST_END_ADDR:8443" "$WORK/host.rec" || setup_failed "TLS server on $HOST_END_ADDR"
start_dns_server "$HOST_END_ADDR:53" "$WORK/host-dns.log" \
  --record allowed.kloak.test="$HOST_END_ADDR" || setup_failed "DNS server on $HOST_END_ADDR"
ip netns del "$TUN_NS" 2>/dev/null
ip netns add "$TUN_NS" || setup_failed "network namespace $TUN_NS"
python3 "$FIXTURES/tun_pair.py" "$TUN_HOST_IF" "$TUN_HOST_ADDR/30" "$TUN_NS" "$TUN_NS_IF" "$TUN_NS_ADDR/30" \
  > "$WORK/tun.log" 2>&1 &
PIDS+=($!)
wait_ready "$WORK/tun.log" || setup_failed "tun pair into $TUN_NS"
NETNS=$TUN_NS start_tls_server "$TUN_NS_ADDR:8443" "$WORK/tun.rec" || setup_failed "TLS server in $TUN_NS"
start_dns_server 127.0.0.56:53 "$WORK/tun-dns.log" \
  --record allowed.kloak.test="$TUN_NS_ADDR" || setup_failed "DNS server for $TUN_NS"

# check_ciphertext NAME PEER: NAME's placeholders to PEER were rewritten, all of them by the ciphertext
# strategy (none in place).
check_ciphertext() {
  local name=$1 peer=$2 ct other
  ct=$(events_count "$name" event=rewritten strategy=ciphertext "peer=$peer")
  other=$(events_count "$name" event=rewritten strategy!=ciphertext)
  if [ "$ct" -ge 1 ] && [ "$other" -eq 0 ]; then
    pass "$name: rewritten by the ciphertext strategy ($ct to $peer)"
  else
    fail "$name" "expected ciphertext rewrites to $peer only, got $ct, and $other by another strategy:" \
      "$(head -c 600 "$WORK/$name.events" 2>/dev/null)"
  fi
}

# check_sessions NAME RECORD "VERSION CIPHER CARRIED"...: the server's requests, in order, negotiated
# those sessions and carried that value (see received_sessions).
check_sessions() {
  local name=$1 record=$2 got i=0; shift 2
  got=$(received_sessions "$record")
  for want in "$@"; do
    i=$((i + 1))
    if [ "$(sed -n "${i}p" <<<"$got")" = "$want" ]; then pass "$name: request $i: $want"
    else fail "$name" "request $i: expected \"$want\", got \"$(sed -n "${i}p" <<<"$got")\""; fi
  done
}

# ---- a. curl over loopback: HTTP/1.1, TLS 1.3, AES-GCM ------------------------------------------------
run_allowed curl sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 -H \"$AUTH\" https://other.kloak.test:8443/"
check_delivery curl "$WORK/a.rec"
check_ciphertext curl 127.0.0.1:8443
check_placeholder curl "$WORK/b.rec" host_not_allowed

# a2. auto picks the ciphertext strategy for an AES-GCM session.
STRATEGY=auto run_allowed auto sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_delivery auto "$WORK/a.rec"
check_ciphertext auto 127.0.0.1:8443

# ---- b. Python (SSL_write_ex), and its memory read from outside -----------------------------------------
# The client waits after its requests (--hold-file) while its whole readable memory is searched. The
# control first: without kloak, a client given the real value must be seen holding it.
hold=$WORK/hold
rm -f "$hold"
API_KEY=$SECRET python3 "$E2E/pyclient.py" --url https://127.0.0.1:8443/ --header "$AUTH" \
  --hold-file "$hold" > "$WORK/memscan-control.txt" 2>&1 &
client=$!
if wait_for_text "$hold" sent 30 "$client"; then
  n=$(memory_count "$(awk '{print $2}' "$hold")" "$WORK/api_key")
  if [ "${n:-0}" -ge 1 ]; then pass "memscan: finds a value the client holds ($n copies; control, no kloak)"
  else fail memscan "the control client holds the value, the scan found ${n:-nothing}"; fi
else
  fail memscan "the control client never finished sending: $(tail -c 300 "$WORK/memscan-control.txt")"
fi
rm -f "$hold"
wait "$client"

run_allowed python python3 "$E2E/pyclient.py" --url https://allowed.kloak.test:8443/ \
  --url https://other.kloak.test:8443/ --header "$AUTH" --body 'token=$API_KEY' --hold-file "$hold" &
runner=$!
if wait_for_text "$hold" sent "${RUN_TIMEOUT:-120}" "$runner"; then
  pid=$(awk '{print $2}' "$hold")
  # The placeholder the client was given, from its environment: what the scan must find.
  tr '\0' '\n' < "/proc/$pid/environ" | sed -n 's/^API_KEY=//p' > "$WORK/python.placeholder"
  placeholders=$(memory_count "$pid" "$WORK/python.placeholder")
  real=$(memory_count "$pid" "$WORK/api_key")
  if ! grep -q '^kloak:' "$WORK/python.placeholder"; then
    fail python "API_KEY in the client's environment is not a placeholder"
  elif [ "${placeholders:-0}" -ge 1 ]; then
    pass "python: memory scan sees the placeholder ($placeholders copies: the scan works)"
  else
    fail python "memory scan did not find the placeholder (${placeholders:-scan failed})"
  fi
  if [ "$real" = 0 ]; then pass "python: the real value is nowhere in the client's memory"
  else fail python "the real value is in the client's memory (${real:-scan failed} copies)"; fi
else
  fail python "the client never finished sending: $(tail -c 300 "$WORK/python.log" 2>/dev/null)"
fi
rm -f "$hold"
wait "$runner"
check_delivery python "$WORK/a.rec"
check_ciphertext python 127.0.0.1:8443
check_placeholder python "$WORK/b.rec" host_not_allowed
grep -q "S5 VIOLATION" "$WORK/python.log" "$WORK/python.out" \
  && fail python "the request bytes lost the placeholder (S5)" || pass "python: the request bytes still hold the placeholder (S5)"

# ---- c. TLS 1.2 (an explicit nonce before each record's ciphertext), both AES-GCM key sizes ------------
# The third connection covers AES-128-GCM under TLS 1.3 (the default there is AES-256-GCM).
run_allowed tls12 sh -c "curl -sS -m 10 --tlsv1.2 --tls-max 1.2 --ciphers ECDHE-ECDSA-AES128-GCM-SHA256 \
    -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 --tlsv1.2 --tls-max 1.2 --ciphers ECDHE-ECDSA-AES256-GCM-SHA384 \
    -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 --tls13-ciphers TLS_AES_128_GCM_SHA256 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_sessions tls12 "$WORK/a.rec" "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256 real" \
  "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 real" "TLSv1.3 TLS_AES_128_GCM_SHA256 real"
check_ciphertext tls12 127.0.0.1:8443

# ---- d. ChaCha20-Poly1305: not patchable, so the placeholder goes out and the event says why ----------
run_allowed chacha sh -c "curl -sS -m 10 --tls13-ciphers TLS_CHACHA20_POLY1305_SHA256 \
    -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 --tlsv1.2 --tls-max 1.2 --ciphers ECDHE-ECDSA-CHACHA20-POLY1305 \
    -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_sessions chacha "$WORK/a.rec" "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 placeholder" \
  "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305 placeholder"
check_placeholder chacha "$WORK/a.rec" cipher_unsupported
[ "$(events_count chacha event=rewritten)" -eq 0 ] && pass "chacha: no rewritten event" \
  || fail chacha "a rewritten event for a ChaCha20 session: $(head -c 600 "$WORK/chacha.events")"

# ---- d2. HTTP/2: a Huffman-coded header holds the placeholder at a bit offset, which no byte XOR of a
# fixed function of the secret reaches: the placeholder goes out, the event says encoding_unsupported.
start_tls_server 127.0.0.1:8444 "$WORK/h2.rec" --h2 || setup_failed "HTTP/2 TLS server"
RESOLVER=127.0.0.53 kloak_run h2 --secret "API_KEY=@$WORK/api_key" --allow-host allowed.kloak.test \
  --port 8444 --dns-server 127.0.0.53 --strategy ciphertext -- \
  sh -c "curl -sS -m 10 --http2 -H \"$AUTH\" https://allowed.kloak.test:8444/h2"
got=$(received_text "$WORK/h2.rec")
if grep -q 'authorization: Bearer kloak:' <<<"$got" && ! grep -qF "$SECRET" <<<"$got"; then
  pass "h2: the server decoded the placeholder only"
else fail h2 "expected the placeholder in the decoded authorization header: $(head -c 300 <<<"$got")"; fi
events_have h2 '"reason":"encoding_unsupported"' && pass "h2: event reason encoding_unsupported" \
  || fail h2 "no event with reason encoding_unsupported: $(head -c 600 "$WORK/h2.events")"
[ "$(events_count h2 event=rewritten)" -eq 0 ] && pass "h2: no rewritten event" \
  || fail h2 "a rewritten event for a Huffman-coded header: $(head -c 600 "$WORK/h2.events")"

# ---- e. Forced loss on loopback ---------------------------------------------------------------------
# On lo a packet passes egress (kloak patches it) and then ingress, where the dropper drops the first
# copy of each TLS record's segment. The retransmission comes from the socket's queue, which holds the
# client's own ciphertext (the placeholder): kloak must patch it again.
BIG=$WORK/big-request.sh
cat > "$BIG" <<'EOF'
#!/bin/sh
# big-request.sh URL BODY_FILE: POSTs several KiB holding the placeholder twice, and once in a header.
printf 'a=%s&pad=%s&b=%s' "$API_KEY" "$(head -c 6000 /dev/zero | tr '\0' x)" "$API_KEY" > "$2" &&
  exec curl -sS -m 60 -H "Authorization: Bearer $API_KEY" -H 'Expect:' --data-binary "@$2" "$1"
EOF
chmod +x "$BIG"
BODY="a=$SECRET&pad=$(head -c 6000 /dev/zero | tr '\0' x)&b=$SECRET"

# check_lossy NAME RECORD PEER: after run_allowed_lossy, the server at PEER got the whole request with the
# real value in all three places, by ciphertext rewrites, though segments were lost and retransmitted.
check_lossy() {
  local name=$1 record=$2 peer=$3 got
  got=$(received "$record")
  if grep -qF "Authorization: Bearer $SECRET" <<<"$got" && grep -qxF "$BODY" <<<"$got" \
      && ! grep -q 'kloak:' <<<"$got"; then
    pass "$name: the server got the whole request, the real value in the header and twice in the body"
  else
    fail "$name" "request incomplete or not rewritten: $(received_sessions "$record" | tr '\n' ' ')" \
      "$(head -c 300 <<<"$got")"
  fi
  check_ciphertext "$name" "$peer"
  if [ "${LOSS_BY:-dropper}" != dropper ]; then :
  elif [ "${DROPPED:-0}" -ge 1 ]; then pass "$name: the dropper dropped $DROPPED first copies"
  else
    fail "$name" "the dropper dropped nothing: $(cat "$WORK/$name.drop" 2>/dev/null);" \
      "filters in the order they run: $(cat "$WORK/$name.filters" 2>/dev/null)"
  fi
  if [ "$RETRANS" -ge 1 ]; then pass "$name: TcpRetransSegs rose by $RETRANS"
  else fail "$name" "no TCP retransmission counted"; fi
}

run_allowed_lossy loss lo "$BIG" https://allowed.kloak.test:8443/ "$WORK/loss.body"
check_lossy loss "$WORK/a.rec" 127.0.0.1:8443

# ---- f. a and e over a veth pair into a network namespace -----------------------------------------------
# kloak patches on kct0's egress (the host side). The dropper sits on kct1's ingress inside the namespace:
# strictly after everything on the host side, whatever the priorities or kinds of kloak's filters, and in
# a chain kloak has no filter in.
: > "$WORK/ns.rec"
DNS=127.0.0.55 run_allowed veth sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 -H \"$AUTH\" https://other.kloak.test:8443/"
check_delivery veth "$WORK/ns.rec"
check_ciphertext veth "$NS_ADDR:8443"
check_placeholder veth "$WORK/b.rec" host_not_allowed

: > "$WORK/ns.rec"
DNS=127.0.0.55 NETNS=$NS run_allowed_lossy veth-loss "$NS_IF" "$BIG" https://allowed.kloak.test:8443/ \
  "$WORK/veth-loss.body"
check_lossy veth-loss "$WORK/ns.rec" "$NS_ADDR:8443"

# ---- h. Random loss from netem (the VM tier's kernels have it; this host's does not) --------------------
# netem is kct0's root qdisc: it drops after kloak's clsact egress filter has patched, so every loss is
# a patched segment whose retransmission (from the socket's queue, placeholder inside) is patched again.
# Random loss can spare a whole connection (veth sends the request as one GSO packet, so a run is only
# about eight packets: 0.7^8 is 6%), so the run is repeated, on a fresh record, until something was lost.
if tc qdisc add dev "$NS_HOST_IF" root netem loss 30% 2>"$WORK/netem.err"; then
  RETRANS=0
  for attempt in 1 2 3 4 5; do
    : > "$WORK/ns.rec"
    before=$(tcp_retrans_segs)
    DNS=127.0.0.55 run_allowed netem "$BIG" https://allowed.kloak.test:8443/ "$WORK/netem.body"
    RETRANS=$(($(tcp_retrans_segs) - before))
    [ "$RETRANS" -ge 1 ] && break
    echo "netem: attempt $attempt lost nothing; again"
  done
  tc qdisc del dev "$NS_HOST_IF" root
  LOSS_BY=netem check_lossy netem "$WORK/ns.rec" "$NS_ADDR:8443"
elif [ "${KLOAK_VM:-}" = 1 ]; then
  fail netem "the VM kernel has no netem: $(cat "$WORK/netem.err")"
else
  echo "SKIP netem: not on this kernel ($(head -c 200 "$WORK/netem.err")); kloak-drop-first covered loss above"
fi

# ---- g. Go: TLS 1.3 keys captured, so rewritten; TLS 1.2 keys not, so fail closed ------------------------
run_allowed go "$GOCLIENT" -url https://allowed.kloak.test:8443/ -header "$AUTH"
check_delivery go "$WORK/a.rec"
check_ciphertext go 127.0.0.1:8443
# A second Go connection, to a host that is not allowed, in the same process: the placeholder (S2).
run_allowed go-denied "$GOCLIENT" -url https://allowed.kloak.test:8443/ -url https://other.kloak.test:8443/ \
  -header "$AUTH"
check_delivery go-denied "$WORK/a.rec"
check_placeholder go-denied "$WORK/b.rec" host_not_allowed
run_allowed go-tls12 "$GOCLIENT" -tls12 -url https://allowed.kloak.test:8443/ -header "$AUTH"
check_placeholder go-tls12 "$WORK/a.rec" cipher_state_unknown
[ "$(events_count go-tls12 event=rewritten)" -eq 0 ] && pass "go-tls12: no rewritten event" \
  || fail go-tls12 "a rewritten event without the session's keys: $(head -c 600 "$WORK/go-tls12.events")"

# ---- i. A client in a network namespace kloak patches nowhere ------------------------------------------
# kloak run wires the host's interfaces for the host's namespace. A client that enters $NS sends its
# records out of $NS_IF and into the host through the ingress of $NS_HOST_IF: no filter of kloak's ever
# sees them, so they must leave as written (the placeholder), and no event may claim a rewrite.
DNS=$HOST_END_ADDR run_allowed unwired ip netns exec "$NS" sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_placeholder unwired "$WORK/host.rec" wire_unavailable
[ "$(events_count unwired event=rewritten)" -eq 0 ] && pass "unwired: no rewritten event" \
  || fail unwired "a rewritten event for records no filter patches: $(head -c 600 "$WORK/unwired.events")"

# ---- j. A layer-3 link (tun, framed like WireGuard): the IP header comes first -------------------------
DNS=127.0.0.56 run_allowed tun sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_delivery tun "$WORK/tun.rec"
check_ciphertext tun "$TUN_NS_ADDR:8443"

# ---- k. A rotation while records are in flight ---------------------------------------------------------
# The dropper holds the first request's records on the wire (every copy dropped) while the secret's file
# changes and kloak run re-reads it (SIGHUP); then the retransmissions pass. Their tag difference was
# computed for the old value when they were bound, so they must carry the old value, or the server
# rejects them. A request made after the rotation carries the new value.
ROTATED=sk-live-9876543210fedcbaXYZ  # the length of $SECRET: the placeholder the client holds stays valid
printf '%s\n' "$SECRET" > "$WORK/rotating_key"
rm -f "$WORK/rot.first" "$WORK/rot.first.started" "$WORK/rot.second" "$WORK/rot.release" "$WORK/rotation.events"
: > "$WORK/a.rec"
RESOLVER=127.0.0.53 kloak_run rotation --secret "API_KEY=@$WORK/rotating_key" --allow-host allowed.kloak.test \
  --port 8443 --dns-server 127.0.0.53 --strategy ciphertext -- sh -c '
    echo ready > "$0.started"
    while [ ! -e "$0" ]; do sleep 0.05; done
    curl -sS -m 30 -H "Authorization: Bearer $API_KEY" https://allowed.kloak.test:8443/first
    while [ ! -e "$1" ]; do sleep 0.05; done
    curl -sS -m 30 -H "Authorization: Bearer $API_KEY" https://allowed.kloak.test:8443/second' \
  "$WORK/rot.first" "$WORK/rot.second" &
runner=$!
rotated=no
if wait_for_text "$WORK/rot.first.started" ready 60 "$runner"; then
  # kloak itself, not the timeout or shells around it: timeout would pass SIGHUP to the whole group.
  kloak_pid=$(pgrep -f -- "^$KLOAK run --events $WORK/rotation.events")
  "$DROPPER" --dev lo --direction ingress --port 8443 --hold-until "$WORK/rot.release" > "$WORK/rotation.drop" 2>&1 &
  dropper=$!
  PIDS+=("$dropper")
  if wait_ready "$WORK/rotation.drop"; then
    touch "$WORK/rot.first"
    if wait_for_text "$WORK/rotation.events" '"event":"rewritten"' 30 "$runner"; then
      printf '%s\n' "$ROTATED" > "$WORK/rotating_key"
      kill -HUP "$kloak_pid" && wait_for_text "$WORK/rotation.log" "secrets reloaded" 10 && rotated=yes
    fi
  fi
  # The client makes its second request only once the first one is answered.
  touch "$WORK/rot.release" "$WORK/rot.second"
  wait "$runner"
  kill -TERM "$dropper" 2>/dev/null; wait "$dropper" 2>/dev/null
else
  touch "$WORK/rot.first" "$WORK/rot.second" "$WORK/rot.release"
  wait "$runner"
fi
held=$(sed -n 's/^dropped=\([0-9]*\) .*/\1/p' "$WORK/rotation.drop")
if [ "$rotated" = yes ] && [ "${held:-0}" -ge 1 ]; then
  pass "rotation: the secret was replaced while $held copies of bound records were held on the wire"
else
  fail rotation "the rotation did not happen while records were held (rotated=$rotated, held=${held:-none}):" \
    "$(tail -c 400 "$WORK/rotation.log")"
fi
first=$(received_text "$WORK/a.rec" /first)
second=$(received_text "$WORK/a.rec" /second)
if grep -qF "Bearer $SECRET" <<<"$first"; then
  pass "rotation: records bound before the rotation arrived whole, with the value they were bound to"
else
  fail rotation "the request in flight during the rotation did not arrive intact: $(head -c 300 <<<"$first");" \
    "client: $(head -c 300 "$WORK/rotation.out"); server: $(tail -c 300 "$WORK/a.rec.log")"
fi
if grep -qF "Bearer $ROTATED" <<<"$second"; then
  pass "rotation: a request after the rotation carries the new value"
else
  fail rotation "the request after the rotation did not carry the new value: $(head -c 300 <<<"$second")"
fi

# S1: the real value never appears in kloak's trace logs, its events, or the clients' outputs.
if grep -lF -e "$SECRET" -e "$ROTATED" "$WORK"/*.log "$WORK"/*.events "$WORK"/*.out "$WORK"/*.drop 2>/dev/null; then
  fail no-leak "the real value appears in the files above"
else pass "no-leak: real value absent from trace logs, events and outputs"; fi

summary
