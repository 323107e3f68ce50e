"""Names for the bytes of a sample row: which header field sits at which fixed offset.

The flow-sample spec (docs/flow-sample-spec.md, detector/sample/frame.py) puts every field at the
same offset in every row: the IP header in [0, 60), the transport header in [60, 120), the
payload from 120. This module turns an offset back into a name ("ipv4.ttl", "tcp.flags",
"payload[+17]") so explanations can say which field drove a score. The layout of a row is
read from the row itself: the IP version nibble (byte 0) and the protocol byte (IPv4 byte 9,
IPv6 byte 6), which the spec never masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiflow.detector.sample.frame import IP_REGION, PAYLOAD_OFFSET

# (name, start, end) relative to the start of the IP region, then the transport region.
IPV4_FIELDS = (
    ("ipv4.version_ihl", 0, 1), ("ipv4.tos", 1, 2), ("ipv4.total_length", 2, 4),
    ("ipv4.id", 4, 6), ("ipv4.flags_frag", 6, 8), ("ipv4.ttl", 8, 9), ("ipv4.proto", 9, 10),
    ("ipv4.checksum", 10, 12), ("ipv4.src", 12, 16), ("ipv4.dst", 16, 20),
    ("ipv4.options", 20, 60),
)
IPV6_FIELDS = (
    ("ipv6.version_class_flow", 0, 4), ("ipv6.payload_length", 4, 6),
    ("ipv6.next_header", 6, 7), ("ipv6.hop_limit", 7, 8), ("ipv6.src", 8, 24),
    ("ipv6.dst", 24, 40), ("ipv6.ext_headers", 40, 60),
)
TCP_FIELDS = (
    ("tcp.sport", 0, 2), ("tcp.dport", 2, 4), ("tcp.seq", 4, 8), ("tcp.ack", 8, 12),
    ("tcp.offset_flags", 12, 14), ("tcp.window", 14, 16), ("tcp.checksum", 16, 18),
    ("tcp.urgent", 18, 20), ("tcp.options", 20, 60),
)
UDP_FIELDS = (
    ("udp.sport", 0, 2), ("udp.dport", 2, 4), ("udp.length", 4, 6), ("udp.checksum", 6, 8),
    ("udp.padding", 8, 60),
)
ICMP_FIELDS = (
    ("icmp.type", 0, 1), ("icmp.code", 1, 2), ("icmp.checksum", 2, 4), ("icmp.rest", 4, 8),
    ("icmp.padding", 8, 60),
)
_TRANSPORT = {6: TCP_FIELDS, 17: UDP_FIELDS, 1: ICMP_FIELDS, 58: ICMP_FIELDS}
_GENERIC_IP = (("ip.header", 0, 60),)
_GENERIC_TRANSPORT = (("transport.header", 0, 60),)


@dataclass(frozen=True)
class Field:
    name: str
    start: int   # offset in the sample row
    end: int     # exclusive

    @property
    def region(self) -> str:
        if self.start < IP_REGION:
            return "ip"
        return "transport" if self.start < PAYLOAD_OFFSET else "payload"


def row_layout(row: np.ndarray) -> tuple[int, int]:
    """(ip_version, transport protocol number) read from a sample row; (0, 0) if empty."""
    row = np.asarray(row)
    if row.size == 0 or not row[:IP_REGION].any():
        return 0, 0
    version = int(row[0]) >> 4
    if version == 4:
        return 4, int(row[9])
    if version == 6:
        return 6, int(row[6])
    return version, 0


def header_fields(ip_version: int, proto: int) -> list[Field]:
    """The named header fields of a row with this layout (payload excluded)."""
    ip = IPV4_FIELDS if ip_version == 4 else IPV6_FIELDS if ip_version == 6 else _GENERIC_IP
    tr = _TRANSPORT.get(proto, _GENERIC_TRANSPORT)
    return ([Field(n, a, b) for n, a, b in ip]
            + [Field(n, IP_REGION + a, IP_REGION + b) for n, a, b in tr])


def field_map(row: np.ndarray) -> list[Field]:
    """Every field of a row, in offset order, ending with the payload [120, L)."""
    row = np.asarray(row)
    return header_fields(*row_layout(row)) + [Field("payload", PAYLOAD_OFFSET, len(row))]


def offset_names(row: np.ndarray) -> list[str]:
    """A name for every byte offset of the row: header fields, then payload[+i]."""
    names = [""] * len(row)
    for f in header_fields(*row_layout(row)):
        for i in range(f.start, min(f.end, len(row))):
            names[i] = f.name
    for i in range(PAYLOAD_OFFSET, len(row)):
        names[i] = f"payload[+{i - PAYLOAD_OFFSET}]"
    return names


def field_of(row: np.ndarray, offset: int) -> str:
    """The name of the field holding byte `offset` of the row."""
    if offset >= PAYLOAD_OFFSET:
        return f"payload[+{offset - PAYLOAD_OFFSET}]"
    for f in header_fields(*row_layout(row)):
        if f.start <= offset < f.end:
            return f.name
    return "ip.header" if offset < IP_REGION else "transport.header"
