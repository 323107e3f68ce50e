"""Frame decoding and the fixed-offset sample row: the ONE place that turns bytes into model input.

Every path (capture files, Zeek frames, Suricata pcap-log) calls these numba kernels, so the
offline and live samples cannot drift apart. Kernels take a uint8 buffer plus offsets and
return plain integers, so they run inside the compiled capture loop and from Python alike.

Sample row layout (see docs/flow-sample-spec.md):
    [0, 60)    IP header: IPv4 header (20-60 bytes) or IPv6 fixed header + extension headers,
               zero-padded to 60 bytes
    [60, 120)  transport header: TCP header (20-60 bytes) or the 8-byte UDP/ICMP header,
               zero-padded to 60 bytes
    [120, L)   transport payload, truncated at L, zero-padded
"""

from __future__ import annotations

import numpy as np
from numba import njit

IP_REGION = 60
TRANSPORT_REGION = 60
PAYLOAD_OFFSET = IP_REGION + TRANSPORT_REGION

# Link types (LINKTYPE_* values from tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW as some BSDs write it in pcap headers.
LINKTYPE_RAW_BSD_A = 12
LINKTYPE_RAW_BSD_B = 14
SUPPORTED_LINKTYPES = (
    LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
    LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW_BSD_A, LINKTYPE_RAW_BSD_B,
)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58

# Why a packet yields no sample. Index into SKIP_REASONS; 0 means the packet parsed.
OK = 0
SKIP_UNKNOWN_LINKTYPE = 1
SKIP_TRUNCATED_LINK = 2
SKIP_NON_IP = 3
SKIP_TRUNCATED_IPV4 = 4
SKIP_BAD_IPV4 = 5
SKIP_TRUNCATED_IPV6 = 6
SKIP_FRAGMENT = 7
SKIP_UNTRACKED_PROTO = 8
SKIP_TRUNCATED_TCP = 9
SKIP_BAD_TCP = 10
SKIP_TRUNCATED_UDP = 11
SKIP_TRUNCATED_ICMP = 12
SKIP_TRUNCATED_RECORD = 13
SKIP_BAD_RECORD = 14
SKIP_TRUNCATED_TUNNEL = 15
SKIP_BAD_TUNNEL = 16
SKIP_TUNNEL_DEPTH = 17
SKIP_FRAG_INCOMPLETE = 18
SKIP_FRAG_BAD = 19
SKIP_REASONS = (
    "ok",
    "unknown link type",
    "truncated link-layer header",
    "not IPv4/IPv6",
    "truncated IPv4 header",
    "bad IPv4 header",
    "truncated IPv6 header",
    "IP non-first fragment (not reassembled: partly captured, or no reassembly on this path)",
    "IP protocol not tracked (Zeek tracks TCP/UDP/ICMP)",
    "truncated TCP header",
    "bad TCP header",
    "truncated UDP header",
    "truncated ICMP header",
    "truncated capture record",
    "bad capture record",
    "truncated tunnel header",
    "tunnel header Zeek does not decapsulate (bad or unsupported)",
    "tunnel nested deeper than Zeek's Tunnel::max_depth",
    "IP fragment never completed (a piece missing)",
    "bad IP fragment (past 64 KiB, or its header does not fit)",
)

# Mask bits: which fields are zeroed in the sample row.
MASK_ADDRESSES = 1
MASK_PORTS = 2
MASK_TTL = 4
MASK_CHECKSUMS = 8
MASK_IP_ID = 16
MASK_BITS = {
    "addresses": MASK_ADDRESSES,
    "ports": MASK_PORTS,
    "ttl": MASK_TTL,
    "checksums": MASK_CHECKSUMS,
    "ip_id": MASK_IP_ID,
}

# Indices into the parse result vector (int64[NFIELDS]).
F_REASON = 0
F_IPVER = 1
F_PROTO = 2
F_L3OFF = 3
F_IPHLEN = 4   # IPv4 IHL*4, or 40 + extension headers for IPv6
F_IPEND = 5    # end of the IP packet inside the buffer (min of IP length and captured bytes)
F_L4OFF = 6
F_L4HLEN = 7
F_PAYLEN = 8   # transport payload length on the wire (from IP length fields)
F_SPORT = 9
F_DPORT = 10
F_TCPFLAGS = 11
F_SRC_HI = 12
F_SRC_LO = 13
F_DST_HI = 14
F_DST_LO = 15
F_IPLEN = 16   # IP packet length on the wire (header + transport), from the IP header
# Fragments (set once the IP header parsed, whatever the transport): F_FRAG 1 for a piece of a
# fragmented datagram (IPv4 MF or offset; an IPv6 fragment header), its offset in bytes, MF,
# identification, and for IPv6 the fragment header's offset in buf (-1 for IPv4).
F_FRAG = 17
F_FRAG_OFF = 18
F_FRAG_MF = 19
F_FRAG_ID = 20
F_FRAG_HDR = 21
NFIELDS = 22

@njit(cache=True, inline="always")
def _u16(b, i):
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@njit(cache=True, inline="always")
def _u64(b, i):
    v = np.int64(0)
    for j in range(8):
        v = (v << 8) | np.int64(b[i + j])
    return v


@njit(cache=True)
def l3_offset(buf, start, end, linktype):
    """Return (offset of the IP header, reason).

    Strips Ethernet (with 802.1Q/QinQ tags, MPLS labels, PPPoE), SLL, SLL2, NULL/LOOP.
    """
    n = end - start
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return -1, SKIP_TRUNCATED_LINK
        off = start + 12
        etype = _u16(buf, off)
        off += 2
        while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
            if off + 4 > end:
                return -1, SKIP_TRUNCATED_LINK
            etype = _u16(buf, off + 2)
            off += 4
        if etype == 0x0800 or etype == 0x86DD:
            return off, OK
        if etype == 0x8847 or etype == 0x8848:  # MPLS: pop labels up to bottom-of-stack
            while True:
                if off + 4 > end:
                    return -1, SKIP_TRUNCATED_LINK
                bos = buf[off + 2] & 1
                off += 4
                if bos:
                    break
            if off < end and (buf[off] >> 4 == 4 or buf[off] >> 4 == 6):
                return off, OK
            return -1, SKIP_NON_IP
        if etype == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
            if off + 8 > end:
                return -1, SKIP_TRUNCATED_LINK
            ppp = _u16(buf, off + 6)
            if ppp == 0x0021 or ppp == 0x0057:
                return off + 8, OK
            return -1, SKIP_NON_IP
        return -1, SKIP_NON_IP
    if linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6 \
            or linktype == LINKTYPE_RAW_BSD_A or linktype == LINKTYPE_RAW_BSD_B:
        return start, OK
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return -1, SKIP_TRUNCATED_LINK
        etype = _u16(buf, start + 14)
        if etype == 0x0800 or etype == 0x86DD:
            return start + 16, OK
        return -1, SKIP_NON_IP
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -1, SKIP_TRUNCATED_LINK
        etype = _u16(buf, start)
        if etype == 0x0800 or etype == 0x86DD:
            return start + 20, OK
        return -1, SKIP_NON_IP
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if n < 4:
            return -1, SKIP_TRUNCATED_LINK
        # NULL stores the address family in the capturing host's byte order, LOOP in network
        # order; AF_INET is 2 everywhere, AF_INET6 is 10/24/28/30 depending on the OS.
        le = np.int64(buf[start]) | (np.int64(buf[start + 1]) << 8)
        be = _u16(buf, start + 2)
        fam = le if le != 0 else be
        if fam == 2 or fam == 10 or fam == 24 or fam == 28 or fam == 30:
            return start + 4, OK
        return -1, SKIP_NON_IP
    return -1, SKIP_UNKNOWN_LINKTYPE


@njit(cache=True)
def _nonfirst(out, proto, hlen, l4off, ipend, end):
    """A non-first fragment: IP fields set (for reassembly), no transport header to read."""
    out[F_PROTO] = proto
    out[F_IPHLEN] = hlen
    out[F_L4OFF] = l4off
    out[F_IPEND] = ipend if ipend < end else end
    out[F_IPLEN] = ipend - (l4off - hlen)
    out[F_REASON] = SKIP_FRAGMENT
    return SKIP_FRAGMENT


@njit(cache=True)
def parse_ip(buf, l3off, end, out):
    """Parse the IP and transport headers at l3off into out (int64[NFIELDS]); return the reason."""
    for i in range(NFIELDS):
        out[i] = 0
    out[F_L3OFF] = l3off
    if l3off >= end:
        out[F_REASON] = SKIP_TRUNCATED_IPV4
        return SKIP_TRUNCATED_IPV4
    ver = buf[l3off] >> 4
    out[F_IPVER] = ver
    if ver == 4:
        if l3off + 20 > end:
            out[F_REASON] = SKIP_TRUNCATED_IPV4
            return SKIP_TRUNCATED_IPV4
        hlen = np.int64(buf[l3off] & 0x0F) * 4
        total = _u16(buf, l3off + 2)
        if hlen < 20:
            out[F_REASON] = SKIP_BAD_IPV4
            return SKIP_BAD_IPV4
        if l3off + hlen > end:
            out[F_REASON] = SKIP_TRUNCATED_IPV4
            return SKIP_TRUNCATED_IPV4
        if total == 0:  # TSO/offloaded capture: the length field is not filled in
            total = end - l3off
        if total < hlen:
            out[F_REASON] = SKIP_BAD_IPV4
            return SKIP_BAD_IPV4
        proto = np.int64(buf[l3off + 9])
        out[F_SRC_LO] = (_u16(buf, l3off + 12) << 16) | _u16(buf, l3off + 14)
        out[F_DST_LO] = (_u16(buf, l3off + 16) << 16) | _u16(buf, l3off + 18)
        l4off = l3off + hlen
        ipend = l3off + total
        frag = _u16(buf, l3off + 6)
        if (frag & 0x3FFF) != 0:
            out[F_FRAG] = 1
            out[F_FRAG_OFF] = (frag & 0x1FFF) * 8
            out[F_FRAG_MF] = (frag >> 13) & 1
            out[F_FRAG_ID] = _u16(buf, l3off + 4)
            out[F_FRAG_HDR] = -1
            if (frag & 0x1FFF) != 0:
                return _nonfirst(out, proto, hlen, l4off, ipend, end)
    elif ver == 6:
        if l3off + 40 > end:
            out[F_REASON] = SKIP_TRUNCATED_IPV6
            return SKIP_TRUNCATED_IPV6
        plen = _u16(buf, l3off + 4)
        total = 40 + plen if plen != 0 else end - l3off  # 0: jumbogram
        out[F_SRC_HI] = _u64(buf, l3off + 8)
        out[F_SRC_LO] = _u64(buf, l3off + 16)
        out[F_DST_HI] = _u64(buf, l3off + 24)
        out[F_DST_LO] = _u64(buf, l3off + 32)
        proto = np.int64(buf[l3off + 6])
        l4off = l3off + 40
        while True:
            if proto == 44:  # fragment header
                if l4off + 8 > end:
                    out[F_REASON] = SKIP_TRUNCATED_IPV6
                    return SKIP_TRUNCATED_IPV6
                fo = _u16(buf, l4off + 2)
                out[F_FRAG] = 1
                out[F_FRAG_OFF] = fo & 0xFFF8
                out[F_FRAG_MF] = fo & 1
                out[F_FRAG_ID] = (_u16(buf, l4off + 4) << 16) | _u16(buf, l4off + 6)
                out[F_FRAG_HDR] = l4off
                proto = np.int64(buf[l4off])
                l4off += 8
                if (fo & 0xFFF8) != 0:
                    return _nonfirst(out, proto, l4off - l3off, l4off, l3off + total, end)
            elif proto == 0 or proto == 43 or proto == 60 or proto == 51:
                if l4off + 2 > end:
                    out[F_REASON] = SKIP_TRUNCATED_IPV6
                    return SKIP_TRUNCATED_IPV6
                if proto == 51:
                    elen = (np.int64(buf[l4off + 1]) + 2) * 4
                else:
                    elen = (np.int64(buf[l4off + 1]) + 1) * 8
                proto = np.int64(buf[l4off])
                l4off += elen
            else:
                break
        hlen = l4off - l3off
        if l4off > end:
            out[F_REASON] = SKIP_TRUNCATED_IPV6
            return SKIP_TRUNCATED_IPV6
        ipend = l3off + total
    else:
        out[F_REASON] = SKIP_NON_IP
        return SKIP_NON_IP

    out[F_PROTO] = proto
    out[F_IPHLEN] = hlen
    out[F_L4OFF] = l4off
    wire_l4_len = ipend - l4off  # transport bytes on the wire, per the IP length fields
    if ipend > end:
        ipend = end  # snaplen cut the packet: keep what was captured
    out[F_IPEND] = ipend
    if proto == PROTO_TCP:
        if l4off + 20 > end:
            out[F_REASON] = SKIP_TRUNCATED_TCP
            return SKIP_TRUNCATED_TCP
        thl = np.int64(buf[l4off + 12] >> 4) * 4
        if thl < 20 or thl > wire_l4_len:
            out[F_REASON] = SKIP_BAD_TCP
            return SKIP_BAD_TCP
        if l4off + thl > end:
            out[F_REASON] = SKIP_TRUNCATED_TCP
            return SKIP_TRUNCATED_TCP
        out[F_SPORT] = _u16(buf, l4off)
        out[F_DPORT] = _u16(buf, l4off + 2)
        out[F_TCPFLAGS] = buf[l4off + 13]
        out[F_L4HLEN] = thl
    elif proto == PROTO_UDP:
        if l4off + 8 > end:
            out[F_REASON] = SKIP_TRUNCATED_UDP
            return SKIP_TRUNCATED_UDP
        out[F_SPORT] = _u16(buf, l4off)
        out[F_DPORT] = _u16(buf, l4off + 2)
        out[F_L4HLEN] = 8
    elif proto == PROTO_ICMP or proto == PROTO_ICMP6:
        if l4off + 8 > end:
            out[F_REASON] = SKIP_TRUNCATED_ICMP
            return SKIP_TRUNCATED_ICMP
        # As Zeek does: ICMP "ports" are the type (orig) and code (resp).
        out[F_SPORT] = buf[l4off]
        out[F_DPORT] = buf[l4off + 1]
        out[F_L4HLEN] = 8
    else:
        out[F_REASON] = SKIP_UNTRACKED_PROTO
        return SKIP_UNTRACKED_PROTO
    out[F_IPLEN] = hlen + wire_l4_len
    pay = wire_l4_len - out[F_L4HLEN]
    out[F_PAYLEN] = pay if pay > 0 else 0
    return OK


@njit(cache=True)
def parse_frame(buf, start, end, linktype, out):
    """Link layer + IP + transport in one call; returns the reason (0 = parsed)."""
    l3, reason = l3_offset(buf, start, end, linktype)
    if reason != OK:
        for i in range(NFIELDS):
            out[i] = 0
        out[F_REASON] = reason
        return reason
    return parse_ip(buf, l3, end, out)


@njit(cache=True)
def _zero(row, a, b):
    n = row.shape[0]
    for i in range(a, min(b, n)):
        row[i] = 0


@njit(cache=True)
def write_sample_row(buf, info, row, mask, clear_tail=True):
    """Lay one parsed packet out at fixed offsets into row (uint8[L]) and apply the mask.

    Returns the row's extent: bytes past it are zero padding (lets storage skip them).
    With clear_tail=False the bytes past the extent are left as they were: for callers that
    read rows only up to their extent (the capture loop's reused row pool).
    """
    L = row.shape[0]
    for i in range(min(L, PAYLOAD_OFFSET)):
        row[i] = 0
    l3 = info[F_L3OFF]
    l4 = info[F_L4OFF]
    ipend = info[F_IPEND]
    n_ip = min(info[F_IPHLEN], IP_REGION)
    for i in range(min(n_ip, L)):
        row[i] = buf[l3 + i]
    thl = info[F_L4HLEN]
    for i in range(min(thl, TRANSPORT_REGION)):
        if IP_REGION + i >= L:
            break
        row[IP_REGION + i] = buf[l4 + i]
    src = l4 + thl
    n_pay = ipend - src
    if n_pay > L - PAYLOAD_OFFSET:
        n_pay = L - PAYLOAD_OFFSET
    for i in range(n_pay):
        row[PAYLOAD_OFFSET + i] = buf[src + i]

    ver = info[F_IPVER]
    proto = info[F_PROTO]
    if mask & MASK_ADDRESSES:
        if ver == 4:
            _zero(row, 12, 20)
        else:
            _zero(row, 8, 40)
    if mask & MASK_TTL:
        if ver == 4:
            _zero(row, 8, 9)
        else:
            _zero(row, 7, 8)
    if mask & MASK_IP_ID and ver == 4:
        _zero(row, 4, 6)
    if mask & MASK_CHECKSUMS:
        if ver == 4:
            _zero(row, 10, 12)
        if proto == PROTO_TCP:
            _zero(row, IP_REGION + 16, IP_REGION + 18)
        elif proto == PROTO_UDP:
            _zero(row, IP_REGION + 6, IP_REGION + 8)
        else:
            _zero(row, IP_REGION + 2, IP_REGION + 4)
    if mask & MASK_PORTS and (proto == PROTO_TCP or proto == PROTO_UDP):
        _zero(row, IP_REGION, IP_REGION + 4)
    ext = PAYLOAD_OFFSET + n_pay if n_pay > 0 else min(L, IP_REGION + min(thl, TRANSPORT_REGION))
    if clear_tail:
        for i in range(max(ext, PAYLOAD_OFFSET), L):
            row[i] = 0
    return ext
