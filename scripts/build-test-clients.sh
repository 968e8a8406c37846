#!/usr/bin/env bash
# Builds what the end-to-end scenarios need into OUTDIR (default target/e2e):
# the Go clients (Debian's Go, standard library only) and test certificates.
# OUTDIR must be visible inside the VM, so never under /tmp.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/e2e}
mkdir -p "$out"
if ! command -v go >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null
fi
(cd "$root/tests/e2e/goclient" &&
  GOCACHE="$out/gocache" GOPATH="$out/gopath" GOFLAGS=-mod=mod CGO_ENABLED=0 \
  go build -trimpath -o "$out/goclient" .)
# The keep-alive client of the runtime benchmark and the doctor scenario.
(cd "$root/benches/runtimes/goclient" &&
  GOCACHE="$out/gocache" GOPATH="$out/gopath" GOFLAGS=-mod=mod CGO_ENABLED=0 \
  go build -trimpath -o "$out/runtime-goclient" .)
"$root/tests/fixtures/gen_cert.sh" "$out/certs" allowed.kloak.test other.kloak.test short.kloak.test \
  zero.kloak.test api.wild.kloak.test api.example.test evil.example.test 127.0.0.1 127.0.0.2
echo "test clients in $out"
