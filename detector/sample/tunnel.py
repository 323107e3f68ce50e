"""Tunnel decapsulation as Zeek does it by default: which header a tunnelled flow starts at.

Zeek hands the inner packet of a tunnel to the same IP analysis as any packet, so the inner
connection is a connection of its own (conn.log, c$tunnel set), while a UDP tunnel's outer
datagrams stay a UDP connection too. A flow sample of an inner connection starts at the
innermost IP header, exactly as for an untunnelled flow (docs/flow-sample-spec.md).

What Zeek decapsulates, read from zeek/zeek v8.2.2 (no code copied):
- IP-in-IP, protocols 4 and 41 (IPv4/IPv6 in IPv4/IPv6, 6in4): scripts/base/packet-protocols/
  ip/main.zeek registers both for the IPTunnel analyzer, which re-enters IP analysis on the
  inner bytes as raw IP (src/packet_analysis/protocol/iptunnel/IPTunnel.cc).
- GRE, protocol 47, and GRE in UDP port 4754 (gre/main.zeek): versions 0 and 1 only, no routing
  bit, no reserved flag bits (0x0078); header 4 bytes + 4 each for checksum, key, sequence and
  (v1) acknowledgement; 0x6558 transparent Ethernet bridging, 0x88BE ERSPAN type I (no sequence
  bit: no ERSPAN header) or II (8-byte header), 0x22EB ERSPAN type III (12 bytes, + 8 with the
  O bit), all carrying Ethernet; 0x0800/0x86DD IP; version 1 (PPTP) only with 0x880B and a PPP
  protocol 0x0021/0x0057 (src/packet_analysis/protocol/gre/GRE.cc).
- VXLAN on UDP 4789 (vxlan/main.zeek): 8-byte header with the I flag, then Ethernet
  (src/packet_analysis/protocol/vxlan/VXLAN.cc).
- Geneve on UDP 6081 (geneve/main.zeek): version 0, 8 bytes + options, protocol 0x6558
  (Ethernet) or 0x0800/0x86DD (IP) (src/packet_analysis/protocol/geneve/Geneve.cc).
- Teredo on UDP 3544 (teredo/main.zeek): optional authentication and origin-indication
  headers, then an IPv6 packet whose length is the rest of the datagram
  (src/packet_analysis/protocol/teredo/Teredo.cc).
UDP tunnels are chosen by the outer connection's RESPONDER port (UDP.cc: ForwardPacket(...,
c->RespPort())). Not done: AYIYA (UDP 5072), GTPv1 (UDP 2152/2123), Teredo found by Zeek's
protocol detection on other ports, ARUBA GRE (802.11 inside).
Nesting stops at Tunnel::max_depth = 4 encapsulations (scripts/base/init-bare.zeek@v8.2.2:754;
it was 2 before Zeek 7.0).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numba import njit

from . import frame as fr

MAX_DEPTH = 4
PORT_GRE = 4754
PORT_VXLAN = 4789
PORT_GENEVE = 6081
PORT_TEREDO = 3544
PROTO_IPIP = 4
PROTO_IPV6 = 41
PROTO_GRE = 47
ANY_PORT = -1  # tunnel_inner's resp_port when the outer connection is unknown: either port


_u16 = fr._u16


@njit(cache=True)
def _gre(buf, a, end):
    """(inner start, inner link type, reason) of the GRE packet at buf[a:end]."""
    if a + 4 > end:
        return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
    flags = _u16(buf, a)
    ptype = _u16(buf, a + 2)
    ver = flags & 7
    if ver > 1 or (flags & 0x4000) or (flags & 0x0078):
        return -1, 0, fr.SKIP_BAD_TUNNEL
    glen = 4
    for bit in (0x8000, 0x2000, 0x1000, 0x0080):
        if flags & bit:
            glen += 4
    p = a + glen
    if ver == 1:  # PPTP: PPP address, control, protocol
        if ptype != 0x880B:
            return -1, 0, fr.SKIP_BAD_TUNNEL
        if p + 4 > end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        ppp = _u16(buf, p + 2)
        if ppp != 0x0021 and ppp != 0x0057:
            return -1, 0, fr.SKIP_BAD_TUNNEL
        return p + 4, fr.LINKTYPE_RAW, fr.OK
    if ptype == 0x0800 or ptype == 0x86DD:
        return (p, fr.LINKTYPE_RAW, fr.OK) if p < end else (-1, 0, fr.SKIP_TRUNCATED_TUNNEL)
    if ptype == 0x6558:
        skip = 0
    elif ptype == 0x88BE:
        skip = 8 if flags & 0x1000 else 0   # ERSPAN II has a sequence number; type I has none
    elif ptype == 0x22EB:
        if p + 12 > end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        skip = 20 if buf[p + 11] & 1 else 12  # ERSPAN III, O bit: platform-specific subheader
    else:
        return -1, 0, fr.SKIP_BAD_TUNNEL
    if p + skip + 14 > end:
        return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
    return p + skip, fr.LINKTYPE_ETHERNET, fr.OK


@njit(cache=True)
def _teredo(buf, p, end):
    seen_origin = False
    seen_auth = False
    while True:
        if p + 2 > end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        tag = _u16(buf, p)
        if tag == 0:
            if seen_origin:
                return -1, 0, fr.SKIP_BAD_TUNNEL
            seen_origin = True
            p += 8
        elif tag == 1:
            if seen_origin or seen_auth or p + 4 > end:
                return -1, 0, fr.SKIP_BAD_TUNNEL
            seen_auth = True
            p += 4 + np.int64(buf[p + 2]) + np.int64(buf[p + 3]) + 9
        elif buf[p] >> 4 == 6:
            if p + 40 > end:
                return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
            # The IPv6 packet must fill the datagram (bubbles may carry slack).
            if 40 + _u16(buf, p + 4) != end - p and not (buf[p + 6] == 59 and
                                                          _u16(buf, p + 4) == 0):
                return -1, 0, fr.SKIP_BAD_TUNNEL
            return p, fr.LINKTYPE_RAW, fr.OK
        else:
            return -1, 0, fr.SKIP_BAD_TUNNEL


@njit(cache=True)
def _is_port(sp, dp, resp_port, port):
    if resp_port == ANY_PORT:
        return sp == port or dp == port
    return resp_port == port


@njit(cache=True, inline="always")
def may_tunnel_ip(info):
    """An IP protocol tunnel_inner decapsulates (a cheap test before calling it)."""
    p = info[fr.F_PROTO]
    return p == PROTO_IPIP or p == PROTO_IPV6 or p == PROTO_GRE


@njit(cache=True, inline="always")
def may_tunnel_udp(info):
    """A UDP port tunnel_inner decapsulates, on either side (a cheap test before calling
    it; the ports of its _is_port branches)."""
    sp, dp = info[fr.F_SPORT], info[fr.F_DPORT]
    return sp == PORT_VXLAN or dp == PORT_VXLAN or sp == PORT_GENEVE or \
        dp == PORT_GENEVE or sp == PORT_TEREDO or dp == PORT_TEREDO or \
        sp == PORT_GRE or dp == PORT_GRE


@njit(cache=True)
def tunnel_inner(buf, info, resp_port):
    """Where the packet inside the parsed IP level `info` starts, if Zeek decapsulates it.

    Returns (start, link type of the inner bytes, reason); start -1 when this level is no
    tunnel (reason OK) or a broken one (reason says why). The inner packet ends at
    info[F_IPEND]. resp_port: the outer UDP connection's responder port (ANY_PORT: either).
    """
    proto = info[fr.F_PROTO]
    p = info[fr.F_L4OFF]
    end = info[fr.F_IPEND]
    if info[fr.F_FRAG] != 0:  # a piece of a datagram: Zeek decapsulates only after reassembly
        return -1, 0, fr.OK
    if proto == PROTO_IPIP or proto == PROTO_IPV6:
        return (p, fr.LINKTYPE_RAW, fr.OK) if p < end else (-1, 0, fr.SKIP_TRUNCATED_TUNNEL)
    if proto == PROTO_GRE:
        return _gre(buf, p, end)
    if proto != fr.PROTO_UDP or info[fr.F_REASON] != fr.OK:
        return -1, 0, fr.OK
    sp, dp = info[fr.F_SPORT], info[fr.F_DPORT]
    p += 8
    if _is_port(sp, dp, resp_port, PORT_VXLAN):
        if p + 8 > end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        if (buf[p] & 0x08) == 0:
            return -1, 0, fr.SKIP_BAD_TUNNEL
        return (p + 8, fr.LINKTYPE_ETHERNET, fr.OK) if p + 8 < end else \
            (-1, 0, fr.SKIP_TRUNCATED_TUNNEL)
    if _is_port(sp, dp, resp_port, PORT_GENEVE):
        if p + 8 > end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        if buf[p] >> 6 != 0:
            return -1, 0, fr.SKIP_BAD_TUNNEL
        q = p + 8 + np.int64(buf[p] & 0x3F) * 4
        if q >= end:
            return -1, 0, fr.SKIP_TRUNCATED_TUNNEL
        nxt = _u16(buf, p + 2)
        if nxt == 0x6558:
            return q, fr.LINKTYPE_ETHERNET, fr.OK
        if nxt == 0x0800 or nxt == 0x86DD:
            return q, fr.LINKTYPE_RAW, fr.OK
        return -1, 0, fr.SKIP_BAD_TUNNEL
    if _is_port(sp, dp, resp_port, PORT_TEREDO):
        return _teredo(buf, p, end)
    if _is_port(sp, dp, resp_port, PORT_GRE):
        return _gre(buf, p, end)
    return -1, 0, fr.OK


@njit(cache=True)
def parse_inner(buf, start, linktype, end, out):
    """Parse the packet inside a tunnel (link layer, if any, then IP); returns the reason."""
    l3, reason = fr.l3_offset(buf, start, end, linktype)
    if reason != fr.OK:
        for i in range(fr.NFIELDS):
            out[i] = 0
        out[fr.F_REASON] = reason
        return reason
    return fr.parse_ip(buf, l3, end, out)


@njit(cache=True)
def _matches(info, key):
    """Is this IP level the connection `key` (a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto)?"""
    shi, slo, dhi, dlo = info[fr.F_SRC_HI], info[fr.F_SRC_LO], info[fr.F_DST_HI], info[fr.F_DST_LO]
    proto = info[fr.F_PROTO]
    icmp = proto == fr.PROTO_ICMP or proto == fr.PROTO_ICMP6
    if icmp:
        if key[6] != fr.PROTO_ICMP:
            return False
    elif proto != key[6]:
        return False
    if shi == key[0] and slo == key[1] and dhi == key[2] and dlo == key[3]:
        return icmp or (info[fr.F_SPORT] == key[4] and info[fr.F_DPORT] == key[5])
    if shi == key[2] and slo == key[3] and dhi == key[0] and dlo == key[1]:
        return icmp or (info[fr.F_SPORT] == key[5] and info[fr.F_DPORT] == key[4])
    return False


@njit(cache=True)
def parse_frame_for(buf, start, end, linktype, key, out, tmp):
    """The live path's parse: the IP level of `buf` that is the connection `key`.

    Zeek hands a tunnelled connection the frame as captured, outer layers included
    (get_current_packet, src/zeek.bif@v8.2.2:4394-4396), so the levels are walked until one
    carries the connection's addresses, ports and protocol. A frame with no such level (or no
    key: key[7] == 0) is parsed at its outer level, as before tunnels were followed.
    Returns the reason; `tmp` is scratch (int64[NFIELDS]).
    """
    reason = fr.parse_frame(buf, start, end, linktype, out)
    if key[7] == 0 or _matches(out, key):
        return reason
    depth = 0
    cur = out
    while depth < MAX_DEPTH:
        s, lt, r = tunnel_inner(buf, cur, ANY_PORT)
        if s < 0:
            break
        r = parse_inner(buf, s, lt, cur[fr.F_IPEND], tmp)
        depth += 1
        if _matches(tmp, key):
            for i in range(fr.NFIELDS):
                out[i] = tmp[i]
            return r
        if r != fr.OK and r != fr.SKIP_UNTRACKED_PROTO:
            break
        cur = tmp   # (parse_inner takes cur's F_IPEND by value before it rewrites tmp)
    return reason


@njit(cache=True)
def parse_innermost(buf, start, end, linktype, out, tmp):
    """The innermost IP level Zeek would reach (UDP tunnels by either port); the reason.
    `tmp` is scratch (int64[NFIELDS]; the caller's, not one allocated per packet)."""
    reason = fr.parse_frame(buf, start, end, linktype, out)
    depth = 0
    while depth < MAX_DEPTH and (reason == fr.OK or reason == fr.SKIP_UNTRACKED_PROTO):
        s, lt, r = tunnel_inner(buf, out, ANY_PORT)
        if s < 0:
            break
        r = parse_inner(buf, s, lt, out[fr.F_IPEND], tmp)
        if r != fr.OK and r != fr.SKIP_UNTRACKED_PROTO:
            break
        out[:] = tmp
        reason = r
        depth += 1
    return reason


@lru_cache(maxsize=1 << 16)
def _addr_key(a: str) -> tuple[int, int]:
    """An address string as the (hi, lo) int64 pair parse_ip produces."""
    ip = ipaddress.ip_address(a)
    v = int(ip)
    if ip.version == 4:
        return 0, v
    hi, lo = v >> 64, v & (2**64 - 1)
    return (hi - 2**64 if hi >= 2**63 else hi), (lo - 2**64 if lo >= 2**63 else lo)


_PROTO = {"tcp": fr.PROTO_TCP, "udp": fr.PROTO_UDP, "icmp": fr.PROTO_ICMP}


def _port(p: str) -> tuple[int, int]:
    num, _, proto = str(p).partition("/")
    return int(num), _PROTO[proto]


@njit(cache=True)
def flows_may_tunnel(blob, frame_off, frame_len, linktype, flow_start):
    """bool[m]: flows with a frame whose outer level tunnel_inner could decapsulate. Only
    these need a connection key: parse_frame_for reads every other flow at its outer level,
    key or no key."""
    m = flow_start.shape[0] - 1
    out = np.zeros(m, np.bool_)
    info = np.zeros(fr.NFIELDS, np.int64)
    for f in range(m):
        for j in range(flow_start[f], flow_start[f + 1]):
            a = frame_off[j]
            buf = blob[a:a + frame_len[j]]
            fr.parse_frame(buf, 0, buf.shape[0], linktype[j], info)
            if may_tunnel_ip(info) or (info[fr.F_PROTO] == fr.PROTO_UDP
                                       and may_tunnel_udp(info)):
                out[f] = True
                break
    return out


def conn_keys(ids: Sequence, only: np.ndarray | None = None) -> np.ndarray:
    """int64[m, 8] keys for parse_frame_for from Zeek conn_ids (orig_h, orig_p "n/proto",
    resp_h, resp_p); a missing or unreadable id gives a zero row (parse the outer level).
    only: bool[m], the flows to key (flows_may_tunnel); the others get zero rows."""
    out = np.zeros((len(ids), 8), np.int64)
    for i in (range(len(ids)) if only is None else np.flatnonzero(only).tolist()):
        try:
            oh, op, rh, rp = ids[i]
            ahi, alo = _addr_key(oh)
            bhi, blo = _addr_key(rh)
            pa, proto = _port(op)
            pb, _ = _port(rp)
        except (ValueError, TypeError, KeyError):
            continue
        if not (0 <= pa < 65536 and 0 <= pb < 65536):
            continue
        out[i] = (ahi, alo, bhi, blo, pa, pb, proto, 1)
    return out
