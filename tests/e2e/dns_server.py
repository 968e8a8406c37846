#!/usr/bin/env python3
"""Tiny authoritative DNS server for tests (A and AAAA, fixed TTLs).

usage: dns_server.py --listen IP:PORT --record NAME=IP[,TTL] ...
Prints "ready" once listening. Unknown names get NXDOMAIN.
Also: dns_server.py --forge --to IP:PORT --txid N --name NAME --ip IP sends one
unsolicited answer (a forged DNS reply) from this process.
"""
import argparse
import ipaddress
import signal
import socket
import struct
import sys


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def parse_question(packet):
    pos, labels = 12, []
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1:pos + 1 + length].decode().lower())
        pos += 1 + length
    qtype, qclass = struct.unpack("!HH", packet[pos + 1:pos + 5])
    return ".".join(labels), qtype, pos + 5


def answer(txid, question, qtype, records, flags=0x8180):
    name = question
    found = [r for r in records.get(name, []) if (qtype == 1 and r[0].version == 4) or (qtype == 28 and r[0].version == 6)]
    rcode = 0 if name in records else 3
    header = struct.pack("!HHHHHH", txid, flags | rcode, 1, len(found), 0, 0)
    body = encode_name(name) + struct.pack("!HH", qtype, 1)
    for ip, ttl in found:
        rtype = 1 if ip.version == 4 else 28
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(ip.packed)) + ip.packed
    return header + body


def parse_records(items):
    records = {}
    for item in items:
        name, _, rest = item.partition("=")
        ip, _, ttl = rest.partition(",")
        records.setdefault(name.lower().rstrip("."), []).append((ipaddress.ip_address(ip), int(ttl or 60)))
    return records


def split_addr(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen")
    parser.add_argument("--record", action="append", default=[])
    parser.add_argument("--forge", action="store_true")
    parser.add_argument("--to")
    parser.add_argument("--txid", type=int, default=0)
    parser.add_argument("--name")
    parser.add_argument("--ip")
    parser.add_argument("--from-port", type=int, default=0)
    args = parser.parse_args()
    if args.forge:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if args.from_port:
            sock.bind(("0.0.0.0", args.from_port))
        packet = answer(args.txid, args.name.lower(), 1, parse_records([f"{args.name}={args.ip},300"]))
        sock.sendto(packet, split_addr(args.to))
        return
    host, port = split_addr(args.listen)
    records = parse_records(args.record)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            txid = struct.unpack("!H", packet[:2])[0]
            name, qtype, _ = parse_question(packet)
            sock.sendto(answer(txid, name, qtype, records), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue


if __name__ == "__main__":
    main()
