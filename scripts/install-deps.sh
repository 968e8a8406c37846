#!/usr/bin/env bash
# Installs what building and testing kloak needs on Debian or Ubuntu (root).
# Rust itself is assumed (rustup), and so is Node.js (the client matrix tests
# the machine's own `node`, whose statically linked OpenSSL is the point).
# Idempotent: installs only what is missing.
set -euo pipefail
packages=(
  clang llvm libelf-dev zlib1g-dev pkg-config     # BPF objects and libbpf-sys
  libssl-dev                                      # the SSL_write benchmark
  curl openssl python3 golang-go                  # real TLS clients and servers
  python3-venv ruby postgresql                    # the client matrix (tests/e2e/matrix.sh)
  qemu-system-x86 busybox-static cpio xz-utils zstd kmod   # the VM tier
  iproute2 util-linux                             # ip, unshare
  runc iptables                                   # the k8s tier (containerd and kube-proxy from scripts/k8s/build.sh)
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
  }
fi
node --version >/dev/null 2>&1 || {
  echo "install-deps: node is missing: the client matrix tests the machine's Node.js; install it (Node 20+)" >&2
  exit 1
}
