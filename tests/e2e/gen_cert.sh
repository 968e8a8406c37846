#!/usr/bin/env bash
# gen_cert.sh OUTDIR NAME...: a CA and one server certificate for all NAMEs (and 127.0.0.1-9).
set -euo pipefail
out=$1; shift
mkdir -p "$out"
[ -s "$out/server.pem" ] && exit 0
san=$(printf 'DNS:%s,' "$@")
san="${san}IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4,IP:127.0.0.5"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kloak test CA" \
  -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
printf 'subjectAltName=%s\n' "$san" > "$out/ext.cnf"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
  -days 30 -extfile "$out/ext.cnf" -out "$out/server.pem" 2>/dev/null
