#!/usr/bin/env bash
# Prints the GOROOT of Debian's Go for each SUITE given, colon-separated, fetching what is missing:
#   bookworm  the host's golang-go (apt-get install on demand)
#   trixie    the Go that trixie's golang-go depends on (golang-1.24-go today): its .debs are fetched
#             with a private apt state (scripts/lib/apt.sh) and extracted under
#             ${KLOAK_CACHE:-/var/cache/kloak}/go/<package version>/; not installable on bookworm with apt.
#   current   the newest Go release ($GO_CURRENT, pinned): the module golang.org/toolchain from the Go
#             module proxy, fetched and checked (sum.golang.org) by trixie's Go, cached in .../go/modcache.
#             What people build Go agents with today; Go 1.26 changed the function table's header.
# usage: scripts/go-toolchain.sh SUITE...     e.g. export KLOAK_GO_TOOLCHAINS=$(scripts/go-toolchain.sh bookworm trixie current)
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib/apt.sh
. "$here/lib/apt.sh"
cache=${KLOAK_CACHE:-/var/cache/kloak}/go
GO_CURRENT=1.26.8

# Debian's own Go, by its path: a Go first on PATH (machines may ship a newer one in /usr/local/go) is
# not what the matrix tests.
bookworm_goroot() {
  [ -x /usr/lib/go/bin/go ] || apt_install golang-go
  GOTOOLCHAIN=local /usr/lib/go/bin/go env GOROOT
}

# The cache keeps <version>/ (the extracted packages) and `trixie` (the version in use), filled under an
# flock and renamed into place at the end so an interrupted fetch never looks complete.
trixie_goroot() {
  local work ver gopkg dir
  mkdir -p "$cache"
  {
    flock -w 900 9 || { echo "go-toolchain: timed out waiting for $cache/.lock" >&2; return 1; }
    if ! { [ -s "$cache/trixie" ] && [ -d "$cache/$(cat "$cache/trixie")" ]; }; then
      apt_opts=()
      suite_apt "$cache/.apt-trixie" trixie
      # golang-go -> golang-1.NN-go -> golang-1.NN-src: the newest Go trixie ships, not a guess.
      gopkg=$(apt-cache "${apt_opts[@]}" depends golang-go | awk '/Depends: golang-1\.[0-9]+-go/{print $2; exit}')
      [ -n "$gopkg" ] || { echo "go-toolchain: trixie's golang-go names no golang-1.NN-go" >&2; return 1; }
      ver=$(apt-cache "${apt_opts[@]}" show "$gopkg" | awk '/^Version:/{print $2; exit}')
      work=$(mktemp -d "$cache/.fetch.XXXXXX")
      echo "go-toolchain: downloading $gopkg ${gopkg%-go}-src $ver (trixie)" >&2
      if ! suite_download "$work" "$gopkg" "${gopkg%-go}-src"; then rm -rf "$work"; return 1; fi
      for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
      rm -rf "${cache:?}/$ver"
      mv "$work/x" "$cache/$ver"
      rm -rf "$work"
      echo "$ver" > "$cache/trixie"
    fi
  } 9>"$cache/.lock"
  # usr/lib/go-1.NN holds bin/ and pkg/ and links src/ to usr/share/go-1.NN/src (relative links).
  dir=$(compgen -G "$cache/$(cat "$cache/trixie")/usr/lib/go-1.*" | head -1)
  [ -x "$dir/bin/go" ] || { echo "go-toolchain: broken cache $cache/$(cat "$cache/trixie") (remove it)" >&2; return 1; }
  echo "$dir"
}

current_goroot() {
  local trixie
  trixie=$(trixie_goroot)
  GOMODCACHE=$cache/modcache GOFLAGS=-modcacherw GOTOOLCHAIN=go$GO_CURRENT "$trixie/bin/go" env GOROOT
}

[ $# -gt 0 ] || { echo "usage: $0 bookworm|trixie|current..." >&2; exit 64; }
roots=()
for suite in "$@"; do
  case $suite in
    bookworm) roots+=("$(bookworm_goroot)") ;;
    trixie) roots+=("$(trixie_goroot)") ;;
    current) roots+=("$(current_goroot)") ;;
    *) echo "go-toolchain: unknown suite $suite (bookworm, trixie or current)" >&2; exit 64 ;;
  esac
done
(IFS=:; echo "${roots[*]}")
