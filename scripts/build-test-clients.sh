#!/usr/bin/env bash
# Builds what the end-to-end scenarios need into OUTDIR (default target/e2e):
# - goclient: Debian bookworm's Go, standard library only (the scenarios' Go client);
# - go/<go version>-<exe|pie>-<plain|stripped>/goclient: the same client built by bookworm's Go, by the
#   newest Go in trixie and by the newest Go release (scripts/go-toolchain.sh), as a default executable
#   and as PIE, with and without symbols (-ldflags=-s -w), for tests/e2e/go_matrix.sh;
# - go/toolchains: the GOROOTs used, colon-separated (what KLOAK_GO_TOOLCHAINS wants for `cargo test`);
# - runtime-goclient: the keep-alive client of the runtime benchmark and the doctor scenario;
# - certs/: test certificates;
# - the Python client venv (scripts/client-venv.sh, in the cache directory).
# OUTDIR must be visible inside the VM, so never under /tmp.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/e2e}
mkdir -p "$out"
toolchains=$("$root/scripts/go-toolchain.sh" bookworm trixie current)

# go_build GOROOT OUTPUT ARGS...: a hermetic build (no network, no toolchain switching, no cgo).
go_build() {
  local goroot=$1 output=$2; shift 2
  (cd "$root/tests/e2e/goclient" &&
    GOROOT=$goroot GOCACHE="$out/gocache" GOPATH="$out/gopath" GOFLAGS=-mod=mod CGO_ENABLED=0 \
    GOPROXY=off GOTOOLCHAIN=local "$goroot/bin/go" build -trimpath -o "$output" "$@" .)
}

IFS=: read -r -a goroots <<<"$toolchains"
go_build "${goroots[0]}" "$out/goclient"
for goroot in "${goroots[@]}"; do
  version=$(GOROOT=$goroot GOTOOLCHAIN=local "$goroot/bin/go" env GOVERSION)
  for mode in exe pie; do
    for symbols in plain stripped; do
      args=("-buildmode=$mode")
      [ "$symbols" = plain ] || args+=("-ldflags=-s -w")
      go_build "$goroot" "$out/go/$version-$mode-$symbols/goclient" "${args[@]}"
    done
  done
done
echo "$toolchains" > "$out/go/toolchains"
# The keep-alive client of the runtime benchmark and the doctor scenario.
(cd "$root/benches/runtimes/goclient" &&
  GOROOT=${goroots[0]} GOCACHE="$out/gocache" GOPATH="$out/gopath" GOFLAGS=-mod=mod CGO_ENABLED=0 \
  GOPROXY=off GOTOOLCHAIN=local "${goroots[0]}/bin/go" build -trimpath -o "$out/runtime-goclient" .)
"$root/tests/fixtures/gen_cert.sh" "$out/certs" allowed.kloak.test other.kloak.test short.kloak.test \
  zero.kloak.test api.wild.kloak.test api.example.test evil.example.test 127.0.0.1 127.0.0.2
"$root/scripts/client-venv.sh" > /dev/null
echo "test clients in $out"
