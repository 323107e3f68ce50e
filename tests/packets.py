"""Hand-built packets and captures for tests (dpkt builds them; we check bytes ourselves)."""

from __future__ import annotations

import socket
import struct

import dpkt

MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def ip4(src: str, dst: str, l4, proto: int, ttl: int = 64, ident: int = 0x1234, opts: bytes = b""):
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=ttl,
                    id=ident, data=l4, opts=opts)
    ip.hl = 5 + len(opts) // 4
    ip.len = ip.hl * 4 + len(bytes(l4))
    return ip


def ip6(src: str, dst: str, l4, nxt: int, hlim: int = 64):
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                      dst=socket.inet_pton(socket.AF_INET6, dst), nxt=nxt, hlim=hlim, data=l4)
    ip.plen = len(bytes(l4))
    return ip


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = dpkt.tcp.TH_ACK,
        opts: bytes = b"", seq: int = 1000):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, opts=opts, data=payload)
    t.off = 5 + len(opts) // 4
    return t


def udp(sport: int, dport: int, payload: bytes = b""):
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)


def ether(ip, vlans: tuple[int, ...] = ()) -> bytes:
    etype = 0x86DD if isinstance(ip, dpkt.ip6.IP6) else 0x0800
    tags = b"".join(struct.pack(">HH", 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100, v)
                    for i, v in enumerate(vlans))
    return MAC_B + MAC_A + tags + struct.pack(">H", etype) + bytes(ip)


def sll(ip) -> bytes:
    etype = 0x86DD if isinstance(ip, dpkt.ip6.IP6) else 0x0800
    return struct.pack(">HHH8sH", 0, 1, 6, MAC_A + b"\0\0", etype) + bytes(ip)


def sll2(ip) -> bytes:
    etype = 0x86DD if isinstance(ip, dpkt.ip6.IP6) else 0x0800
    return struct.pack(">HHIHBB8s", etype, 0, 2, 1, 0, 6, MAC_A + b"\0\0") + bytes(ip)


def null(ip, big_endian: bool = False) -> bytes:
    fam = 30 if isinstance(ip, dpkt.ip6.IP6) else 2
    return struct.pack(">I" if big_endian else "<I", fam) + bytes(ip)


def write_pcap(path, frames, linktype: int = 1, snaplen: int = 65535, nano: bool = False) -> None:
    """frames: [(ts, bytes)] or [(ts, bytes, wire_len)]."""
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype, snaplen=snaplen, nano=nano)
        for fr in frames:
            w.writepkt(fr[1], ts=fr[0])


def write_pcapng(path, frames, linktype: int = 1) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f, linktype=linktype)
        for ts, data in frames:
            w.writepkt(data, ts=ts)
