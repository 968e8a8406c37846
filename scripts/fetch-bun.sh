#!/usr/bin/env bash
# Fetches Bun executables from the npm registry into
# ${KLOAK_CACHE:-/var/cache/kloak}/bun/<version>/<variant>/bun, where variant is
# x64 (needs AVX2) or x64-baseline (runs on older CPUs and qemu's TCG CPUs).
# Idempotent: a version already in the cache is not fetched again; npm checks
# each tarball against the registry's sha512 integrity.
#
#   scripts/fetch-bun.sh [VERSION...]     default: the versions kloak is tested with
#
# Prints the cache directory last, for KLOAK_BUN_DIR.
set -euo pipefail
# Spread over the 1.1 .. 1.4 releases: the signatures in
# src/dataplane/targets/bun.rs are checked against every one of these.
default_versions=(1.1.0 1.1.45 1.2.10 1.2.23 1.3.0 1.3.14 1.4.0 1.4.5)
variants=(x64 x64-baseline)
cache=${KLOAK_CACHE:-/var/cache/kloak}/bun
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${default_versions[@]}")

if ! command -v npm >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm >/dev/null
fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for version in "${versions[@]}"; do
  for variant in "${variants[@]}"; do
    dest=$cache/$version/$variant
    [ -x "$dest/bun" ] && continue
    pkg=@oven/bun-linux-$variant@$version
    echo "fetching $pkg" >&2
    rm -rf "${work:?}"/*
    tarball=$(cd "$work" && npm pack --silent --pack-destination "$work" "$pkg" | tail -1)
    tar -xzf "$work/$tarball" -C "$work" package/bin/bun
    # Moved into place only when complete, so an interrupted run leaves no
    # half-written binary that a later run would take as cached.
    mkdir -p "$dest"
    mv "$work/package/bin/bun" "$dest/bun.partial"
    chmod 0755 "$dest/bun.partial"
    mv "$dest/bun.partial" "$dest/bun"
  done
done
echo "$cache"
