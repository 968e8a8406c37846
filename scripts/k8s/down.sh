#!/usr/bin/env bash
# Removes everything scripts/k8s/up.sh made: pods (so CNI and the kubelet undo their netns, mounts
# and cgroups), every daemon by its recorded PID, leftover container shims of our containerd socket,
# mounts under the cluster's directory, CNI network namespaces, kubepods cgroups, the cluster's
# network namespace, the fixed host paths that did not exist before, and the global sysctls the
# kubelet changed. Safe to run twice, and after a failed up.sh. Ends by listing any leftover;
# exits non-zero when there is one.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

START=$SECONDS

# Pods first, while the kubelet still runs: it tears sandboxes down properly (CNI DEL, unmounts).
delete_pods() {
  pid_alive kubelet && pid_alive kube-apiserver || return 0
  timeout 60 inns kubectl delete pods --all-namespaces --all --grace-period=0 --force \
    --wait=true >/dev/null 2>&1 || log "pods not all deleted in 60s (containerd removes the rest)"
}

stop() { # NAME...: SIGTERM to all at once, up to 10 s for all, then SIGKILL
  local name pid pids=() i
  for name in "$@"; do
    [ -f "$K8S_WORK/pids/$name.pid" ] || continue
    pid=$(cat "$K8S_WORK/pids/$name.pid")
    rm -f "$K8S_WORK/pids/$name.pid"
    kill "$pid" 2>/dev/null && pids+=("$pid") && log "stopping $name ($pid)"
  done
  for ((i = 0; i < 20; i++)); do
    alive "${pids[@]}" || return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null && log "killed $pid"; done
  return 0
}

alive() { # PID...: any of them still runs
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

# Containers the kubelet did not remove, then containerd, then shims that outlived it (they are
# re-parented to init; only those started for our socket are ours).
stop_containers() {
  if pid_alive containerd; then
    local task
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$task"; done
    sleep 1
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task"; done
    for task in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$task"; done
  fi >/dev/null 2>&1
  stop containerd
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $K8S_CTRD_SOCK" || true); do
    log "killing leftover shim $pid"
    kill -9 "$pid"
  done
}

unmount_all() {
  local mount
  # Deepest first; /run/netns/cni-* are the pods' network namespaces (bind mounts).
  for mount in $(awk '{print $5}' /proc/self/mountinfo |
    grep -E "^$K8S_WORK/|^/run/netns/cni-|^/var/run/netns/cni-" | sort -ru); do
    umount -l "$mount" 2>/dev/null
  done
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-'); do
    ip netns del "$netns"
  done
}

# kubepods (kubelet, cgroupfs driver) in every hierarchy, leaf first.
remove_cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "${hierarchy}kubepods" ] || continue
    find "${hierarchy}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  done
}

# An agent's pins outlive it by design (the next agent adopts them). With the cluster gone nothing
# will, and a later cluster's agent must not adopt a dead one's state: a release that was not
# uninstalled (helm uninstall removes them) leaves them here.
remove_pins() {
  [ -d "$K8S_PINS" ] || return 0
  rm -rf "$K8S_PINS"
  log "removed the agent's pinned state $K8S_PINS (the release was not uninstalled)"
}

restore_host() {
  ip netns del "$K8S_NETNS" 2>/dev/null && log "deleted netns $K8S_NETNS"
  if [ -f "$K8S_WORK/sysctl-before" ]; then
    local key value
    while IFS='=' read -r key value; do
      [ "$(sysctl -n "$key")" = "$value" ] || sysctl -qw "$key=$value"
    done <"$K8S_WORK/sysctl-before"
  fi
  local path
  for path in "${K8S_FIXED_PATHS[@]}"; do
    grep -qxF "$path" "$K8S_WORK/preexisting" 2>/dev/null && continue
    [ -e "$path" ] || continue
    # /run/netns is a mount point of its own once ip netns used it.
    mountpoint -q "$path" && umount "$path"
    rm -rf "$path"
  done
}

leftovers() {
  local found=0
  if grep -E "$K8S_WORK|/run/netns/cni-" /proc/self/mountinfo; then found=1; fi
  if ls -d /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods 2>/dev/null; then found=1; fi
  if pgrep -af "$K8S_WORK|$K8S_BIN" | grep -v -e pgrep -e down.sh; then found=1; fi
  if [ -e "/run/netns/$K8S_NETNS" ]; then echo "/run/netns/$K8S_NETNS"; found=1; fi
  if [ -e "$K8S_PINS" ]; then echo "$K8S_PINS"; found=1; fi
  return $found
}

main() {
  [ "$(id -u)" -eq 0 ] || die "needs root"
  [ -d "$K8S_WORK" ] || [ -e "/run/netns/$K8S_NETNS" ] || { log "no cluster"; return 0; }
  delete_pods
  # The node first (it would restart what goes away), then the control plane.
  stop kube-proxy kubelet
  stop kube-scheduler kube-controller-manager kube-apiserver
  stop_containers
  stop etcd
  unmount_all
  remove_cgroups
  remove_pins
  restore_host
  if leftovers; then
    rm -rf "$K8S_WORK"
    log "cluster removed in $((SECONDS - START))s, nothing left behind"
  else
    log "LEFTOVERS above (kept $K8S_WORK for inspection)"
    return 1
  fi
}

main "$@"
