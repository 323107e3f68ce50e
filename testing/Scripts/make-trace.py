#!/usr/bin/env python3
"""Writes Traces/semiflow-small.pcap: three TCP connections (handshake, one request, one
response, FIN/ACK each way) and one UDP request/response, Ethernet, fixed timestamps.
Deterministic: re-running it reproduces the committed file byte for byte
(tests/test_zeek_scripts.py checks that), so the btest baselines stay valid."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import dpkt

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
T0 = 1700000000.0


def _eth(ip: dpkt.ip.IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01",
                                        dst=b"\x02\x00\x00\x00\x00\x02",
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _ip(src: str, dst: str, l4, proto: int) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64,
                    data=l4)
    ip.len = len(ip)
    return ip


def _tcp(src, dst, sport, dport, seq, ack, flags, data=b""):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535,
                     data=data)
    return _eth(_ip(src, dst, t, dpkt.ip.IP_PROTO_TCP))


def packets() -> list[tuple[float, bytes]]:
    out = []
    t = T0
    S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    for i in range(3):
        sp = 40000 + i
        req = b"GET /%d HTTP/1.1\r\nHost: example\r\n\r\n" % i
        rsp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        c, s = 1000 * (i + 1), 5000 * (i + 1)
        seq = [
            (CLIENT, SERVER, sp, 80, c, 0, S, b""),
            (SERVER, CLIENT, 80, sp, s, c + 1, S | A, b""),
            (CLIENT, SERVER, sp, 80, c + 1, s + 1, A, b""),
            (CLIENT, SERVER, sp, 80, c + 1, s + 1, P | A, req),
            (SERVER, CLIENT, 80, sp, s + 1, c + 1 + len(req), P | A, rsp),
            (CLIENT, SERVER, sp, 80, c + 1 + len(req), s + 1 + len(rsp), F | A, b""),
            (SERVER, CLIENT, 80, sp, s + 1 + len(rsp), c + 2 + len(req), F | A, b""),
            (CLIENT, SERVER, sp, 80, c + 2 + len(req), s + 2 + len(rsp), A, b""),
        ]
        for src, dst, a, b, sq, ak, fl, data in seq:
            t += 0.001
            out.append((t, _tcp(src, dst, a, b, sq, ak, fl, data)))
        t += 0.1
    for src, dst, a, b in ((CLIENT, SERVER, 53000, 53), (SERVER, CLIENT, 53, 53000)):
        t += 0.001
        u = dpkt.udp.UDP(sport=a, dport=b, data=b"\x12\x34semiflow-udp-test")
        u.ulen = len(u)
        out.append((t, _eth(_ip(src, dst, u, dpkt.ip.IP_PROTO_UDP))))
    return out


def write(path: Path) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in packets():
            w.writepkt(buf, ts=ts)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else
          Path(__file__).resolve().parent.parent / "Traces" / "semiflow-small.pcap")
