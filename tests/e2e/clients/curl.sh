#!/usr/bin/env bash
# curl client of the client matrix: HTTP/2 (nghttp2 Huffman-codes the header values) over OpenSSL's
# SSL_write.
#
# usage: curl.sh --allowed BASE --other BASE
#
# One curl process sends a POST to BASE/curl-h2 on the allowed and on the other base URL (two hosts, so
# two connections), with the placeholder from $API_KEY in the Authorization header and in the body. curl
# does not expose its buffers, so there is no S5 check here. The CA comes from CURL_CA_BUNDLE.
# Prints "client curl-h2 pid <pid>" first (curl keeps that pid), so the test can pick its events.
set -euo pipefail
usage() { echo "usage: $0 --allowed BASE --other BASE" >&2; exit 2; }
allowed='' other=''
while [ $# -gt 0 ]; do
  case $1 in
    --allowed) allowed=${2:-}; shift 2 || usage ;;
    --other) other=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
if [ -z "$allowed" ] || [ -z "$other" ]; then usage; fi
: "${API_KEY:?API_KEY is not set}"
echo "client curl-h2 pid $$"
request=(--http2 -sS -m 20 -w ' %{http_version} %{http_code}\n' -H "Authorization: Bearer $API_KEY"
  --data "token=$API_KEY")
exec curl "${request[@]}" "$allowed/curl-h2" --next "${request[@]}" "$other/curl-h2"
