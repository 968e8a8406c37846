#!/usr/bin/env bash
# Builds OCI image archives without Docker: a root file system tree per image, packed by mkimage.py.
#
# usage: image.sh OUT_DIR IMAGE...     prints one archive path per image
#   kloak   localhost/kloak:dev: the release `kloak` binary (target/release/kloak, built first if
#           missing) and the shared libraries it links (ldd), a nonroot user 65532, /tmp
#   pause   localhost/kloak-test/pause:1: the pod sandbox, a static build of pause.c
#   client  localhost/kloak-test/client:1: curl (Debian's, OpenSSL 3) with its libraries, busybox
#           as /bin/sh and the usual tools, for the tier's workload pods
#   python  localhost/kloak-test/python:1: Python 3.11 and its standard library, running
#           tests/k8s/pyagent.py (imports ssl late, then calls the allowed host every second)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# copy_libs ROOTFS FILE: every shared library FILE loads (ldd, with the dynamic loader) at the
# path the loader asks for in ROOTFS, symlinks resolved to regular files.
copy_libs() {
  local rootfs=$1 lib
  for lib in $(ldd "$2" | grep -o '/[^ ]*'); do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

image_kloak() { # ROOTFS OUT
  local binary=$ROOT/target/release/kloak
  [ -x "$binary" ] || (cd "$ROOT" && cargo build --release --locked --bin kloak >&2)
  mkdir -p "$1/usr/local/bin" "$1/etc" "$1/tmp"
  chmod 1777 "$1/tmp"
  # The release profile keeps debug information; the image does not need it.
  strip --strip-debug -o "$1/usr/local/bin/kloak" "$binary"
  copy_libs "$1" "$binary"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
  python3 "$HERE/mkimage.py" "$1" localhost/kloak:dev "$2" \
    --entrypoint '["/usr/local/bin/kloak"]' --cmd '["--help"]' --user 65532:65532 >&2
}

image_pause() {
  mkdir -p "$1"
  gcc -static -O2 -Wall -Werror -o "$1/pause" "$HERE/pause.c"
  strip "$1/pause"
  python3 "$HERE/mkimage.py" "$1" localhost/kloak-test/pause:1 "$2" --entrypoint '["/pause"]' >&2
}

image_client() {
  local tool
  install -D -m 0755 /usr/bin/curl "$1/usr/bin/curl"
  copy_libs "$1" /usr/bin/curl
  # curl dlopens nothing it needs here; busybox (static) provides the shell and tools.
  install -D -m 0755 /bin/busybox "$1/bin/busybox"
  for tool in sh cat env printenv sleep grep sed head ls echo true wc; do ln -s busybox "$1/bin/$tool"; done
  mkdir -p "$1/tmp" "$1/etc"
  chmod 1777 "$1/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
  python3 "$HERE/mkimage.py" "$1" localhost/kloak-test/client:1 "$2" --cmd '["sleep","3600"]' >&2
}

# Python 3.11 (Debian's) with its standard library and the tier's long-running workload. The ssl
# module's libssl comes with lib-dynload's libraries, so it is the image's own copy, as in real images.
image_python() {
  local lib=/usr/lib/python3.11 module
  install -D -m 0755 /usr/bin/python3.11 "$1/usr/bin/python3"
  copy_libs "$1" /usr/bin/python3.11
  mkdir -p "$1$lib"
  (cd "$lib" && tar -cf - --exclude=__pycache__ --exclude=test --exclude=idlelib --exclude=tkinter \
    --exclude=ensurepip --exclude=lib2to3 --exclude=config-3.11-x86_64-linux-gnu .) |
    tar -xf - -C "$1$lib"
  for module in "$lib"/lib-dynload/*.so; do copy_libs "$1" "$module"; done
  install -D -m 0644 "$ROOT/tests/k8s/pyagent.py" "$1/app/agent.py"
  mkdir -p "$1/tmp" "$1/etc"
  chmod 1777 "$1/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
  python3 "$HERE/mkimage.py" "$1" localhost/kloak-test/python:1 "$2" \
    --entrypoint '["/usr/bin/python3", "-S", "-u"]' --cmd '["/app/agent.py"]' >&2
}

main() {
  [ $# -ge 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
  local out=$1 name
  shift
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  for name in "$@"; do
    declare -F "image_$name" >/dev/null || { echo "unknown image: $name" >&2; exit 2; }
    "image_$name" "$WORK/$name" "$out/$name.oci.tar"
    echo "$out/$name.oci.tar"
  done
}

main "$@"
