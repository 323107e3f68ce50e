"""Generate semiflow/data/sample.pcap: a small synthetic capture for the demo (deterministic).

Our own hand-built packets (the corpus is never copied into the repository): benign HTTP,
DNS and TLS-like flows, plus clearly odd ones -- a SYN port scan (no payload: reported as
unscored), a fuzzed-payload flow with odd IP header fields, and a DNS-tunnel-like flow of
long encoded subdomain queries with TXT answers.

    python benchmarks/make_sample_capture.py [-o semiflow/data/sample.pcap]
"""

from __future__ import annotations

import argparse
import base64
import random
import socket
from pathlib import Path

import dpkt

T0 = 1_700_000_000.0
CLIENT_MAC, SERVER_MAC = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def _ip(src: str, dst: str, payload, proto: int, ttl: int = 64, ip_id: int = 1, **kw):
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=ttl,
                    id=ip_id, data=payload, **kw)
    ip.len = len(ip)   # dpkt fills checksums when packed
    return ip


def _eth(ip, to_server: bool) -> bytes:
    src, dst = (CLIENT_MAC, SERVER_MAC) if to_server else (SERVER_MAC, CLIENT_MAC)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=dpkt.ethernet.ETH_TYPE_IP,
                                        data=ip))


class Writer:
    def __init__(self, fh):
        self.w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        self.t = T0

    def put(self, frame: bytes, dt: float = 0.01) -> None:
        self.t += dt
        self.w.writepkt(frame, ts=round(self.t, 6))


def tcp_flow(w: Writer, cli: str, srv: str, sport: int, dport: int,
             exchanges: list[tuple[bytes, bytes]], ttl: int = 64, tos: int = 0) -> None:
    """Handshake, request/response pairs, FIN close."""
    seq, ack = 1000, 5000
    F = dpkt.tcp  # noqa: N806

    def seg(to_server, flags, data=b"", s=None, a=None):
        t = dpkt.tcp.TCP(sport=sport if to_server else dport, dport=dport if to_server else sport,
                         seq=s, ack=a, flags=flags, win=64240, data=data)
        src, dst = (cli, srv) if to_server else (srv, cli)
        w.put(_eth(_ip(src, dst, t, dpkt.ip.IP_PROTO_TCP, ttl=ttl if to_server else 64,
                       tos=tos if to_server else 0), to_server))

    seg(True, F.TH_SYN, s=seq, a=0)
    seg(False, F.TH_SYN | F.TH_ACK, s=ack, a=seq + 1)
    seq, ack = seq + 1, ack + 1
    seg(True, F.TH_ACK, s=seq, a=ack)
    for req, resp in exchanges:
        if req:
            seg(True, F.TH_PUSH | F.TH_ACK, req, s=seq, a=ack)
            seq += len(req)
        if resp:
            seg(False, F.TH_PUSH | F.TH_ACK, resp, s=ack, a=seq)
            ack += len(resp)
    seg(True, F.TH_FIN | F.TH_ACK, s=seq, a=ack)
    seg(False, F.TH_FIN | F.TH_ACK, s=ack, a=seq + 1)
    seg(True, F.TH_ACK, s=seq + 1, a=ack + 1)


def dns_flow(w: Writer, cli: str, srv: str, sport: int, names: list[str], qtype: int,
             answer_txt: bool = False) -> None:
    for i, name in enumerate(names):
        q = dpkt.dns.DNS(id=(sport * 7 + i) & 0xFFFF, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
        w.put(_eth(_ip(cli, srv, dpkt.udp.UDP(sport=sport, dport=53, data=bytes(q)),
                       dpkt.ip.IP_PROTO_UDP), True))
        r = dpkt.dns.DNS(id=q.id, qr=dpkt.dns.DNS_R, rcode=0, qd=q.qd)
        if answer_txt:
            rr = dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_TXT, ttl=0)
            rr.text = [base64.b32encode(random.randbytes(60)).decode()]
            rr.rdata = b"".join(bytes([len(t)]) + t.encode() for t in rr.text)
        else:
            rr = dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=300,
                                 rdata=socket.inet_aton("93.184.216.34"))
        r.an = [rr]
        w.put(_eth(_ip(srv, cli, dpkt.udp.UDP(sport=53, dport=sport, data=bytes(r)),
                       dpkt.ip.IP_PROTO_UDP), False), 0.02)


def http_exchange(path: str, host: str, body_len: int) -> tuple[bytes, bytes]:
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
           "x86_64) Firefox/120.0\r\nAccept: text/html,application/xhtml+xml\r\n"
           "Accept-Language: en-US,en;q=0.5\r\nConnection: keep-alive\r\n\r\n").encode()
    body = ("<!DOCTYPE html><html><head><title>Example</title></head><body>"
            + "<p>Hello, world.</p>" * (body_len // 20) + "</body></html>").encode()
    resp = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Length: "
            f"{len(body)}\r\nServer: nginx\r\n\r\n").encode() + body
    return req, resp[:1400]


def tls_exchange(host: str) -> list[tuple[bytes, bytes]]:
    sni = host.encode()
    hello = (b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + random.randbytes(32) + b"\x20"
             + random.randbytes(32) + b"\x00\x08\x13\x01\x13\x02\x13\x03\xc0\x2f\x01\x00"
             + b"\x00\x00" + len(sni).to_bytes(2, "big") + sni + random.randbytes(40))
    server = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + random.randbytes(120)
    app = [(b"\x17\x03\x03\x01\x00" + random.randbytes(256),
            b"\x17\x03\x03\x04\x00" + random.randbytes(1024))]
    return [(hello, server), *app]


def build(out: Path) -> None:
    random.seed(20240521)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        w = Writer(fh)
        cli, web, dns_srv = "10.0.0.5", "93.184.216.34", "10.0.0.53"
        for i in range(6):        # benign web
            tcp_flow(w, cli, web, 50000 + i, 80,
                     [http_exchange(f"/page{i}.html", "www.example.com", 400 + 150 * i)])
        for i in range(6):        # benign DNS
            dns_flow(w, cli, dns_srv, 40000 + i, [f"www.site{i}.example.org"], dpkt.dns.DNS_A)
        for i in range(5):        # benign TLS-like
            tcp_flow(w, cli, f"151.101.1.{10 + i}", 51000 + i, 443,
                     tls_exchange(f"cdn{i}.example.net"))
        # anomalous 1: SYN port scan (no payload anywhere: unscored flows, reported as such)
        for port in (21, 22, 23, 25, 110, 139, 445, 3389, 5900, 8080):
            syn = dpkt.tcp.TCP(sport=61000, dport=port, seq=1, flags=dpkt.tcp.TH_SYN, win=1024)
            w.put(_eth(_ip("10.0.0.66", "10.0.0.20", syn, dpkt.ip.IP_PROTO_TCP, ttl=37), True),
                  0.001)
            rst = dpkt.tcp.TCP(sport=port, dport=61000, seq=0, ack=2,
                               flags=dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)
            w.put(_eth(_ip("10.0.0.20", "10.0.0.66", rst, dpkt.ip.IP_PROTO_TCP), False), 0.001)
        # anomalous 2: fuzzed payload to a web port, odd TTL/TOS
        fuzz = [(bytes(random.getrandbits(8) for _ in range(900)),
                 bytes(random.getrandbits(8) for _ in range(60))) for _ in range(3)]
        tcp_flow(w, "10.0.0.77", web, 62000, 80, fuzz, ttl=255, tos=0xFC)
        # anomalous 3: DNS tunnel: long base32 labels, TXT answers
        names = []
        for _ in range(6):
            chunk = base64.b32encode(random.randbytes(35)).decode().rstrip("=").lower()
            names.append(f"{chunk[:56]}.t.exfil-example.com")
        dns_flow(w, cli, dns_srv, 45555, names, dpkt.dns.DNS_TXT, answer_txt=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default=str(Path(__file__).resolve().parent.parent
                                               / "semiflow" / "data" / "sample.pcap"))
    args = ap.parse_args()
    build(Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
