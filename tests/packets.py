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


# ---- tunnels and fragments (byte layouts from the RFCs; Zeek's parsers in
# detector/sample/tunnel.py)
def raw_ip4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x4242,
            frag: int = 0, ttl: int = 64) -> bytes:
    """An IPv4 header (no options, checksum 0) + payload; frag = flags/offset field."""
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def raw_ip6(src: str, dst: str, nxt: int, payload: bytes) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), nxt, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def eth_raw(l3: bytes, etype: int | None = None) -> bytes:
    """An Ethernet frame around an IP packet (ethertype from the version nibble)."""
    if etype is None:
        etype = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    return MAC_B + MAC_A + struct.pack(">H", etype) + l3


def gre(inner: bytes, ptype: int, key: int | None = None, seq: int | None = None,
        version: int = 0, ack: int | None = None) -> bytes:
    """A GRE header (RFC 2784/2890; PPTP's enhanced GRE with version=1) + inner bytes."""
    flags = (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0) | \
        (0x0080 if ack is not None else 0) | version
    out = struct.pack(">HH", flags, ptype)
    for v in (key, seq, ack):
        if v is not None:
            out += struct.pack(">I", v)
    return out + inner


def erspan2(frame: bytes, session: int = 1) -> bytes:
    """ERSPAN type II (GRE 0x88BE with a sequence number, then an 8-byte header)."""
    return gre(struct.pack(">HHI", 0x1000 | 1, session & 0x3FF, 0) + frame, 0x88BE, seq=7)


def erspan3(frame: bytes, subheader: bool = False) -> bytes:
    """ERSPAN type III (GRE 0x22EB, 12-byte header, + 8 bytes with the O bit)."""
    hdr = struct.pack(">HHIHBB", 0x2001, 1, 0, 0, 0, 1 if subheader else 0)
    return gre(hdr + (b"\0" * 8 if subheader else b"") + frame, 0x22EB, seq=9)


def vxlan(frame: bytes, vni: int = 123, i_flag: bool = True) -> bytes:
    return struct.pack(">BBHI", 0x08 if i_flag else 0, 0, 0, vni << 8) + frame


def geneve(inner: bytes, ptype: int = 0x6558, opt_words: int = 0) -> bytes:
    return struct.pack(">BBHI", opt_words, 0, ptype, 77 << 8) + b"\0" * (4 * opt_words) + inner


def teredo(ip6_packet: bytes, origin: bool = False) -> bytes:
    return (struct.pack(">HH4s", 0, 0, b"\0" * 4) if origin else b"") + ip6_packet


def raw_udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def raw_tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x18,
            seq: int = 1000) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 8192, 0, 0) + payload


def frag4(src: str, dst: str, proto: int, data: bytes, cuts: list[int],
          ident: int = 0x777) -> list[bytes]:
    """IPv4 fragments of one datagram's transport bytes, cut at the given offsets
    (multiples of 8), in order."""
    bounds = [0, *cuts, len(data)]
    return [raw_ip4(src, dst, proto, data[a:b], ident=ident,
                    frag=(0x2000 if b < len(data) else 0) | (a // 8))
            for a, b in zip(bounds, bounds[1:])]


def frag6(src: str, dst: str, nxt: int, data: bytes, cuts: list[int],
          ident: int = 0x12345678) -> list[bytes]:
    """IPv6 fragments (a fragment header right after the fixed header)."""
    bounds = [0, *cuts, len(data)]
    return [raw_ip6(src, dst, 44, struct.pack(">BBHI", nxt, 0, a | (1 if b < len(data) else 0),
                                              ident) + data[a:b])
            for a, b in zip(bounds, bounds[1:])]
