#!/usr/bin/env python3
"""HTTPS keep-alive client for scripts/bench-runtimes.sh and tests/e2e/doctor.sh (standard library only).

usage: client.py URL COUNT [--hold]

One connection, one warm-up request (the handshake), then COUNT timed POST requests whose 1 KiB body
carries $BENCH once; prints "ns_per_request N". With --hold it then prints "ready" and waits until
killed, so a test can inspect the live process. Trusts $SSL_CERT_FILE.
"""
import http.client
import os
import signal
import ssl
import sys
import time
import urllib.parse


def body():
    mark = os.environ.get("BENCH", "").encode()
    data = b"x" * 64 + mark
    return data + b"y" * (1024 - len(data))


def main():
    url, count = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2])
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=30)
    payload = body()

    def request():
        conn.request("POST", url.path or "/", body=payload)
        conn.getresponse().read()

    request()
    start = time.perf_counter_ns()
    for _ in range(count):
        request()
    print("ns_per_request", (time.perf_counter_ns() - start) // count, flush=True)
    if "--hold" in sys.argv[3:]:
        print("ready", flush=True)
        signal.pause()


main()
