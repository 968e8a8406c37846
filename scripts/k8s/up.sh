#!/usr/bin/env bash
# Brings up a fresh single-node Kubernetes cluster in its own network namespace, for the k8s test tier:
# etcd, kube-apiserver, controller-manager, scheduler, containerd (with runc from Debian), kubelet and
# kube-proxy, with images imported from OCI archives (no registry). scripts/k8s/down.sh removes all of
# it. Prints one line per step with the seconds since start; exits non-zero, loudly, when any step
# fails (the cluster is then left for down.sh, whose output says what it removed).
#
# usage: up.sh IMAGE.oci.tar...     (images to import; build them with scripts/k8s/image.sh)
#
# Facts of these machines the settings below handle (measured, see the reference recipe):
# - root lacks CAP_SYS_RESOURCE: negative oom_score_adj values fail, so containerd restricts them and
#   the kubelet runs with oomScoreAdj 0;
# - hybrid cgroups (v1 controllers) and no systemd: cgroupfs driver, failCgroupV1: false;
# - no dummy netdev: the node address sits on a veth pair with both ends inside the netns;
# - nothing can be pulled: the sandbox (pause) image is local and pods use imagePullPolicy Never.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PKI=$K8S_WORK/pki
START=$SECONDS
lap() { log "$(printf '%-34s %4ss' "$1" $((SECONDS - START)))"; }

preflight() {
  [ "$(id -u)" -eq 0 ] || die "needs root"
  local name
  for name in "${K8S_BINARIES[@]}"; do
    [ -x "$K8S_BIN/$name" ] || die "$K8S_BIN/$name missing: run scripts/k8s/build.sh"
  done
  command -v runc >/dev/null || die "runc missing (apt-get install runc)"
  command -v iptables >/dev/null || die "iptables missing (kube-proxy needs it)"
  command -v openssl >/dev/null || die "openssl missing"
  [ ! -e "/run/netns/$K8S_NETNS" ] || die "netns $K8S_NETNS exists: a cluster is up; run scripts/k8s/down.sh"
  [ ! -e /run/containerd/containerd.sock ] ||
    log "note: a host containerd runs; this cluster uses its own socket $K8S_CTRD_SOCK"
}

# What down.sh must put back: global sysctls and which fixed host paths already existed.
record_host_state() {
  rm -rf "$K8S_WORK"
  mkdir -p "$K8S_WORK"/{logs,pids,containerd,kubelet,cni/net.d,cni/ipam,pod-logs}
  local key path
  for key in "${K8S_SYSCTLS[@]}"; do
    echo "$key=$(sysctl -n "$key")"
  done >"$K8S_WORK/sysctl-before"
  for path in "${K8S_FIXED_PATHS[@]}"; do
    [ -e "$path" ] && echo "$path"
  done >"$K8S_WORK/preexisting" || true
}

netns_up() {
  ip netns add "$K8S_NETNS"
  inns ip link set lo up
  # No dummy driver in this kernel: a veth pair whose two ends both stay in the netns.
  inns ip link add node0 type veth peer name node0-peer
  inns ip addr add "$K8S_NODE_IP/24" dev node0
  inns ip addr add "$K8S_DNS_IP/32" dev node0
  inns ip link set node0 up
  inns ip link set node0-peer up
  # Components look for a default route to pick their address; this one goes nowhere.
  inns ip route add default dev node0
}

# A private CA and one certificate per component (ECDSA: fast to generate on every run).
pki_up() {
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=kloak-k8s-ca -days 30 -out "$PKI/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:$K8S_NODE_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert kubelet "system:node:$K8S_NODE" system:nodes
  cert kubelet-serving "$K8S_NODE" "" "DNS:$K8S_NODE,DNS:localhost,IP:127.0.0.1,IP:$K8S_NODE_IP"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local user
  for user in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$user"; done
}

cert() { # NAME CN O [SAN]: a client certificate, or a serving one when SAN is given
  local name=$1 cn=$2 org=$3 san=${4:-} subj
  subj="/CN=$cn"
  [ -z "$org" ] || subj="/O=$org/CN=$cn"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$PKI/$name.ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" 2>/dev/null |
    openssl x509 -req -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
      -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.ext"
}

kubeconfig() { # USER: $K8S_WORK/USER.kubeconfig with USER's certificate
  cat >"$K8S_WORK/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kloak-k8s
  cluster: {certificate-authority: $PKI/ca.crt, server: "https://127.0.0.1:6443"}
users:
- name: $1
  user: {client-certificate: $PKI/$1.crt, client-key: $PKI/$1.key}
contexts:
- name: kloak-k8s
  context: {cluster: kloak-k8s, user: $1}
current-context: kloak-k8s
EOF
}

etcd_up() {
  startd etcd etcd --name kloak-k8s --data-dir "$K8S_WORK/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster kloak-k8s=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync
  waitfor etcd 30 inns curl -sf http://127.0.0.1:2379/health
}

apiserver_up() {
  # --enable-aggregator-routing: the API server calls webhooks at endpoint IPs (no Service proxying
  # needed on its side); the node is found by its InternalIP (its name resolves nowhere).
  startd kube-apiserver kube-apiserver \
    --advertise-address="$K8S_NODE_IP" --secure-port=6443 \
    --etcd-servers=http://127.0.0.1:2379 \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$K8S_SVC_CIDR" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --enable-aggregator-routing=true --kubelet-preferred-address-types=InternalIP,Hostname
  waitfor kube-apiserver 90 kc get --raw=/readyz
}

controllers_up() {
  startd kube-controller-manager kube-controller-manager \
    --kubeconfig="$K8S_WORK/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$K8S_WORK/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$K8S_WORK/controller-manager.kubeconfig" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1
  startd kube-scheduler kube-scheduler --kubeconfig="$K8S_WORK/scheduler.kubeconfig" \
    --authentication-kubeconfig="$K8S_WORK/scheduler.kubeconfig" \
    --authorization-kubeconfig="$K8S_WORK/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1
}

containerd_up() {
  local cni_bin
  cni_bin=$K8S_WORK/cni/bin
  # The CNI plugin directory holds only the plugins (containerd lists it).
  mkdir -p "$cni_bin"
  ln -s "$K8S_BIN"/{bridge,host-local,loopback,portmap} "$cni_bin/"
  cat >"$K8S_WORK/cni/net.d/10-kloak.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kloak-k8s",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$K8S_WORK/cni/ipam",
              "ranges": [[{"subnet": "$K8S_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Every path containerd would otherwise put under /run/containerd or /var/lib/containerd is ours;
  # NRI is off (it would open /var/run/nri); CDI directories are ours too.
  cat >"$K8S_WORK/containerd/config.toml" <<EOF
version = 3
root = "$K8S_WORK/containerd/root"
state = "$K8S_WORK/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$K8S_CTRD_SOCK"
[ttrpc]
  address = "$K8S_CTRD_SOCK.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/kloak-test/pause:1"
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: the sandbox's default oom_score_adj (-998) kills runc init.
  restrict_oom_score_adj = true
  cdi_spec_dirs = ["$K8S_WORK/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$cni_bin"]
    conf_dir = "$K8S_WORK/cni/net.d"
[plugins.'io.containerd.internal.v1.opt']
  path = "$K8S_WORK/containerd/opt"
EOF
  startd containerd containerd --config "$K8S_WORK/containerd/config.toml"
  waitfor containerd 30 ctr --address "$K8S_CTRD_SOCK" version
}

images_up() {
  local archive
  for archive in "$@"; do
    ctr_k8s images import "$archive" >/dev/null || die "importing $archive"
  done
  log "images: $(ctr_k8s images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

kubelet_up() {
  echo "nameserver $K8S_DNS_IP" >"$K8S_WORK/resolv.conf"
  cat >"$K8S_WORK/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$K8S_CTRD_SOCK
# Hybrid cgroups without systemd: cgroupfs, and kubelet >= 1.35 refuses cgroup v1 unless told.
cgroupDriver: cgroupfs
failCgroupV1: false
# Root here lacks CAP_SYS_RESOURCE: the kubelet's own -999 cannot be applied.
oomScoreAdj: 0
clusterDomain: cluster.local
# The tier's DNS server on the node (see lib.sh): pods resolve through it, and kloak trusts it.
clusterDNS: [$K8S_DNS_IP]
resolvConf: $K8S_WORK/resolv.conf
podLogsDir: $K8S_WORK/pod-logs
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
failSwapOn: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  startd kubelet kubelet --config="$K8S_WORK/kubelet-config.yaml" \
    --kubeconfig="$K8S_WORK/kubelet.kubeconfig" --root-dir="$K8S_WORK/kubelet" \
    --hostname-override="$K8S_NODE" --node-ip="$K8S_NODE_IP" --v=1
  waitfor "node Ready" 120 sh -c "nsenter --net=/run/netns/$K8S_NETNS kubectl get node $K8S_NODE \
    -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
}

proxy_up() {
  # conntrack-max-per-core=0 and the zero timeouts leave the host-global conntrack settings alone.
  startd kube-proxy kube-proxy --kubeconfig="$K8S_WORK/kube-proxy.kubeconfig" \
    --cluster-cidr="$K8S_POD_CIDR" --hostname-override="$K8S_NODE" --proxy-mode=iptables \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  # The API server's Service VIP is what in-cluster clients (kloak's agent) dial.
  waitfor "kube-proxy rules for 10.96.0.1" 60 sh -c \
    "nsenter --net=/run/netns/$K8S_NETNS iptables-save -t nat | grep -q 10.96.0.1"
}

main() {
  preflight
  record_host_state
  netns_up
  lap "network namespace $K8S_NETNS"
  pki_up
  lap "certificates"
  etcd_up
  lap "etcd"
  apiserver_up
  lap "kube-apiserver ready"
  controllers_up
  containerd_up
  lap "containerd"
  images_up "$@"
  lap "images imported"
  kubelet_up
  lap "node Ready"
  proxy_up
  lap "kube-proxy"
  # Pods can be admitted once their namespace's default ServiceAccount exists.
  waitfor "default ServiceAccount" 60 kc -n default get serviceaccount default
  lap "cluster usable"
}

main "$@"
