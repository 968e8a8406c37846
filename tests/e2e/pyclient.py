#!/usr/bin/env python3
"""HTTPS client on Python's urllib (OpenSSL's SSL_write_ex), for end-to-end tests.

usage: pyclient.py --url URL [--url URL2 ...] --header 'Name: value' [--body STR]
       pyclient.py --raw HOST:PORT [--wait-after-resolve S] [--split] --header ... --body ...
Values expand $VARS from the environment (where kloak puts placeholders).
--raw resolves HOST once, optionally waits, then connects to that address
(server name HOST) and writes the request itself; --split writes it in two
SSL writes cut inside the first placeholder.
Also checks S5: after each request, the bytes object that was sent must hold
the placeholder again (kloak writes it back once OpenSSL is done).
--hold-file PATH: once every request got its answer, writes "sent PID" to PATH
and waits (at most 10 minutes) until PATH is removed, with what it sent still
alive, so a test can inspect the process's memory meanwhile.
"""
import argparse
import os
import socket
import ssl
import sys
import time
import urllib.request


def hold(path, *keep):
    """Says it is done sending, then waits until PATH is gone. KEEP: the bytes that
    were sent, referenced here so they are still in memory while the test looks."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("sent %d\n" % os.getpid())
    os.rename(tmp, path)  # whole line or nothing: the reader polls this file
    deadline = time.monotonic() + 600
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        print("hold: %s never removed" % path, file=sys.stderr)


def raw_request(args, context):
    host, port = args.raw.rsplit(":", 1)
    address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    time.sleep(args.wait_after_resolve)
    body = os.path.expandvars(args.body or "").encode()
    head = f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    for header in args.header:
        head += os.path.expandvars(header) + "\r\n"
    request = head.encode() + b"\r\n" + body
    with socket.create_connection(address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host,
                                 do_handshake_on_connect=not args.lazy_handshake) as tls:
            cut = request.find(b"kloak:")
            if args.split and cut >= 0:
                tls.sendall(request[:cut + 9])
                tls.sendall(request[cut + 9:])
            else:
                tls.sendall(request)
            # S5: the bytes object OpenSSL read from must hold the placeholder again.
            if b"kloak:" not in request and b"kloak:" in (head.encode() + body):
                print("S5 VIOLATION: the request bytes kept the real value", file=sys.stderr)
                return 1
            reply = tls.recv(4096)
            print(args.raw, reply.split(b"\r\n", 1)[0].decode(errors="replace"), flush=True)
            hold(args.hold_file, request)
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", default=[])
    parser.add_argument("--raw")
    parser.add_argument("--wait-after-resolve", type=float, default=0)
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--lazy-handshake", action="store_true",
                        help="let the first SSL_write run the handshake (no explicit SSL_do_handshake)")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body")
    parser.add_argument("--hold-file", help="after the requests, write 'sent PID' here and wait until removed")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    if args.raw:
        sys.exit(raw_request(args, context))
    failed = False
    sent = []
    for url in args.url:
        headers = {}
        for header in args.header:
            name, _, value = header.partition(":")
            headers[name.strip()] = os.path.expandvars(value.strip())
        body = os.path.expandvars(args.body).encode() if args.body else None
        request = urllib.request.Request(url, data=body, headers=headers)
        sent.append(request)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                response.read()
                print(url, response.status, flush=True)
        except OSError as err:
            print(url, "error:", err)
            failed = True
        if body is not None and b"kloak:" not in body and "kloak:" in os.path.expandvars(args.body or ""):
            print("S5 VIOLATION: the request body no longer holds the placeholder", file=sys.stderr)
            failed = True
    hold(args.hold_file, sent)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
