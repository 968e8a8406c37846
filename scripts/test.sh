#!/usr/bin/env bash
# Every test tier, as CI runs them:
#   1. unit (cargo test), and the Helm chart rendered for several value sets
#      and validated against the Kubernetes schemas (scripts/chart/check.sh)
#   2. host BPF: the end-to-end scenarios (tests/e2e/scenarios.sh), every kind
#      of Go build (go_matrix.sh), Bun (bun.sh), the client matrix (matrix.sh)
#      and kloak doctor's view of them, on this machine's kernel (rewrites
#      where the kernel allows them, observe mode and its reasons where not)
#   3. VM: the same inside Debian's 6.1 and 6.12 kernels under qemu (the two side by side), where
#      rewrites must happen
#   4. k8s (opt-in): a real single-node Kubernetes cluster in its own network
#      namespace (scripts/k8s/), the chart installed with the real Helm, real
#      pods admitted and rewritten (tests/k8s/tier.sh)
# Needs root. Tiers: KLOAK_TIERS="unit chart host vm k8s" (default: all but k8s).
# VM kernels: KLOAK_VM_KERNELS (bookworm trixie). Each VM piece runs in the guests its
# KLOAK_VM_<PIECE>_KERNELS names (defaults in vm_plan below; "bookworm trixie" runs it on both).
# Ends with one line "N passed, N failed" for the non-cargo tiers.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tiers=${KLOAK_TIERS:-unit chart host vm}
kernels=${KLOAK_VM_KERNELS:-bookworm trixie}
# Which guest runs what. Every program a start loads is verified again (about 20 s in the 6.1 guest
# and 35 s in the 6.12 one under qemu TCG, measured), so the pieces are shared out for CI's time;
# both kernels run the Rust root tests, the Go builds and every rewrite (scenarios or client matrix).
declare -A vm_plan=(
  [SCENARIOS]="trixie"        # tests/e2e/scenarios.sh: the security scenarios
  [GO_MATRIX]="bookworm trixie" # tests/e2e/go_matrix.sh: twelve Go builds
  [CIPHERTEXT]="trixie"       # tests/e2e/ciphertext.sh: the lockdown strategy
  [FAULTS]="bookworm"         # tests/e2e/faults.sh: kill -9, held execs, a full event buffer
  [AGENT_KILL]="bookworm"     # tests/agent_kill.rs: the node agent killed 20 times under traffic
  [BUN]="bookworm"            # tests/e2e/bun.sh (qemu -cpu max)
  [MATRIX]="bookworm"         # tests/e2e/matrix.sh: every runtime, in-place strategy
)
# vm_runs PIECE KERNEL: whether KERNEL's guest runs PIECE.
vm_runs() {
  local var="KLOAK_VM_${1}_KERNELS"
  [[ " ${!var-${vm_plan[$1]}} " == *" $2 "* ]]
}
[ "$(id -u)" -eq 0 ] || { echo "the BPF and VM tiers need root: sudo $0" >&2; exit 2; }

scripts/install-deps.sh
# The debug build, the test clients, Bun and the client venv serve the unit, host and VM tiers.
if [[ " $tiers " == *" unit "* || " $tiers " == *" host "* || " $tiers " == *" vm "* ]]; then
  cargo build --locked --bins --examples || exit 1
  scripts/build-test-clients.sh || exit 1
  # The Go toolchains the target tests build the Go client with (see src/dataplane/targets/go.rs).
  KLOAK_GO_TOOLCHAINS=$(cat target/e2e/go/toolchains) || exit 1
  export KLOAK_GO_TOOLCHAINS
  # Bun releases from npm for the Bun locator's tests and the Bun scenario.
  bun_dir=$(scripts/fetch-bun.sh | tail -1) || exit 1
  client_venv=$(scripts/client-venv.sh) || exit 1
fi

status=0
tier_started=0
tier_took() { # NAME: how long the tier that just ended took, for the CI time budget
  echo "-- $1 took $((SECONDS - tier_started)) s (test.sh at $SECONDS s)"
  tier_started=$SECONDS
}
tier_took "set-up (dependencies, build, test clients)"
if [[ " $tiers " == *" unit "* ]]; then
  echo "== tier 1: unit tests"
  cargo test --locked || status=1
  # Secret change to map update through the controller's own code path
  # (debug build here; `make bench` measures the release build).
  cargo test --locked --bench secret_sync_latency || status=1
  # SSL_write and SSL_do_handshake located in every fetched Bun build.
  KLOAK_BUN_DIR=$bun_dir cargo test --locked --lib targets::bun -- --ignored || status=1
  tier_took "tier 1: unit"
fi

passed=0
failed=0
count() { # LOG LABEL [FILES]: adds each of the LOG's FILES (default 1) "N passed, N failed" lines to the totals
  local lines want=${3:-1} line
  lines=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1")
  if [ "$(grep -c . <<<"$lines")" -ne "$want" ]; then
    echo "$2: $(grep -c . <<<"$lines") of $want result lines (a scenario file did not run to the end)"
    failed=$((failed + 1))
  fi
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    echo "$2: $line"
    passed=$((passed + $(cut -d' ' -f1 <<<"$line")))
    failed=$((failed + $(cut -d' ' -f3 <<<"$line")))
  done <<<"$lines"
}

# vm_run LOG LABEL VM.SH-ARGS...: one guest boot, its output in LOG. A guest kernel that dies on an int3
# trap (a breakpoint the kernel itself placed while patching its own text, for a tracepoint kloak
# attaches) is qemu TCG's cross-modifying-code race, not a test result: that boot is kept as LOG.crash
# and the guest boots again, once, loudly. Any other crash, or a second one, is counted as it is.
vm_run() {
  local log=$1 label=$2 attempt; shift 2
  for attempt in 1 2; do
    (cd "$vm_root" && scripts/vm.sh "$@") 2>&1 | tee "$log"
    if [ "$attempt" -eq 2 ] || ! grep -q 'Oops: int3' "$log" || ! grep -q 'Kernel panic' "$log"; then
      return 0
    fi
    mv "$log" "$log.crash"
    echo "$label: RETRY: the guest kernel crashed on an int3 trap in its own text patching (qemu TCG race);"
    echo "$label: RETRY: its console is in $log.crash; booting again, once"
  done
}

# vm_series KERNEL: every guest boot of one kernel, one after another (see the vm tier below). The
# first boot runs the Rust root tests and the plan's scenario files, each ending with its own result
# line; the number of those lines is kept in $logs/vm-KERNEL.files for the count.
vm_series() {
  local kernel=$1 started=$SECONDS rust files=1 script=
  echo "== tier 3: VM, Debian $kernel kernel"
  rust="$(printf '%s\n' "${vm_tests[@]}" | grep '/restarts-') switching_to_observe --"
  rust+=" $(printf '%s\n' "${vm_tests[@]}" | grep '/stale_restore-')"
  if vm_runs AGENT_KILL "$kernel"; then
    rust+=" -- $(printf '%s\n' "${vm_tests[@]}" | grep '/agent_kill-')"
  fi
  # The security scenarios run with the default strategy (auto): OpenSSL clients' AES-GCM sessions
  # are patched in the ciphertext, Go and HPACK Huffman headers rewritten in place.
  vm_runs SCENARIOS "$kernel" && { script+="; E2E_WORK=/tmp/e2e tests/e2e/scenarios.sh --expect rewrite"; files=$((files + 1)); }
  vm_runs GO_MATRIX "$kernel" && { script+="; E2E_WORK=/tmp/e2e-go tests/e2e/go_matrix.sh --expect rewrite"; files=$((files + 1)); }
  vm_runs CIPHERTEXT "$kernel" && { script+="; E2E_WORK=/tmp/e2e-ct tests/e2e/ciphertext.sh"; files=$((files + 1)); }
  vm_runs FAULTS "$kernel" && { script+="; E2E_WORK=/tmp/e2e-faults tests/e2e/faults.sh"; files=$((files + 1)); }
  echo "$files" > "$logs/vm-$kernel.files"
  vm_run "$logs/vm-$kernel.log" "vm $kernel" --kernel "$kernel" --timeout 4200 -- \
    sh -c "tests/e2e/rust_root.sh $rust$script"
  if vm_runs BUN "$kernel"; then
    echo "== tier 3: VM, Debian $kernel kernel, Bun"
    vm_run "$logs/vm-$kernel-bun.log" "vm $kernel bun" --kernel "$kernel" --cpu max --timeout 900 -- \
      sh -c "E2E_WORK=/tmp/e2e tests/e2e/bun.sh --expect rewrite"
  fi
  if vm_runs MATRIX "$kernel"; then
    echo "== tier 3: VM, Debian $kernel kernel, client matrix"
    # The client matrix proves the in-place strategy for every runtime.
    vm_run "$logs/vm-$kernel-matrix.log" "vm $kernel client matrix" --kernel "$kernel" --timeout 1800 \
      --env "KLOAK_CLIENT_VENV=$client_venv" --env KLOAK_STRATEGY=in-place -- \
      sh -c "E2E_WORK=/tmp/e2e tests/e2e/matrix.sh --expect rewrite"
  fi
  echo "== tier 3: VM, Debian $kernel kernel: $((SECONDS - started)) s"
}

logs=$root/target/test-logs
mkdir -p "$logs"
if [[ " $tiers " == *" chart "* ]]; then
  echo "== chart: render, schema-validate, deploy/kloak.yaml in sync"
  scripts/chart/check.sh 2>&1 | tee "$logs/chart.log"
  count "$logs/chart.log" chart
  tier_took chart
fi
if [[ " $tiers " == *" host "* ]]; then
  expect=observe
  target/debug/kloak doctor --json 2>/dev/null | grep -q '"write_user": *true' && expect=rewrite
  echo "== tier 2: host BPF ($(uname -r), in-place strategy expecting $expect)"
  # The scenario files below prove the in-place strategy (and, under lockdown, that it fails
  # closed); ciphertext.sh proves the ciphertext strategy, which works on any kernel.
  export KLOAK_STRATEGY=in-place
  # restarts.rs's observe switch and stale_restore.rs need user-memory writes: the VM tier runs them.
  cargo test --locked --test pins --test binding --test restarts -- --ignored --skip switching_to_observe 2>&1 |
    tee "$logs/host-integration.log" || status=1
  # The node agent's data plane killed 20 times under traffic (ciphertext strategy on a lockdown host).
  cargo test --locked --test agent_kill -- --ignored 2>&1 | tee "$logs/host-agent-kill.log" || status=1
  E2E_WORK=$logs/host tests/e2e/scenarios.sh --expect "$expect" 2>&1 | tee "$logs/host.log"
  count "$logs/host.log" "host $(uname -r)"
  E2E_WORK=$logs/host-go tests/e2e/go_matrix.sh --expect "$expect" 2>&1 | tee "$logs/host-go.log"
  count "$logs/host-go.log" "host $(uname -r) go matrix"
  E2E_WORK=$logs/host-bun tests/e2e/bun.sh --expect "$expect" 2>&1 | tee "$logs/host-bun.log"
  count "$logs/host-bun.log" "host $(uname -r) bun"
  E2E_WORK=$logs/host-matrix KLOAK_CLIENT_VENV=$client_venv tests/e2e/matrix.sh --expect "$expect" 2>&1 |
    tee "$logs/host-matrix.log"
  count "$logs/host-matrix.log" "host $(uname -r) client matrix"
  E2E_WORK=$logs/host-doctor tests/e2e/doctor.sh 2>&1 | tee "$logs/host-doctor.log"
  count "$logs/host-doctor.log" "host doctor"
  unset KLOAK_STRATEGY
  echo "== tier 2: host BPF ($(uname -r)), ciphertext strategy"
  E2E_WORK=$logs/host-ct tests/e2e/ciphertext.sh 2>&1 | tee "$logs/host-ct.log"
  count "$logs/host-ct.log" "host $(uname -r) ciphertext"
  echo "== tier 2: host BPF ($(uname -r)), fault injection"
  E2E_WORK=$logs/host-faults tests/e2e/faults.sh 2>&1 | tee "$logs/host-faults.log"
  count "$logs/host-faults.log" "host $(uname -r) faults"
  tier_took "tier 2: host"
fi
if [[ " $tiers " == *" vm "* ]]; then
  # The root-only Rust tests that need user-memory writes, as built test binaries.
  mapfile -t vm_tests < <(cargo test --locked --no-run --test restarts --test stale_restore --test agent_kill \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
  [ "${#vm_tests[@]}" -eq 3 ] || { echo "vm: the restarts, stale_restore and agent_kill test binaries were not built"; failed=$((failed + 1)); }
  # The guest sees this machine's / except /tmp (its own tmpfs): a checkout
  # under /tmp runs from a staged copy of what the scenarios and the matrix
  # need (tests/ holds the matrix's clients; its venv is in the cache).
  vm_root=$root
  if [[ $root == /tmp/* ]]; then
    vm_root=/var/tmp/kloak-vm-stage/$(basename "$root")
    rm -rf "$vm_root" && mkdir -p "$vm_root/target/debug" "$vm_root/target/e2e"
    cp -r tests scripts "$vm_root/"
    mkdir -p "$vm_root/target/debug/examples"
    cp target/debug/kloak "$vm_root/target/debug/"
    cp target/debug/examples/kloak-drop-first "$vm_root/target/debug/examples/"
    mkdir -p "$vm_root/target/debug/deps"
    for i in "${!vm_tests[@]}"; do
      cp "${vm_tests[$i]}" "$vm_root/target/debug/deps/"
      vm_tests[$i]=$vm_root/target/debug/deps/$(basename "${vm_tests[$i]}")
    done
    cp -r target/e2e/goclient target/e2e/go target/e2e/certs "$vm_root/target/e2e/"
  fi
  # Each guest is one qemu TCG thread's worth of work (measured: one core busy per guest), so the
  # kernels' series run side by side, each in its own logs; they are shown and counted when both end.
  for kernel in $kernels; do
    vm_series "$kernel" >"$logs/vm-$kernel-series.log" 2>&1 &
  done
  echo "== tier 3: VM, Debian kernels $kernels side by side (logs: $logs/vm-*.log)"
  wait
  for kernel in $kernels; do
    cat "$logs/vm-$kernel-series.log"
    count "$logs/vm-$kernel.log" "vm $kernel" "$(cat "$logs/vm-$kernel.files")"
    vm_runs BUN "$kernel" && count "$logs/vm-$kernel-bun.log" "vm $kernel bun"
    vm_runs MATRIX "$kernel" && count "$logs/vm-$kernel-matrix.log" "vm $kernel client matrix"
  done
  tier_took "tier 3: VM"
fi
if [[ " $tiers " == *" k8s "* ]]; then
  echo "== tier 4: Kubernetes node (a real single-node cluster; scripts/k8s, tests/k8s/tier.sh)"
  # The image holds the release binary. A cluster that cannot come up ends the tier with a FAIL
  # and its result line, so it counts as failed, never as skipped.
  cargo build --release --locked --bin kloak || status=1
  E2E_WORK=$logs/k8s tests/k8s/tier.sh 2>&1 | tee "$logs/k8s.log"
  count "$logs/k8s.log" k8s
  tier_took "tier 4: k8s"
fi
[ "$failed" -eq 0 ] || status=1
echo "$passed passed, $failed failed"
exit $status
