#!/usr/bin/env bash
# Host scenario for `kloak doctor`: Python (shared libssl), Node.js (OpenSSL linked in) and a
# Go program run under one `kloak run`, each holding a live TLS connection it has used; the
# doctor, pointed at that instance's pins, must list each runtime as hooked, with pids,
# versions and files. With BUN=/path/to/bun a Bun process joins and must be listed as not
# hooked, with the reason. Then the instance's pins must be gone once the command exits.
#
# usage: doctor.sh   (root; build first: cargo build, scripts/build-test-clients.sh)
# Prints PASS/FAIL per check and ends with "N passed, N failed".
set -uo pipefail
E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
e2e_paths kloak-doctor
BENCH_CLIENTS=$ROOT/benches/runtimes
trap cleanup EXIT

for need in "$KLOAK" "$CLIENTS/runtime-goclient" "$CERTS/ca.pem"; do
  [ -e "$need" ] || { echo "missing $need: build it first"; echo "0 passed, 1 failed"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "the doctor scenario needs root"; echo "0 passed, 1 failed"; exit 1; }
export SSL_CERT_FILE=$CERTS/ca.pem
printf 'sk-doctor-0123456789abcdefXYZ' > "$WORK/key"
start_tls_server 127.0.0.1:9444 "$WORK/server.rec" || { summary; exit 1; }
url=https://127.0.0.1:9444/doctor

# Every client makes its requests, prints "ready" and holds on until killed; SIGTERM to
# kloak run ends the shell, and kloak then ends what is left in its cgroup.
workloads='python3 "$1/client.py" "$3" 2 --hold &
node "$1/client.js" "$3" 2 --hold &
"$2" "$3" 2 --hold &
[ -z "$4" ] || "$4" "$1/client.js" "$3" 2 --hold &
wait'
expected=3
[ -n "${BUN:-}" ] && expected=4
"$KLOAK" run --secret "BENCH=@$WORK/key" --allow-host 127.0.0.1 -- \
  sh -c "$workloads" sh "$BENCH_CLIENTS" "$CLIENTS/runtime-goclient" "$url" "${BUN:-}" \
  > "$WORK/run.out" 2> "$WORK/run.log" &
kloak_pid=$!
PIDS+=("$kloak_pid")
instance=/sys/fs/bpf/kloak/run-$kloak_pid

ready=0
for _ in $(seq 1 600); do # 60 s at most: node and the first exec of each binary are slow here
  ready=$(grep -c '^ready$' "$WORK/run.out" 2>/dev/null || true)
  [ "$ready" -ge "$expected" ] && break
  kill -0 "$kloak_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" -ge "$expected" ]; then
  pass "doctor: $expected clients made their requests under kloak run"
else
  fail doctor "only $ready of $expected clients ready: $(tail -5 "$WORK/run.out" "$WORK/run.log")"
fi

"$KLOAK" doctor --json --pin-dir "$instance" > "$WORK/doctor.json" 2> "$WORK/doctor.log"
"$KLOAK" doctor --pin-dir "$instance" > "$WORK/doctor.txt" 2>> "$WORK/doctor.log"
# One line per runtime: KIND PROGRAM HOOKED REASON, for the container this instance enables.
python3 - "$WORK/doctor.json" "run-$kloak_pid" > "$WORK/runtimes" <<'EOF' || fail doctor "no JSON report: $(head -c 300 "$WORK/doctor.log")"
import json, sys
report = json.load(open(sys.argv[1]))
for c in report["containers"]:
    if c["enabled_by"] == sys.argv[2]:
        for r in c["runtimes"]:
            print(r["kind"], ",".join(r["programs"]), r["hooked"], r["version"], r.get("reason", ""))
EOF
cat "$WORK/runtimes"
expect_runtime() { # NAME KIND PROGRAM-PATTERN HOOKED
  if grep -qE "^$2 $3 $4 " "$WORK/runtimes"; then pass "doctor: $1"
  else fail doctor "$1: no line '$2 $3 $4' in $(tr '\n' '|' < "$WORK/runtimes")"; fi
}
expect_runtime "Python's shared libssl is hooked" shared-libssl 'python3[.0-9]*' True
expect_runtime "Node.js's OpenSSL is hooked" static-openssl node True
expect_runtime "the Go client is hooked" go runtime-goclient True
[ -n "${BUN:-}" ] && expect_runtime "Bun is not hooked, with the reason" bun bun 'False [0-9.]+ Bun links BoringSSL'
grep -q "container /kloak-run-$kloak_pid " "$WORK/doctor.txt" && grep -q ' hooked$' "$WORK/doctor.txt" &&
  pass "doctor: the table lists the container and its hooked runtimes" ||
  fail doctor "table without the container: $(head -c 600 "$WORK/doctor.txt")"

kill -TERM "$kloak_pid"
for _ in $(seq 1 300); do kill -0 "$kloak_pid" 2>/dev/null || break; sleep 0.1; done
wait "$kloak_pid" 2>/dev/null
[ ! -e "$instance" ] && pass "doctor: the instance's pins are gone after the command exits" ||
  fail doctor "$instance still there after kloak run exited"
summary
