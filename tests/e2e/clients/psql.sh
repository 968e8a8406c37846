#!/usr/bin/env bash
# psql client of the client matrix: the PostgreSQL wire protocol over TLS (libpq, sslmode=require), to
# show that non-HTTP traffic gets the same decisions and is never corrupted (S7).
#
# usage: psql.sh --allowed HOST --other HOST --port PORT
#        psql.sh --prefix HOST --port PORT
#
# Default: runs SELECT '<$API_KEY>' against each host and prints "psql-allowed <value>" and
# "psql-other <value>": the server echoes what it received, so the value shows whether it was rewritten.
# --prefix: sends the first 16 bytes of the placeholder followed by other bytes, and prints
# "psql-prefix sent <text>" and "psql-prefix got <text>"; the two must be equal.
# Each psql's pid is printed as "client psql-<what> pid <pid>" before its result.
set -euo pipefail
usage() { echo "usage: $0 --allowed HOST --other HOST --port PORT | --prefix HOST --port PORT" >&2; exit 2; }
allowed='' other='' prefix='' port=''
while [ $# -gt 0 ]; do
  case $1 in
    --allowed) allowed=${2:-}; shift 2 || usage ;;
    --other) other=${2:-}; shift 2 || usage ;;
    --prefix) prefix=${2:-}; shift 2 || usage ;;
    --port) port=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
[ -n "$port" ] || usage
: "${API_KEY:?API_KEY is not set}"

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
query() { # LABEL HOST SQL: runs SQL on HOST over TLS, prints "LABEL <result>"
  local out=$results/$1 pid
  psql "host=$2 port=$port user=postgres dbname=postgres sslmode=require connect_timeout=20" \
    -X -A -t -v ON_ERROR_STOP=1 -c "$3" > "$out" &
  pid=$!
  echo "client $1 pid $pid"
  wait "$pid" || { echo "$1 failed"; return 1; }
  echo "$1 $(cat "$out")"
}

if [ -n "$prefix" ]; then
  [ -z "$allowed$other" ] || usage
  text="${API_KEY:0:16}ZZZZZZZZZZZZZZZZZZZZZZZZ"
  echo "psql-prefix sent $text"
  query psql-prefix "$prefix" "SELECT 'got ' || '$text'"
else
  if [ -z "$allowed" ] || [ -z "$other" ]; then usage; fi
  status=0
  query psql-allowed "$allowed" "SELECT '$API_KEY'" || status=1
  query psql-other "$other" "SELECT '$API_KEY'" || status=1
  exit "$status"
fi
