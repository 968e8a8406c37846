#!/usr/bin/env bash
# Smoke scenario for the test fixtures alone (no kloak): a DNS server and two TLS servers, then curl, the
# Python client and the Go client (default and PIE builds) each send an Authorization header, resolving the
# names through the test DNS server, and the servers must record exactly that. If this fails, the problem
# is the harness or the fixtures, not kloak.
#
# usage: tests/vm/smoke.sh                       (host; needs root for the namespaces)
#        scripts/vm.sh --kernel trixie -- tests/vm/smoke.sh
# Needs scripts/build-fixture-clients.sh to have been run (Go client and certificates in target/test-clients).
# Single-quoted '$API_KEY' below is on purpose: the clients expand it from their environment, as a
# workload would send a placeholder it read from its environment.
# shellcheck disable=SC2016
set -euo pipefail
# shellcheck source=tests/vm/lib.sh
. "$(cd "$(dirname "$0")" && pwd -P)/lib.sh"

# Private network namespace: the fixed addresses below cannot collide with other tests on the host.
isolate_network "$@"

DNS_IP=127.0.0.53
PORT=8443
SECRET=test-value-123456
export API_KEY=$SECRET  # the clients read it from the environment, as a workload reads its placeholder
export SSL_CERT_FILE=$TEST_CLIENTS/certs/ca.pem CURL_CA_BUNDLE=$TEST_CLIENTS/certs/ca.pem
A=$WORK/allowed.rec
B=$WORK/other.rec

for f in "$TEST_CLIENTS/goclient" "$TEST_CLIENTS/goclient-pie" "$SSL_CERT_FILE"; do
  [ -e "$f" ] || { fail setup "missing $f (run scripts/build-fixture-clients.sh)"; finish; }
done
echo "smoke: kernel $(uname -r), work in $WORK"

start_dns_server "$DNS_IP:53" allowed.kloak.test=127.0.0.1 other.kloak.test=127.0.0.2,30 ||
  { fail dns-server "not ready"; finish; }
start_tls_server "127.0.0.1:$PORT" "$A" --h2 || { fail tls-server-allowed "not ready"; finish; }
start_tls_server "127.0.0.2:$PORT" "$B" || { fail tls-server-other "not ready"; finish; }

# The resolver itself: names resolve through the test DNS server only (getent uses glibc like curl does).
check resolve-allowed with_resolver "$DNS_IP" -- sh -c \
  'getent ahostsv4 allowed.kloak.test | grep -q "^127\.0\.0\.1 "'
check resolve-other with_resolver "$DNS_IP" -- sh -c 'getent ahostsv4 other.kloak.test | grep -q "^127\.0\.0\.2 "'
check resolve-unknown-fails with_resolver "$DNS_IP" -- sh -c '! getent ahostsv4 nope.kloak.test'

# curl (OpenSSL, SSL_write), HTTP/1.1 and HTTP/2.
check curl with_resolver "$DNS_IP" -- sh -c \
  'curl -sS -m 20 --http1.1 -H "Authorization: Bearer $API_KEY" -H "X-Client: [curl]" https://allowed.kloak.test:'"$PORT"'/curl'
check curl-h2 with_resolver "$DNS_IP" -- sh -c \
  'curl -sS -m 20 --http2 -H "Authorization: Bearer $API_KEY" -H "X-Client: [curl-h2]" https://allowed.kloak.test:'"$PORT"'/curl-h2'
# Python (OpenSSL, SSL_write_ex), with a second connection to the other host.
check python with_resolver "$DNS_IP" -- "$PYTHON" "$CLIENTS_SRC/python_client.py" \
  --url "https://allowed.kloak.test:$PORT/python" --header 'Authorization: Bearer $API_KEY' \
  --header 'X-Client: [python]' --body 'body=$API_KEY' --second-url "https://other.kloak.test:$PORT/python-second"
# Go (crypto/tls), both build modes, second connection to the other host.
for go in goclient goclient-pie; do
  check "$go" with_resolver "$DNS_IP" -- "$TEST_CLIENTS/$go" -url "https://allowed.kloak.test:$PORT/$go" \
    -header 'Authorization: Bearer $API_KEY' -header "X-Client: [$go]" -urls "https://other.kloak.test:$PORT/$go-second"
done
check goclient-h2 with_resolver "$DNS_IP" -- "$TEST_CLIENTS/goclient" -h2 \
  -url "https://allowed.kloak.test:$PORT/goclient-h2" -header 'Authorization: Bearer $API_KEY' -header "X-Client: [goclient-h2]"

# What the servers recorded: every client's header reached the host it resolved to, with the right SNI.
for c in curl curl-h2 python goclient goclient-pie goclient-h2; do
  assert_received -i "$A" "X-Client: [$c]" "allowed got $c"
done
assert_received "$A" "Authorization: Bearer $SECRET" "allowed got the value (HTTP/1.1)"
assert_received "$A" "authorization: Bearer $SECRET" "allowed got the value (HTTP/2, HPACK decoded)"
assert_received "$A" "body=$SECRET" "allowed got the python body"
for c in python goclient goclient-pie; do
  assert_received "$B" "/$c-second" "other got $c's second connection"
done
assert_not_received -i "$B" "X-Client: [curl" "other got nothing from curl"
check sni-recorded grep -q '"sni": "allowed.kloak.test"' "$A"
check h2-recorded grep -q '"alpn": "h2"' "$A"
# HTTP/2 header values arrive Huffman-coded: the secret must not be visible as ASCII in the raw h2 bytes.
check h2-value-huffman-coded "$PYTHON" -c '
import base64, json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
h2 = [r for r in recs if r.get("alpn") == "h2"]
assert h2 and all("authorization" in r["h2_huffman"] for r in h2), "no Huffman-coded authorization"
assert not any(sys.argv[2].encode() in base64.b64decode(r["data_b64"]) for r in h2), "secret in ASCII"
' "$A" "$SECRET"
# DNS: the clients asked the test server (a query log line per lookup).
check dns-queried grep -q 'allowed.kloak.test A NOERROR' "$WORK/dns-$DNS_IP:53.log"

finish
