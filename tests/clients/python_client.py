#!/usr/bin/env python3
"""Python HTTPS test client (urllib + ssl; CPython calls SSL_write_ex in libssl).

usage: python_client.py --url URL [--header 'Name: value']... [--body STR] [--second-url URL2] [--conns N]

Same meaning as the Go client: header values and body may reference environment variables as $VAR or
${VAR} (the placeholder comes from the environment). The CA comes from $SSL_CERT_FILE (or --cacert).
Every request uses its own connection; with --second-url the first connection is kept open while the
second one, to another host, is made (S2). Prints "URL STATUS" per request (or "URL error: ..."), exits 1
if any request failed.
"""
import argparse
import http.client
import os
import ssl
import sys
import urllib.parse


def request(url, headers, body, ctx, timeout):
    """One request on a new connection; returns (status, connection) so the caller decides when to close."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https":
        raise ValueError("only https URLs")
    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx, timeout=timeout)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    data = os.path.expandvars(body).encode() if body is not None else None
    conn.request("POST" if data is not None else "GET", path, body=data, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status, conn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--header", action="append", default=[], help="'Name: value' ($VAR expanded)")
    ap.add_argument("--body")
    ap.add_argument("--second-url", help="then request this URL on a second connection")
    ap.add_argument("--conns", type=int, default=1, help="requests to --url, one connection each")
    ap.add_argument("--cacert", default=os.environ.get("SSL_CERT_FILE"))
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()

    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            ap.error("bad header %r (want 'Name: value')" % h)
        headers[name.strip()] = os.path.expandvars(value.strip())
    ctx = ssl.create_default_context(cafile=args.cacert)

    urls = [args.url] * max(1, args.conns) + ([args.second_url] if args.second_url else [])
    open_conns, failed = [], False
    for url in urls:
        try:
            status, conn = request(url, headers, args.body, ctx, args.timeout)
            open_conns.append(conn)
            print(url, status, flush=True)
        except (OSError, ValueError, http.client.HTTPException) as e:
            print("%s error: %s" % (url, e), flush=True)
            failed = True
    for conn in open_conns:
        conn.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
