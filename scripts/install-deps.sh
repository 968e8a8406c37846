#!/usr/bin/env bash
# Installs what building and testing kloak needs on Debian or Ubuntu (root).
# Rust itself is assumed (rustup). Idempotent: installs only what is missing.
set -euo pipefail
packages=(
  clang llvm libelf-dev zlib1g-dev pkg-config     # BPF objects and libbpf-sys
  libssl-dev                                      # the SSL_write benchmark
  curl openssl python3 golang-go                  # real TLS clients and servers
  qemu-system-x86 busybox-static cpio xz-utils zstd kmod   # the VM tier
  iproute2 util-linux                             # ip, unshare
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
