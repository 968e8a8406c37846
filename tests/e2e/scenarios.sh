#!/usr/bin/env bash
# End-to-end scenarios for `kloak run`: real clients, a real TLS server, a real
# DNS server, the real data plane. Used by the host tier (this machine's kernel,
# where lockdown forbids rewriting) and by the VM tier (Debian kernels, where
# rewriting works).
#
# usage: scenarios.sh --expect rewrite|observe
#   rewrite: allowed requests must carry the real value
#   observe: nothing may carry the real value; events say "rewrite_unavailable"
# Needs root. Build first: cargo build, and scripts/build-test-clients.sh.
# Prints PASS/FAIL per check and ends with "N passed, N failed".
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
parse_expect "$@"
e2e_paths kloak-e2e
GOCLIENT=$CLIENTS/goclient
trap cleanup EXIT

for need in "$KLOAK" "$GOCLIENT" "$CERTS/server.pem"; do
  [ -e "$need" ] || { echo "missing $need: build it first"; echo "0 passed, 1 failed"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "scenarios need root"; echo "0 passed, 1 failed"; exit 1; }

export SSL_CERT_FILE=$CERTS/ca.pem CURL_CA_BUNDLE=$CERTS/ca.pem
SECRET=sk-live-0123456789abcdefXYZ
OTHER_SECRET=ghp_Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1
printf '%s\n' "$SECRET" > "$WORK/api_key"
printf '%s\n' "$OTHER_SECRET" > "$WORK/other_key"
AUTH='Authorization: Bearer $API_KEY'

start_tls_server 127.0.0.1:8443 "$WORK/a.rec" || exit 1
start_tls_server 127.0.0.2:8443 "$WORK/b.rec" || exit 1
start_dns_server 127.0.0.53:53 "$WORK/dns.log" \
  --record allowed.kloak.test=127.0.0.1 --record other.kloak.test=127.0.0.2 \
  --record short.kloak.test=127.0.0.1,1 --record zero.kloak.test=127.0.0.1,0 \
  --record api.wild.kloak.test=127.0.0.1 || exit 1
start_dns_server 127.0.0.54:53 "$WORK/evil-dns.log" --record allowed.kloak.test=127.0.0.2 || exit 1

# 1-3: each client, allowed host.
run_allowed curl sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_delivery curl "$WORK/a.rec"
run_allowed python python3 "$E2E/pyclient.py" --url https://allowed.kloak.test:8443/ \
  --header "$AUTH" --body 'token=$API_KEY'
check_delivery python "$WORK/a.rec"
# S5: pyclient exits 1 when the bytes object it sent lost the placeholder.
grep -q "S5 VIOLATION" "$WORK/python.log" "$WORK/python.out" && fail python "buffer kept the real value (S5)" \
  || pass "python: buffer holds the placeholder after the write (S5)"
run_allowed go "$GOCLIENT" -url https://allowed.kloak.test:8443/ -header "$AUTH"
check_delivery go "$WORK/a.rec"

# 3b: a TLS binary started later by the command is hooked before its first instruction.
run_allowed go-via-shell sh -c "echo starting; \"\$0\" -url https://allowed.kloak.test:8443/ -header '$AUTH'" "$GOCLIENT"
check_delivery go-via-shell "$WORK/a.rec"

# 3c: the first SSL_write runs the handshake itself; the placeholder still goes back (S5).
# The socket is confirmed by the handshake's own syscalls. When the handshake
# needs a second write call (the usual case) the retried write is rewritten;
# when it completes inside the first call, that write was scanned before any
# confirmation and fails closed (unverified_connection). Both are correct;
# anything else is not.
run_allowed lazy-handshake python3 "$E2E/pyclient.py" --raw allowed.kloak.test:8443 --lazy-handshake \
  --header "$AUTH" --body 'token=$API_KEY'
got=$(received "$WORK/a.rec")
if [ "$EXPECT" = observe ]; then
  check_delivery lazy-handshake "$WORK/a.rec"
elif grep -qF "$SECRET" <<<"$got" && ! grep -q 'kloak:' <<<"$got" && events_have lazy-handshake '"event":"rewritten"'; then
  pass "lazy-handshake: retried write rewritten"
elif grep -q 'kloak:' <<<"$got" && ! grep -qF "$SECRET" <<<"$got" \
    && events_have lazy-handshake '"reason":"unverified_connection"' && ! events_have lazy-handshake '"event":"rewritten"'; then
  pass "lazy-handshake: handshake done inside one write: placeholder kept, unverified_connection (fail closed)"
else
  fail lazy-handshake "neither a clean rewrite nor a clean fail-closed: $(head -c 300 <<<"$got")"
fi
grep -q "S5 VIOLATION" "$WORK/lazy-handshake.log" "$WORK/lazy-handshake.out" \
  && fail lazy-handshake "the buffer kept the real value (S5)" \
  || pass "lazy-handshake: buffer holds the placeholder after the write (S5)"

# 4: S2, a second connection from the same process to another address.
run_allowed second-conn "$GOCLIENT" -url https://allowed.kloak.test:8443/ -url https://127.0.0.2:8443/ -header "$AUTH"
check_delivery second-conn "$WORK/a.rec"
check_placeholder second-conn "$WORK/b.rec" host_not_allowed
run_allowed second-conn-curl sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/ --next -sS -m 10 -H \"$AUTH\" https://127.0.0.2:8443/"
check_placeholder second-conn-curl "$WORK/b.rec" host_not_allowed

# 5: S3, a forged DNS answer from an untrusted resolver points the allowed name at server B.
: > "$WORK/a.rec"; : > "$WORK/b.rec"
RESOLVER=127.0.0.54 kloak_run forged-dns --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --port 8443 --dns-server 127.0.0.53 -- \
  sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_placeholder forged-dns "$WORK/b.rec" host_not_allowed
events_have forged-dns '"reason":"dns_untrusted_source"' && pass "forged-dns: answer from untrusted resolver ignored" \
  || fail forged-dns "no dns_untrusted_source event"

# 5b: S3, a protected workload sending DNS answers itself: dropped before they leave.
# The same forge from outside kloak is the control: it must get through.
# The listener says when it is bound (Python starts slowly in a TCG guest) and
# counts until told to stop, so a slow kloak start cannot end the count early.
count_udp() { # FILE: packets received on 127.0.0.1:5355 until FILE.stop exists, written to FILE
  rm -f "$1.ready" "$1.stop"
  python3 -c 'import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5355))
open(sys.argv[1] + ".ready", "w").close()
s.settimeout(0.2)
n = 0
while not os.path.exists(sys.argv[1] + ".stop"):
    try:
        s.recv(4096)
        n += 1
    except socket.timeout:
        pass
print(n)' "$1" > "$1" &
  for _ in $(seq 1 600); do [ -e "$1.ready" ] && return; sleep 0.1; done
}
stop_count() { # FILE PID: lets late packets arrive, then stops count_udp's listener
  sleep 1; touch "$1.stop"; wait "$2"
}
forge=(python3 "$FIXTURES/dns_forge.py" --to 127.0.0.1:5355 --from 127.0.0.55 --from-port 53
  --name allowed.kloak.test --ip 127.0.0.2 --count 3)
count_udp "$WORK/control.count"; listener=$!
"${forge[@]}" > /dev/null
stop_count "$WORK/control.count" $listener
count_udp "$WORK/forged.count"; listener=$!
RESOLVER=127.0.0.53 kloak_run forged-by-workload --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --dns-server 127.0.0.53 -- "${forge[@]}"
stop_count "$WORK/forged.count" $listener
if [ "$(cat "$WORK/control.count")" = 3 ] && [ "$(cat "$WORK/forged.count")" = 0 ]; then
  pass "forged-by-workload: forged answers dropped (3 got through without kloak, 0 with)"
else
  fail forged-by-workload "without kloak $(cat "$WORK/control.count")/3, with kloak $(cat "$WORK/forged.count")/0"
fi
events_have forged-by-workload '"reason":"dns_forged_by_workload"' && pass "forged-by-workload: event says why" \
  || fail forged-by-workload "no dns_forged_by_workload event"

# 5c: S3, the allowed host's verified address reached under another TLS server name
# (a shared IP or CDN): the ClientHello must name the allowed host too.
run_allowed sni sh -c "curl -sS -m 10 -o /dev/null -H \"$AUTH\" https://allowed.kloak.test:8443/ \
  --next -sS -m 10 -o /dev/null --resolve other.kloak.test:8443:127.0.0.1 -H \"$AUTH\" https://other.kloak.test:8443/"
events_have sni '"reason":"server_name_mismatch"' && pass "sni: other server name on the allowed address refused" \
  || fail sni "no server_name_mismatch event: $(head -c 600 "$WORK/sni.events")"
[ "$(received "$WORK/a.rec" | grep -c 'kloak:')" -ge 1 ] && pass "sni: that request carried the placeholder" \
  || fail sni "the second request did not carry the placeholder"

# 6: port mismatch.
: > "$WORK/a.rec"
RESOLVER=127.0.0.53 kloak_run port --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --port 9443 --dns-server 127.0.0.53 -- \
  sh -c "curl -sS -m 10 -H \"$AUTH\" https://allowed.kloak.test:8443/"
check_placeholder port "$WORK/a.rec" port_mismatch

# 7: expired TTL (1 s, used after 2 s) and TTL 0 (never cached).
: > "$WORK/a.rec"
RESOLVER=127.0.0.53 kloak_run ttl --secret "API_KEY=@$WORK/api_key" \
  --allow-host short.kloak.test --dns-server 127.0.0.53 -- \
  python3 "$E2E/pyclient.py" --raw short.kloak.test:8443 --wait-after-resolve 2 --header "$AUTH"
check_placeholder ttl "$WORK/a.rec" dns_expired
: > "$WORK/a.rec"
RESOLVER=127.0.0.53 kloak_run ttl0 --secret "API_KEY=@$WORK/api_key" \
  --allow-host zero.kloak.test --dns-server 127.0.0.53 -- \
  sh -c "curl -sS -m 10 -H \"$AUTH\" https://zero.kloak.test:8443/"
check_placeholder ttl0 "$WORK/a.rec" host_not_allowed
events_have ttl0 '"reason":"dns_ttl_zero"' && pass "ttl0: TTL 0 answer not cached" || fail ttl0 "no dns_ttl_zero event"

# 8: a placeholder split across two writes.
run_allowed split python3 "$E2E/pyclient.py" --raw allowed.kloak.test:8443 --split --header "$AUTH"
check_placeholder split "$WORK/a.rec" split_placeholder

# 9: two secrets, one of them twice, in one 16 KiB write (wildcard policy).
: > "$WORK/a.rec"
PAD=$(head -c 15000 /dev/zero | tr '\0' 'x')
RESOLVER=127.0.0.53 kloak_run multi --secret "API_KEY=@$WORK/api_key" --secret "OTHER_KEY=@$WORK/other_key" \
  --allow-host '*.wild.kloak.test' --dns-server 127.0.0.53 -- \
  python3 "$E2E/pyclient.py" --url https://api.wild.kloak.test:8443/ \
  --body "a=\$API_KEY&pad=$PAD&b=\$OTHER_KEY&c=\$API_KEY"
got=$(received "$WORK/a.rec")
if [ "$EXPECT" = rewrite ]; then
  n=$(grep -oF "$SECRET" <<<"$got" | wc -l); m=$(grep -oF "$OTHER_SECRET" <<<"$got" | wc -l)
  [ "$n" -eq 2 ] && [ "$m" -eq 1 ] && ! grep -q 'kloak:' <<<"$got" && pass "multi: all three placeholders rewritten" \
    || fail multi "expected 2+1 real values, got $n+$m"
else
  [ "$(grep -o 'kloak:' <<<"$got" | wc -l)" -eq 3 ] && pass "multi: three placeholders seen, none rewritten" \
    || fail multi "expected three placeholders"
  [ "$(grep -c '"reason":"rewrite_unavailable"' "$WORK/multi.events")" -eq 3 ] && pass "multi: three decisions" \
    || fail multi "expected three rewrite_unavailable events"
fi

# 10: S7, the first 16 bytes of a placeholder followed by other bytes are never touched.
: > "$WORK/a.rec"
run_allowed prefix sh -c 'python3 "$0" --url https://allowed.kloak.test:8443/ --body "bin=$(printf %s "$API_KEY" | head -c 16)ZZZZZZZZZZZZZZZZZZZZZZZZ"' "$E2E/pyclient.py"
got=$(received "$WORK/a.rec")
if grep -q 'bin=kloak:.\{10\}ZZZZZZZZZZZZZZZZZZZZZZZZ' <<<"$got" && ! grep -qF "$SECRET" <<<"$got"; then
  pass "prefix: partial placeholder left untouched (S7)"
else fail prefix "partial placeholder was modified: $(head -c 300 <<<"$got")"; fi
grep -q '"event":"rewritten"\|"event":"blocked"' "$WORK/prefix.events" && fail prefix "a decision was made on a partial placeholder" \
  || pass "prefix: no decision on a partial placeholder"

# 11: S6, a process outside kloak run using a live placeholder gets nothing.
: > "$WORK/a.rec"
# The child holds its cgroup open until the outsider has used the placeholder, so the binding is live
# during the outside connection; both waits are generous because a TCG guest needs >10 s to load BPF.
RESOLVER=127.0.0.53 kloak_run outsider --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --dns-server 127.0.0.53 -- \
  sh -c 'printf %s "$API_KEY" > "$0.tmp" && mv "$0.tmp" "$0"
         i=0; while [ ! -e "$1" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done' \
  "$WORK/leaked" "$WORK/outsider.done" &
runner=$!
for _ in $(seq 1 1200); do [ -s "$WORK/leaked" ] && break; sleep 0.1; done
if [ -s "$WORK/leaked" ]; then
  curl -sS -m 10 -H "Authorization: Bearer $(cat "$WORK/leaked")" https://127.0.0.1:8443/ > /dev/null
  touch "$WORK/outsider.done"
  wait $runner
  got=$(received "$WORK/a.rec")
  grep -q 'kloak:' <<<"$got" && ! grep -qF "$SECRET" <<<"$got" && pass "outsider: placeholder only (S6)" \
    || fail outsider "an outside process got the secret"
else
  touch "$WORK/outsider.done"
  wait $runner
  fail outsider "the workload never handed out its placeholder"
fi

# 13: HTTP/2. Header values go out HPACK Huffman-coded, the placeholder at any bit
# offset: it must be rewritten bit for bit. curl sends Authorization never-indexed
# (Huffman every time) and x-api-key indexed: the second request on the connection
# names the server's table entry, which holds what the first request delivered.
start_tls_server 127.0.0.1:8444 "$WORK/h2a.rec" --h2 || exit 1
start_tls_server 127.0.0.2:8444 "$WORK/h2b.rec" --h2 || exit 1
# h2_requests FILE: one line per request: "alpn huffman-coded-header-names | decoded request"
h2_requests() { python3 -c '
import base64, json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    text = base64.b64decode(r["text_b64"]).decode("latin-1").replace("\r\n", " ")
    print(r.get("alpn"), ",".join(r.get("h2_huffman", [])), "|", text)' "$1"; }
: > "$WORK/h2a.rec"; : > "$WORK/h2b.rec"
RESOLVER=127.0.0.53 kloak_run h2 --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test --port 8444 --dns-server 127.0.0.53 -- \
  sh -c "partial=\$(printf %s \"\$API_KEY\" | head -c 16)ZZZZZZZZZZZZZZZZZZZZ
    curl -sS -m 20 --http2 -H \"$AUTH\" -H \"x-api-key: \$API_KEY\" -H \"x-partial: \$partial\" \
    https://allowed.kloak.test:8444/first https://allowed.kloak.test:8444/second \
    --next -sS -m 20 --http2 -H \"$AUTH\" https://127.0.0.2:8444/other"
first=$(h2_requests "$WORK/h2a.rec" | grep '/first ')
second=$(h2_requests "$WORK/h2a.rec" | grep '/second ')
grep -q '^h2 .*authorization.*x-api-key' <<<"$first" && pass "h2: HTTP/2, both headers Huffman-coded in the first request" \
  || fail h2 "first request not h2 with Huffman-coded headers: $(head -c 300 <<<"$first")"
grep -q '^h2 .*authorization' <<<"$second" && ! grep -q '^h2 [^|]*x-api-key' <<<"$second" \
  && pass "h2: second request re-sends authorization coded, x-api-key as an HPACK index" \
  || fail h2 "second request not coded as expected: $(head -c 300 <<<"$second")"
if [ "$EXPECT" = rewrite ]; then
  for req in "$first" "$second"; do
    # x-partial keeps its partial placeholder (checked below); the two real headers must not.
    [ "$(grep -oF "$SECRET" <<<"$req" | wc -l)" -eq 2 ] && ! grep -q 'authorization: Bearer kloak:\|x-api-key: kloak:' <<<"$req" \
      && pass "h2: server decoded the real value in both headers ($(grep -o '/first\|/second' <<<"$req" | head -1))" \
      || fail h2 "server did not decode the real value: $(head -c 400 <<<"$req")"
  done
  [ "$(grep -c '"encoding":"hpack_huffman","event":"rewritten"' "$WORK/h2.events")" -eq 3 ] \
    && pass "h2: three Huffman-coded placeholders rewritten (events)" \
    || fail h2 "expected 3 hpack_huffman rewrites: $(grep -c '"encoding":"hpack_huffman","event":"rewritten"' "$WORK/h2.events")"
else
  grep -q 'kloak:' <<<"$first" && ! grep -qF "$SECRET" <<<"$first" && pass "h2: placeholder only (observe)" \
    || fail h2 "expected the placeholder: $(head -c 300 <<<"$first")"
  grep -q '"reason":"rewrite_unavailable".*"encoding":"hpack_huffman"\|"encoding":"hpack_huffman".*"reason":"rewrite_unavailable"' "$WORK/h2.events" \
    && pass "h2: Huffman-coded placeholder found, rewrite_unavailable" || fail h2 "no hpack_huffman rewrite_unavailable event"
fi
# S7 for Huffman-coded text: the first 16 characters of a placeholder followed by others are
# left exactly as sent and get no decision (4 decisions: 3 placeholders here, 1 to the other host).
grep -q 'x-partial: kloak:.\{10\}ZZZZZZZZZZZZZZZZZZZZ' <<<"$first" && pass "h2: partial placeholder left untouched (S7)" \
  || fail h2 "partial placeholder modified: $(grep -o 'x-partial: [^ ]*' <<<"$first")"
[ "$(grep -c '"encoding":"hpack_huffman"' "$WORK/h2.events")" -eq 4 ] && pass "h2: no decision on the partial placeholder" \
  || fail h2 "expected 4 Huffman decisions, got $(grep -c '"encoding":"hpack_huffman"' "$WORK/h2.events")"
other=$(h2_requests "$WORK/h2b.rec")
grep -q 'kloak:' <<<"$other" && ! grep -qF "$SECRET" <<<"$other" && pass "h2: another host gets the placeholder" \
  || fail h2 "other host: $(head -c 300 <<<"$other")"
grep -q '"reason":"host_not_allowed".*"encoding":"hpack_huffman"\|"encoding":"hpack_huffman".*"reason":"host_not_allowed"' "$WORK/h2.events" \
  && pass "h2: event host_not_allowed for the Huffman-coded placeholder" || fail h2 "no hpack_huffman host_not_allowed event"

# 11b: never silent. A TLS stack kloak cannot hook (rustls: kloak's own binary is a rustls program)
# is named in a warning with its file, stack and reason, at the command's start and at a later exec.
run_allowed unhooked sh -c '"$0" --version; echo done' "$KLOAK"
warned=$(grep -a 'WARN' "$WORK/unhooked.log" | grep -a 'NOT HOOKED' | grep -a 'rustls')
if grep -qF "$(basename "$KLOAK") uses rustls (" <<<"$warned" && grep -q 'cannot hook' <<<"$warned"; then
  pass "unhooked: rustls named in a warning (file, stack, reason)"
else
  fail unhooked "no warning naming the rustls program: $(grep -a 'NOT HOOKED\|no TLS' "$WORK/unhooked.log" | tail -2)"
fi

# 12: S1, the real value never appears in any log line (trace level), event or output.
if grep -rlF "$SECRET" "$WORK"/*.log "$WORK"/*.out "$WORK"/*.events 2>/dev/null; then
  fail no-leak "the real value appears in the files above"
else pass "no-leak: real value absent from trace logs, events and outputs"; fi
grep -q 'kloak=trace\|TRACE' "$WORK/curl.log" && pass "no-leak: trace logging was on" || fail no-leak "trace logs missing"

summary
