#!/usr/bin/env bash
# Builds the Go test client from tests/clients/go (standard library only, Debian's Go) into OUTDIR, plus
# the test certificates, for the host and VM tiers.
#
# usage: scripts/build-fixture-clients.sh [OUTDIR]     (default: target/test-clients)
#   OUTDIR/goclient        static, non-PIE (Go's default on amd64)
#   OUTDIR/goclient-pie    -buildmode=pie: uprobe offsets must be file offsets, not load addresses
#   OUTDIR/certs/          CA + server certificate for the *.kloak.test names (tests/fixtures/gen_cert.sh)
# OUTDIR must be visible inside the VM, so not under /tmp (the guest mounts its own tmpfs there). The Go
# build cache and GOPATH live under OUTDIR too, so nothing is written to /root or /tmp.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd -P)
out=${1:-$root/target/test-clients}
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
case $out/ in
  /tmp/*) echo "build-fixture-clients: $out is under /tmp, which the VM cannot see" >&2; exit 64 ;;
esac

if ! command -v go >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null; }
fi

# GOFLAGS=-mod=mod and GOPROXY=off: the module has no requirements, so nothing may be fetched.
export GOCACHE=$out/.gocache GOPATH=$out/.gopath GOTMPDIR=$out/.gotmp GOFLAGS=-mod=mod GOPROXY=off \
  GOTOOLCHAIN=local CGO_ENABLED=0 GO111MODULE=on
mkdir -p "$GOTMPDIR"
cd "$root/tests/clients/go"
go build -trimpath -o "$out/goclient" .
go build -trimpath -buildmode=pie -o "$out/goclient-pie" .

"$root/tests/fixtures/gen_cert.sh" "$out/certs" allowed.kloak.test other.kloak.test \
  short.kloak.test zero.kloak.test api.wild.kloak.test 127.0.0.1 >/dev/null
echo "test clients in $out: goclient goclient-pie certs/"
