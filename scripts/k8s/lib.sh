# shellcheck shell=bash
# Settings and helpers shared by the single-node cluster scripts (build.sh, up.sh, down.sh,
# image.sh) and the k8s test tier. Sourced, never run.
#
# Everything the cluster runs lives in its own network namespace ($K8S_NETNS), so its addresses,
# routes and iptables rules never touch the host's; the mount namespace is the host's, because
# containerd and the kubelet must see the same mounts.

# Versions: the cache directory is keyed by all of them, so changing one rebuilds.
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
CNI_VERSION=${CNI_VERSION:-v1.10.0}

KLOAK_CACHE=${KLOAK_CACHE:-/var/cache/kloak}
K8S_CACHE=$KLOAK_CACHE/k8s
# The recipe revision: bump it when build.sh changes what it produces (flags, versions stamped).
K8S_RECIPE=r2
K8S_KEY=k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-containerd-$CONTAINERD_VERSION-cni-$CNI_VERSION-$K8S_RECIPE
K8S_BIN=$K8S_CACHE/$K8S_KEY/bin
# The binaries a cluster needs; build.sh builds exactly these, up.sh refuses to start without them.
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
  etcd helm containerd containerd-shim-runc-v2 ctr bridge host-local loopback portmap)

# Cluster state (etcd data, containerd root, kubelet dir, logs, PIDs): removed by down.sh.
K8S_WORK=${KLOAK_K8S_WORK:-/var/tmp/kloak-k8s}
K8S_NETNS=kloak-k8s
K8S_NODE=kloak-node
K8S_NODE_IP=10.250.0.10
# Host-side helpers of the test tier, on the node's interface inside the netns: a DNS server and
# two TLS servers (one allowed host, one other host).
K8S_DNS_IP=10.250.0.53
K8S_POD_CIDR=10.88.0.0/16
K8S_SVC_CIDR=10.96.0.0/16
K8S_CTRD_SOCK=$K8S_WORK/containerd/containerd.sock
# Where the chart's agent pins its maps and links (the host's bpffs: the mount namespace is shared).
K8S_PINS=/sys/fs/bpf/kloak/controller
# Global settings the kubelet changes (it sets them for its own OOM and panic policy).
K8S_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Host paths the kubelet and CNI use whatever they are told: removed by down.sh unless they
# existed before up.sh (recorded in $K8S_WORK/preexisting).
K8S_FIXED_PATHS=(/var/log/containers /var/log/pods /var/lib/cni /var/lib/kubelet /run/netns
  /var/run/nri /etc/cni /opt/cni)

export KUBECONFIG=$K8S_WORK/admin.kubeconfig
PATH=$K8S_BIN:$PATH

log() { printf '[k8s %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# inns CMD...: run CMD in the cluster's network namespace (host mount namespace kept).
inns() { nsenter --net="/run/netns/$K8S_NETNS" "$@"; }
kc() { inns kubectl "$@"; }
ctr_k8s() { ctr --address "$K8S_CTRD_SOCK" -n k8s.io "$@"; }

# startd NAME CMD...: start a daemon in the netns, its output in logs/NAME.log, its PID in
# pids/NAME.pid. nsenter execs CMD, so the recorded PID is the daemon's own.
startd() {
  local name=$1
  shift
  nohup nsenter --net="/run/netns/$K8S_NETNS" "$@" >>"$K8S_WORK/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$K8S_WORK/pids/$name.pid"
}

# waitfor WHAT SECONDS CMD...: poll CMD every half second; fail naming WHAT and its log.
waitfor() {
  local what=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "$what not ready after ${seconds}s"
  return 1
}

# pid_alive NAME: the daemon recorded as NAME is still running.
pid_alive() {
  local file=$K8S_WORK/pids/$1.pid
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}
