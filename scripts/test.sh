#!/usr/bin/env bash
# Every test tier, as CI runs them:
#   1. unit (cargo test), and the Helm chart rendered for several value sets
#      and validated against the Kubernetes schemas (scripts/chart/check.sh)
#   2. host BPF: the end-to-end scenarios on this machine's kernel (rewrites
#      where the kernel allows them, observe mode and its reasons where not)
#   3. VM: the same scenarios inside Debian's 6.1 and 6.12 kernels under qemu,
#      where rewrites must happen
# Needs root. Tiers: KLOAK_TIERS="unit chart host vm" (default all).
# Ends with one line "N passed, N failed" for the non-cargo tiers.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tiers=${KLOAK_TIERS:-unit chart host vm}
kernels=${KLOAK_VM_KERNELS:-bookworm trixie}
[ "$(id -u)" -eq 0 ] || { echo "the BPF and VM tiers need root: sudo $0" >&2; exit 2; }

scripts/install-deps.sh
cargo build --locked || exit 1
scripts/build-test-clients.sh || exit 1

status=0
if [[ " $tiers " == *" unit "* ]]; then
  echo "== tier 1: unit tests"
  cargo test --locked || status=1
  # Secret change to map update through the controller's own code path
  # (debug build here; `make bench` measures the release build).
  cargo test --locked --bench secret_sync_latency || status=1
fi

passed=0
failed=0
count() { # LOG LABEL: adds the LOG's "N passed, N failed" line to the totals
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -1)
  if [ -z "$line" ]; then
    echo "$2: no result line (the tier did not run to the end)"
    failed=$((failed + 1))
    return
  fi
  echo "$2: $line"
  passed=$((passed + $(cut -d' ' -f1 <<<"$line")))
  failed=$((failed + $(cut -d' ' -f3 <<<"$line")))
}

logs=$root/target/test-logs
mkdir -p "$logs"
if [[ " $tiers " == *" chart "* ]]; then
  echo "== chart: render, schema-validate, deploy/kloak.yaml in sync"
  scripts/chart/check.sh 2>&1 | tee "$logs/chart.log"
  count "$logs/chart.log" chart
fi
if [[ " $tiers " == *" host "* ]]; then
  expect=observe
  target/debug/kloak doctor --json 2>/dev/null | grep -q '"write_user": *true' && expect=rewrite
  echo "== tier 2: host BPF ($(uname -r), expecting $expect)"
  cargo test --locked --test pins --test binding -- --ignored 2>&1 | tee "$logs/host-integration.log" || status=1
  E2E_WORK=$logs/host tests/e2e/scenarios.sh --expect "$expect" 2>&1 | tee "$logs/host.log"
  count "$logs/host.log" "host $(uname -r)"
  E2E_WORK=$logs/host-doctor tests/e2e/doctor.sh 2>&1 | tee "$logs/host-doctor.log"
  count "$logs/host-doctor.log" "host doctor"
fi
if [[ " $tiers " == *" vm "* ]]; then
  # The guest sees this machine's / except /tmp (its own tmpfs): a checkout
  # under /tmp runs from a staged copy of what the scenarios need.
  vm_root=$root
  if [[ $root == /tmp/* ]]; then
    vm_root=/var/tmp/kloak-vm-stage/$(basename "$root")
    rm -rf "$vm_root" && mkdir -p "$vm_root/target/debug" "$vm_root/target/e2e"
    cp -r tests scripts "$vm_root/"
    cp target/debug/kloak "$vm_root/target/debug/"
    cp -r target/e2e/goclient target/e2e/certs "$vm_root/target/e2e/"
  fi
  for kernel in $kernels; do
    echo "== tier 3: VM, Debian $kernel kernel"
    (cd "$vm_root" && scripts/vm.sh --kernel "$kernel" --timeout 1800 -- \
      sh -c "E2E_WORK=/tmp/e2e tests/e2e/scenarios.sh --expect rewrite") 2>&1 | tee "$logs/vm-$kernel.log"
    count "$logs/vm-$kernel.log" "vm $kernel"
  done
fi
[ "$failed" -eq 0 ] || status=1
echo "$passed passed, $failed failed"
exit $status
