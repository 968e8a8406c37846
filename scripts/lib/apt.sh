# shellcheck shell=bash
# Sourced helpers for fetching Debian packages without changing the host's apt state.
# Used by scripts/vm.sh (trixie kernels) and scripts/go-toolchain.sh (trixie's Go).
# Callers use `set -euo pipefail`; these functions return non-zero on failure and say why on stderr.

# apt_install PKG...: installs on the host. `apt-get update` only when the plain install fails (stale or
# missing lists), because update is slow and touches the network.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  echo "apt: apt-get install $* failed, refreshing package lists" >&2
  apt-get update -q >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# suite_apt DIR SUITE: points the array `apt_opts` at a private apt configuration for Debian SUITE (own
# sources list, lists and archive cache under DIR) and refreshes its lists. Later suites' Release files are
# also signed with keys in the host's debian-archive-keyring, so no [trusted=yes].
suite_apt() {
  local dir=$1 suite=$2 uri keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  [ -f "$keyring" ] || apt_install debian-archive-keyring
  echo "deb [arch=amd64 signed-by=$keyring] $uri $suite main" > "$dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir" -o Dir::Cache::pkgcache=
            -o Dir::Cache::srcpkgcache= -o Dir::Etc::PreferencesParts=/dev/null)
  echo "apt: fetching $suite package lists" >&2
  apt-get "${apt_opts[@]}" update -q >/dev/null || { echo "apt: $suite apt-get update failed" >&2; return 1; }
}

# suite_download DIR PKG...: downloads the named .deb files into DIR with the current `apt_opts`
# (empty array: the host's own suite).
suite_download() {
  local dir=$1; shift
  (cd "$dir" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root -q download "$@" >/dev/null 2>&1) ||
    { echo "apt: download of $* failed" >&2; return 1; }
}
