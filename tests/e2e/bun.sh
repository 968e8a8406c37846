#!/usr/bin/env bash
# End-to-end scenario for Bun (BoringSSL linked statically, symbols stripped:
# kloak locates SSL_write and SSL_do_handshake by their structure). A Bun
# client fetches the allowed host and then another address from one process.
#
# usage: bun.sh --expect rewrite|observe
#   rewrite: the allowed request carries the real value
#   observe: nothing carries the real value; events say "rewrite_unavailable"
# Needs root, cargo build, scripts/build-test-clients.sh and scripts/fetch-bun.sh
# (BUN names the executable; default: the newest cached baseline build, which
# also runs on qemu's TCG CPUs). Prints PASS/FAIL per check and ends with
# "N passed, N failed".
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
parse_expect "$@"
e2e_paths kloak-e2e-bun
BUN=${BUN:-${KLOAK_CACHE:-/var/cache/kloak}/bun/1.4.5/x64-baseline/bun}
trap cleanup EXIT

for need in "$KLOAK" "$CERTS/server.pem" "$BUN"; do
  [ -e "$need" ] || { echo "missing $need: build it first (Bun: scripts/fetch-bun.sh)"; echo "0 passed, 1 failed"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "scenarios need root"; echo "0 passed, 1 failed"; exit 1; }

# Bun trusts the system store plus NODE_EXTRA_CA_CERTS; its own cache and
# temporary files stay out of the read-only root of the VM.
export NODE_EXTRA_CA_CERTS=$CERTS/ca.pem BUN_INSTALL_CACHE_DIR=$WORK/bun-cache TMPDIR=$WORK
SECRET=sk-live-0123456789abcdefXYZ
printf '%s\n' "$SECRET" > "$WORK/api_key"
# A CPU without the features the build needs (qemu's default model) fails here, loudly.
version=$("$BUN" --version 2>&1) || { echo "$BUN does not run here: $version"; echo "0 passed, 1 failed"; exit 1; }
echo "bun $version ($BUN)"

start_tls_server 127.0.0.1:8443 "$WORK/a.rec" || exit 1
start_tls_server 127.0.0.2:8443 "$WORK/b.rec" || exit 1
start_dns_server 127.0.0.53:53 "$WORK/dns.log" --record allowed.kloak.test=127.0.0.1 || exit 1

# One process, two connections: the allowed host gets the real value (or the
# placeholder and why, in observe mode); the other address gets the
# placeholder (S2: attribution by the connection's own socket).
run_allowed bun "$BUN" "$E2E/clients/bun_client.js" \
  https://allowed.kloak.test:8443/bun https://127.0.0.2:8443/bun
grep -q "TLS target hooked.*$(basename "$BUN")" "$WORK/bun.log" \
  && pass "bun: SSL_write and SSL_do_handshake hooked without symbols" \
  || fail bun "not hooked: $(grep -i 'bun' "$WORK/bun.log" | head -c 600)"
grep -q '^https://127.0.0.2:8443/bun 200' "$WORK/bun.out" && pass "bun: both requests answered" \
  || fail bun "client did not finish: $(head -c 600 "$WORK/bun.out") $(tail -c 600 "$WORK/bun.log")"
check_delivery bun "$WORK/a.rec"
check_placeholder bun "$WORK/b.rec" host_not_allowed

summary
