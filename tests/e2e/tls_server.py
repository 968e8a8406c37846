#!/usr/bin/env python3
"""TLS test server: records exactly what each connection sent, one JSON line per request.

usage: tls_server.py --listen HOST:PORT --cert C --key K --record FILE
Prints "ready" once listening. Answers every request with 200 and a short body.
"""
import argparse
import base64
import json
import signal
import socket
import ssl
import sys
import threading


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def serve(conn, peer, record, lock):
    try:
        with conn:
            while True:
                data = read_request(conn)
                if not data:
                    return
                line = json.dumps({
                    "peer": peer[0],
                    "sni": getattr(conn, "kloak_sni", None),
                    "data_b64": base64.b64encode(data).decode(),
                })
                with lock, open(record, "a") as out:
                    out.write(line + "\n")
                body = b"ok\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s"
                             % (len(body), body))
    except (OSError, ssl.SSLError):
        return


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])

    def on_sni(sock, name, _ctx):
        sock.kloak_sni = name

    context.sni_callback = on_sni
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lock = threading.Lock()
    print("ready", flush=True)
    while True:
        raw, peer = listener.accept()
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn, peer, args.record, lock), daemon=True).start()


if __name__ == "__main__":
    main()
