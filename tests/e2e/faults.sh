#!/usr/bin/env bash
# Fault injection for `kloak run`: what happens to the command when kloak itself fails.
#
# usage: faults.sh
# Needs root. Build first: cargo build, and scripts/build-test-clients.sh (certificates).
# Prints PASS/FAIL per check and ends with "N passed, N failed"; exits nonzero when any failed.
#
# a. kloak run killed (kill -9) while a process of its command is stopped at exec: the guard resumes it
#    within 2 s, then removes the filters, pins, cgroup and placeholder files kloak run left;
# b. 1,000 short-lived processes exec'ing a hooked binary (the Go client): every one runs, its file is
#    held once;
# c. kloak run killed while records bound by the ciphertext strategy are in flight (held on the wire by
#    the dropper): the guard keeps the filters until they are acknowledged, so the retransmissions still
#    carry the real value and the server gets a whole request; then the filters go.
# d. a full ring buffer: kloak run frozen while its command floods decisions, then execs a file kloak has
#    never seen: the kernel cannot queue the hold, so the process is not stopped (it runs unhooked and its
#    placeholder leaves unchanged: fail closed); once kloak run thaws, rewrites go on, and kloak run says
#    that events were lost.
# (A rotation with records in flight is ciphertext.sh's scenario k.)
set -uo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$E2E/lib.sh"
[ $# -eq 0 ] || { echo "usage: $0" >&2; exit 2; }
e2e_paths kloak-faults
GOCLIENT=$CLIENTS/goclient
trap cleanup EXIT

missing=0
[ "$(id -u)" -eq 0 ] || { fail prerequisites "the fault scenarios need root"; summary; exit 1; }
need "kloak binary $KLOAK (cargo build)" test -x "$KLOAK"
need "curl" curl --version
need "tc (iproute2)" tc -V
need "segment dropper $DROPPER (cargo build)" test -x "$DROPPER"
need "Go client $GOCLIENT (scripts/build-test-clients.sh)" test -x "$GOCLIENT"
need "test certificates in $CERTS (scripts/build-test-clients.sh)" test -e "$CERTS/server.pem"
[ "$missing" -eq 0 ] || { summary; exit 1; }
export SSL_CERT_FILE=$CERTS/ca.pem CURL_CA_BUNDLE=$CERTS/ca.pem

SECRET=sk-live-0123456789abcdefXYZ
printf '%s\n' "$SECRET" > "$WORK/api_key"
start_dns_server 127.0.0.53:53 "$WORK/dns.log" --record allowed.kloak.test=127.0.0.1 \
  || { fail setup "DNS server"; summary; exit 1; }
start_tls_server 127.0.0.1:8443 "$WORK/a.rec" || { fail setup "TLS server"; summary; exit 1; }

# state_of PID: the process's state letter (T: stopped), or "gone".
state_of() { awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo gone; }

# ---- a. kill -9 while a process is held at exec -------------------------------------------------------
# kloak run is frozen (SIGSTOP) so it cannot answer the hold, the command execs curl, which the kernel
# stops at its first instruction; then kloak run is killed. Nobody but the guard can resume curl.
rm -f "$WORK/held.gate" "$WORK/held.gate.started" "$WORK/held.events"
RESOLVER=127.0.0.53 kloak_run held --secret "API_KEY=@$WORK/api_key" --allow-host allowed.kloak.test -- \
  sh -c 'echo $$ > "$0.pid"; echo ready > "$0.started"
    while [ ! -e "$0" ]; do sleep 0.05; done
    exec curl --version' "$WORK/held.gate" &
runner=$!
if wait_for_text "$WORK/held.gate.started" ready 60 "$runner"; then
  kloak_pid=$(pgrep -f -- "^$KLOAK run --events $WORK/held.events")
  workload=$(cat "$WORK/held.gate.pid")
  handle=$(printf '0x%x' $((0x6b000000 | (kloak_pid & 0xffffff))))
  kill -STOP "$kloak_pid"
  touch "$WORK/held.gate"
  for _ in $(seq 100); do [ "$(state_of "$workload")" = T ] && break; sleep 0.1; done
  if [ "$(state_of "$workload")" = T ]; then
    pass "held: the command's exec of curl is stopped while kloak run cannot answer"
  else
    fail held "the exec was never held (state $(state_of "$workload"))"
  fi
  kill -KILL "$kloak_pid"
  start=$(date +%s%N)
  while [ "$(state_of "$workload")" = T ] && [ $(($(date +%s%N) - start)) -lt 10000000000 ]; do sleep 0.02; done
  waited_ms=$((($(date +%s%N) - start) / 1000000))
  if [ "$(state_of "$workload")" != T ] && [ "$waited_ms" -le 2000 ]; then
    pass "held: resumed ${waited_ms} ms after kloak run was killed"
  else
    fail held "still stopped ${waited_ms} ms after kloak run was killed (state $(state_of "$workload"))"
  fi
  wait "$runner"
  for _ in $(seq 50); do grep -q '^curl ' "$WORK/held.out" && break; sleep 0.1; done
  grep -q '^curl ' "$WORK/held.out" && pass "held: curl ran to its end" \
    || fail held "curl did not run to its end: $(head -c 200 "$WORK/held.out")"
  # The guard removes the rest once no record is in flight and the command has exited.
  cgroup_dir=$(find /sys/fs/cgroup -maxdepth 2 -name "kloak-run-$kloak_pid" 2>/dev/null)
  pins=/sys/fs/bpf/kloak/run-$kloak_pid
  for _ in $(seq 150); do
    left=
    [ -e "$pins" ] && left+=" pins"
    [ -n "$cgroup_dir" ] && [ -e "$cgroup_dir" ] && left+=" cgroup"
    [ -e "/run/kloak/run-$kloak_pid" ] && left+=" placeholder-files"
    tc filter show dev lo ingress 2>/dev/null | grep -q "handle $handle " && left+=" filters"
    tc filter show dev lo egress 2>/dev/null | grep -q "handle $handle " && left+=" filters"
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -z "$left" ]; then pass "held: the guard removed the filters, pins, cgroup and placeholder files"
  else fail held "left behind:$left; $(grep -a 'guard\|died\|leftovers' "$WORK/held.log" | tail -3)"; fi
  grep -q "kloak run died without cleaning up" "$WORK/held.log" && pass "held: the guard said what happened" \
    || fail held "no line from the guard in kloak run's log"
else
  fail held "the command never started: $(tail -c 400 "$WORK/held.log")"
  touch "$WORK/held.gate"
  wait "$runner"
fi

# ---- b. 1,000 short-lived processes exec'ing a hooked binary -------------------------------------------
# The Go test client (a Go TLS target: kloak hooks the executable itself) exits at once without a URL.
# Two loops of 500 run side by side. Its file is inspected at its first exec; later execs are not held.
rm -f "$WORK/execs.events"
start=$SECONDS
RUN_TIMEOUT=900 RESOLVER=127.0.0.53 kloak_run execs --secret "API_KEY=@$WORK/api_key" \
  --allow-host allowed.kloak.test -- sh -c '
    loop() { i=0; while [ $i -lt 500 ]; do "$0" || exit 1; i=$((i + 1)); done; echo "execs=$i"; }
    loop & loop; wait' "$GOCLIENT"
took=$((SECONDS - start))
if [ "$(grep -c '^execs=500$' "$WORK/execs.out")" -eq 2 ]; then
  pass "execs: 1,000 execs of the Go client all ran (${took} s)"
else
  fail execs "the loops did not finish: $(tail -c 300 "$WORK/execs.out") $(tail -c 300 "$WORK/execs.log")"
fi
holds=$(events_count execs event=exec_held comm=goclient)
hooked=$(grep -c 'TLS target hooked' "$WORK/execs.log")
# Each loop's first exec may come before the file is recorded as inspected: at most two holds.
if [ "$holds" -le 2 ] && [ "$hooked" -ge 1 ]; then
  pass "execs: the hooked Go client was held $holds time(s) (each loop's first exec at most), not once per exec"
else fail execs "the Go client was held $holds times (hooked: $hooked)"; fi

# ---- c. kill -9 with records in flight -----------------------------------------------------------------
rm -f "$WORK/flight.gate" "$WORK/flight.gate.started" "$WORK/flight.events" "$WORK/flight.release"
: > "$WORK/a.rec"
RESOLVER=127.0.0.53 kloak_run flight --secret "API_KEY=@$WORK/api_key" --allow-host allowed.kloak.test \
  --port 8443 --dns-server 127.0.0.53 --strategy ciphertext -- sh -c '
    echo ready > "$0.started"; while [ ! -e "$0" ]; do sleep 0.05; done
    exec curl -sS -m 60 -H "Authorization: Bearer $API_KEY" https://allowed.kloak.test:8443/flight' \
  "$WORK/flight.gate" &
runner=$!
if wait_for_text "$WORK/flight.gate.started" ready 60 "$runner"; then
  kloak_pid=$(pgrep -f -- "^$KLOAK run --events $WORK/flight.events")
  handle=$(printf '0x%x' $((0x6b000000 | (kloak_pid & 0xffffff))))
  "$DROPPER" --dev lo --direction ingress --port 8443 --hold-until "$WORK/flight.release" \
    > "$WORK/flight.drop" 2>&1 &
  dropper=$!
  PIDS+=("$dropper")
  wait_ready "$WORK/flight.drop" || fail flight "the dropper did not start: $(cat "$WORK/flight.drop")"
  touch "$WORK/flight.gate"
  if wait_for_text "$WORK/flight.events" '"event":"rewritten"' 30 "$runner"; then
    kill -KILL "$kloak_pid"
    sleep 2  # the guard is draining now: its filters must still be there
    if tc filter show dev lo egress 2>/dev/null | grep -q "handle $handle "; then
      pass "flight: the guard keeps the filters while a record is unacknowledged"
    else
      fail flight "the filters went while a bound record was in flight"
    fi
  else
    fail flight "no record was bound: $(tail -c 300 "$WORK/flight.log")"
  fi
  touch "$WORK/flight.release"
  wait "$runner"
  for _ in $(seq 100); do tc filter show dev lo egress 2>/dev/null | grep -q "handle $handle " || break; sleep 0.1; done
  # curl outlived kloak run (its runner returned at the kill): the server's record comes when curl's
  # request has arrived and been read, which may be after the guard saw the acknowledgement.
  for _ in $(seq 300); do
    got=$(received_text "$WORK/a.rec" /flight)
    [ -n "$got" ] && break
    sleep 0.1
  done
  kill -TERM "$dropper" 2>/dev/null; wait "$dropper" 2>/dev/null
  if grep -qF "Bearer $SECRET" <<<"$got"; then
    pass "flight: the record in flight when kloak run died reached the server whole, with the real value"
  else
    fail flight "the request in flight did not arrive with the real value: $(head -c 300 <<<"$got");" \
      "$(grep -a 'guard\|records still' "$WORK/flight.log" | tail -2)"
  fi
  tc filter show dev lo egress 2>/dev/null | grep -q "handle $handle " \
    && fail flight "the guard left the filters after the record was acknowledged" \
    || pass "flight: the filters went once the record was acknowledged"
else
  fail flight "the command never started: $(tail -c 400 "$WORK/flight.log")"
  touch "$WORK/flight.gate" "$WORK/flight.release"
  wait "$runner"
fi

# ---- d. a full ring buffer -----------------------------------------------------------------------------
# Everything the command runs after the freeze is started before it (a first exec would be held, and a
# frozen kloak run cannot answer), except the fresh copy of the Go client, which is the point.
rm -f "$WORK/ring.gate" "$WORK/ring.gate.started" "$WORK/ring.events" "$WORK/ring.go" "$WORK/ring.after"
: > "$WORK/a.rec"
cp "$GOCLIENT" "$WORK/goclient-fresh"
cat > "$WORK/flood.py" <<'PY'
import os, socket, ssl, subprocess, sys, time, urllib.request
gate, fresh, writes = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.check_hostname = False
# An address, not the allowed name: every write is a decision (host not verified), nothing is rewritten.
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="allowed.kloak.test")
chunk = ("x=" + os.environ["API_KEY"] + "\n").encode()
open(gate + ".started", "w").write("ready\n")
while not os.path.exists(gate):
    time.sleep(0.05)
conn.sendall(b"POST /flood HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * writes))
for _ in range(writes):
    conn.sendall(chunk)
conn.recv(100)
started = time.monotonic()
go = subprocess.run([fresh, "-url", "https://allowed.kloak.test:8443/overflow-go",
                     "-header", "Authorization: Bearer $API_KEY"], capture_output=True)
open(gate + ".go", "w").write("rc=%d ms=%d %s\n" % (go.returncode, (time.monotonic() - started) * 1000,
                                                    go.stderr[-200:].decode(errors="replace")))
while not os.path.exists(gate + ".thawed"):
    time.sleep(0.05)
request = urllib.request.Request("https://allowed.kloak.test:8443/after-overflow",
                                 headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
print("after:", urllib.request.urlopen(request, timeout=30).read().decode().strip())
PY
rm -f "$WORK/ring.gate.go" "$WORK/ring.gate.thawed"
# The ring holds 1 MiB; an event takes about 112 bytes: 15,000 decisions overflow it.
# Under qemu TCG the start, the flood and the frozen wait take most of the default 120 s limit.
RUN_TIMEOUT=300 RESOLVER=127.0.0.53 kloak_run ring --secret "API_KEY=@$WORK/api_key" --allow-host allowed.kloak.test \
  --port 8443 --dns-server 127.0.0.53 -- python3 "$WORK/flood.py" "$WORK/ring.gate" "$WORK/goclient-fresh" 15000 &
runner=$!
if wait_for_text "$WORK/ring.gate.started" ready 60 "$runner"; then
  kloak_pid=$(pgrep -f -- "^$KLOAK run --events $WORK/ring.events")
  kill -STOP "$kloak_pid"
  touch "$WORK/ring.gate"
  if wait_for_text "$WORK/ring.gate.go" rc= 300 "$runner"; then
    if grep -q '^rc=0 ' "$WORK/ring.gate.go"; then
      pass "ring: with the event buffer full, a new executable ran without being stopped ($(cut -d' ' -f2 "$WORK/ring.gate.go"))"
    else
      fail ring "the fresh Go client failed: $(cat "$WORK/ring.gate.go")"
    fi
  else
    fail ring "the fresh Go client did not finish while kloak run was frozen (held with nobody to answer?)"
  fi
  kill -CONT "$kloak_pid"
  touch "$WORK/ring.gate.thawed"
  wait "$runner"
  got=$(received_text "$WORK/a.rec" /overflow-go)
  if grep -q "Bearer kloak:" <<<"$got" && ! grep -qF "$SECRET" <<<"$got"; then
    pass "ring: the unhooked process's placeholder left unchanged (fail closed)"
  else
    fail ring "the unhooked process's request: $(head -c 300 <<<"$got")"
  fi
  got=$(received_text "$WORK/a.rec" /after-overflow)
  if grep -qF "Bearer $SECRET" <<<"$got"; then
    pass "ring: once kloak run thawed, the next request was rewritten"
  else
    fail ring "no rewrite after the overflow: $(head -c 300 <<<"$got"); $(tail -c 300 "$WORK/ring.out")"
  fi
  if grep -q "event buffer overflowed" "$WORK/ring.log"; then
    pass "ring: kloak run warned that events were lost"
  else
    fail ring "no warning about lost events: $(grep -a 'WARN' "$WORK/ring.log" | tail -2)"
  fi
else
  fail ring "the command never started: $(tail -c 400 "$WORK/ring.log")"
  touch "$WORK/ring.gate" "$WORK/ring.gate.thawed"
  wait "$runner"
fi

# S1: the real value never appears in kloak's logs or events.
if grep -lF "$SECRET" "$WORK"/*.log "$WORK"/*.events "$WORK"/*.out 2>/dev/null; then
  fail no-leak "the real value appears in the files above"
else pass "no-leak: real value absent from trace logs, events and outputs"; fi

summary
