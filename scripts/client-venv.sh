#!/usr/bin/env bash
# Creates (or reuses) the Python venv the client matrix runs its Python clients
# from: requests, httpx with h2, and the real openai and anthropic SDKs, pinned
# in tests/e2e/clients/requirements.txt, installed from PyPI.
#
# usage: scripts/client-venv.sh      prints the venv's directory on stdout
#
# The venv lives in ${KLOAK_CACHE:-/var/cache/kloak}/venv-clients, never under
# /tmp: the VM guest sees the host's / read-only but mounts its own /tmp. It is
# rebuilt when the requirements or the interpreter change. The stamp is written
# last, so an interrupted install never looks complete.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
requirements=$root/tests/e2e/clients/requirements.txt
cache=${KLOAK_CACHE:-/var/cache/kloak}
venv=$cache/venv-clients
mkdir -p "$cache"

# The stamp names what the venv was built from: same stamp, same venv.
stamp="$(python3 -c 'import sys; print(sys.executable, sys.version.split()[0])') $(sha256sum < "$requirements")"
{
  flock -w 600 9 || { echo "client-venv: timed out waiting for the lock on $venv" >&2; exit 1; }
  if [ "$(cat "$venv/.kloak-stamp" 2>/dev/null)" != "$stamp" ] ||
      ! "$venv/bin/python" -c 'import requests, httpx, h2, openai, anthropic' 2>/dev/null; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || {
      echo "client-venv: python3 cannot create venvs (Debian: apt-get install python3-venv)" >&2; exit 1; }
    echo "client-venv: creating $venv" >&2
    # Built under its final name: a venv's scripts name their own directory.
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir -r "$requirements" >&2
    echo "$stamp" > "$venv/.kloak-stamp"
  fi
} 9>"$cache/.venv-clients.lock"
echo "$venv"
