"""IPv4/IPv6 fragment reassembly for the capture loop, the way Zeek reassembles before analysis.

Zeek (zeek/zeek v8.2.2, src/Frag.cc and src/packet_analysis/protocol/ip/IP.cc) keys a datagram
by (source, destination, identification), holds its pieces for `frag_timeout` = 5 min
(scripts/base/init-bare.zeek@v8.2.2:1954), keeps the bytes that arrived first where pieces
overlap (the overlap is only a weird), takes the datagram as complete once the piece without
MF has arrived and the data is contiguous up to the highest end seen, and rewrites the length
field of the rebuilt header (IPv4 total length; IPv6 payload length, the fragment header
removed). A piece captured only in part is not reassembled: a non-first one is dropped, a first
one is analysed as it is (IP.cc, "incompletely_captured_fragment").

Differences, on purpose: the rebuilt header is that of the offset-0 piece (Zeek copies the
first piece to ARRIVE), so the bytes do not depend on arrival order; the flags stay as they
were (MF set, as Zeek's reassembled header, zeek.bif@v8.2.2:4423-4430). Memory is bounded: at
most SLOTS datagrams are held at once (the oldest is given up, counted, when a new one needs
room), a datagram may not pass 64 KiB, and its unfragmentable header part 128 bytes; past
those a piece is counted as a bad fragment. Nothing here raises on bad input.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from semiflow.detector.sample import frame as fr

SLOTS = 256
HDR_ROOM = 128            # the rebuilt header goes right before the data
MAX_DATA = 65536          # bytes of fragmentable data per datagram
MASK0 = HDR_ROOM + MAX_DATA  # each row: header room, data, then one "have it" byte per data byte
ROW = MASK0 + MAX_DATA
FRAG_TIMEOUT_US = 300_000_000  # Zeek's frag_timeout (5 min), in microseconds

# Per-slot integers (FragTable.ints columns).
FI_USED, FI_SHI, FI_SLO, FI_DHI, FI_DLO, FI_ID, FI_VER = 0, 1, 2, 3, 4, 5, 6
FI_SIZE, FI_LAST, FI_FILLED, FI_HLEN, FI_PIECES, FI_UNCOUNTED = 7, 8, 9, 10, 11, 12
FI_TS = 13  # first piece's capture time, microseconds
FI_N = 14
# The last row of FlowTable.ints is bookkeeping: the next slot to try, slots in use.
B_PTR, B_USED = 0, 1
NEVER = np.int64(2**62)

# add()'s outcomes.
PENDING, COMPLETE, BAD = 0, 1, 2


class FragTable:
    """The reassembly state the capture kernels are handed: two arrays, so that the per-packet
    call stays cheap (each array argument costs; benchmarks/extract_speed.py). Datagrams are
    found through the flow table's dict, under keys whose last element is negative
    (flows have their IP protocol there). Pages are touched only when used."""

    def __init__(self, slots: int = SLOTS):
        self.ints = np.zeros((slots + 1, FI_N), np.int64)
        self.data = np.zeros((slots, ROW), np.uint8)

    def state(self):
        return self.ints, self.data


_u16 = fr._u16


@njit(cache=True, inline="always")
def _key(fints, s):
    return (fints[s, FI_SHI], fints[s, FI_SLO], fints[s, FI_DHI], fints[s, FI_DLO],
            fints[s, FI_ID], -1 - fints[s, FI_VER])


@njit(cache=True)
def release(s, fints, fdata, keys):
    """Free slot s (its "have it" bytes cleared up to the bytes it covered)."""
    n = fints[s, FI_SIZE]
    if n > MAX_DATA:
        n = MAX_DATA
    fdata[s, MASK0:MASK0 + n] = 0
    fints[s, FI_USED] = 0
    fints[-1, B_USED] -= 1
    k = _key(fints, s)
    if k in keys and keys[k] == s:
        keys.pop(k)


@njit(cache=True)
def give_up(s, fints, fdata, keys, skips):
    """A datagram that will never complete: its pieces not yet counted elsewhere are skips."""
    skips[fr.SKIP_FRAG_INCOMPLETE] += fints[s, FI_UNCOUNTED]
    release(s, fints, fdata, keys)


@njit(cache=True)
def give_up_all(fints, fdata, keys, skips):
    """End of a capture: every datagram still waiting for a piece."""
    for s in range(fints.shape[0] - 1):
        if fints[s, FI_USED]:
            give_up(s, fints, fdata, keys, skips)


@njit(cache=True)
def whole(buf, info):
    """Was the fragment parsed into `info` captured up to its IP length?"""
    l3 = info[fr.F_L3OFF]
    if info[fr.F_IPEND] <= l3:
        return False
    total = _u16(buf, l3 + 2) if info[fr.F_IPVER] == 4 else 40 + _u16(buf, l3 + 4)
    return info[fr.F_IPEND] == l3 + total


@njit(cache=True)
def _v6_header(buf, l3, fh, row, hroom):
    """Copy IPv6's unfragmentable part (fixed header + extension headers before the fragment
    header) so that it ends at row[hroom], with the preceding next-header field pointing past
    the fragment header. Returns its length, or -1 if the chain does not lead to fh."""
    nh = l3 + 6           # the next-header field that names the header at `cur`
    cur = l3 + 40
    while cur < fh:
        t = buf[nh]
        nh = cur
        if t == 51:  # AH counts 4-byte units
            cur += (np.int64(buf[cur + 1]) + 2) * 4
        else:
            cur += (np.int64(buf[cur + 1]) + 1) * 8
    hlen = fh - l3
    if cur != fh or hlen > hroom:
        return -1
    for i in range(hlen):
        row[hroom - hlen + i] = buf[l3 + i]
    row[hroom - hlen + (nh - l3)] = buf[fh]
    return hlen


@njit(cache=True)
def add(buf, info, ts, weight, fints, fdata, keys, skips):
    """Add the fully captured fragment parsed into `info` (parse_ip's fields).

    weight: the capture frames this piece stands for that are not counted elsewhere (1; 0
    when an outer UDP tunnel's flow already has the frame; a reassembled outer datagram's
    pieces for a piece nested inside it). A datagram given up counts them as skips.
    Returns (outcome, slot): COMPLETE leaves the datagram in fdata[slot] at
    [HDR_ROOM - hlen, HDR_ROOM + size) (see datagram()); the caller parses it and then calls
    release(slot). PENDING: held. BAD: counted as a skip here.
    """
    l3 = info[fr.F_L3OFF]
    ver = info[fr.F_IPVER]
    if ver == 4:
        start = l3 + info[fr.F_IPHLEN]
        stop = l3 + _u16(buf, l3 + 2)
    else:
        start = info[fr.F_FRAG_HDR] + 8
        stop = l3 + 40 + _u16(buf, l3 + 4)
    off = info[fr.F_FRAG_OFF]
    upper = off + stop - start
    if stop < start or upper > MAX_DATA or stop > info[fr.F_IPEND]:
        skips[fr.SKIP_FRAG_BAD] += weight
        return BAD, -1
    shi, slo, dhi, dlo = info[fr.F_SRC_HI], info[fr.F_SRC_LO], info[fr.F_DST_HI], info[fr.F_DST_LO]
    fid = info[fr.F_FRAG_ID]
    key = (shi, slo, dhi, dlo, fid, -1 - ver)
    now = np.int64(ts * 1e6)
    s = keys[key] if key in keys else np.int64(-1)
    if s >= 0 and now - fints[s, FI_TS] > FRAG_TIMEOUT_US:  # Zeek's timer would have dropped it
        give_up(s, fints, fdata, keys, skips)
        s = -1
    if s < 0:
        # The next free slot after the last one taken; with none free, the one taken
        # longest ago (round robin: it is the oldest datagram still held) is given up.
        n = fints.shape[0] - 1
        s = fints[-1, B_PTR]
        if fints[-1, B_USED] >= n:
            give_up(s, fints, fdata, keys, skips)
        while fints[s, FI_USED]:
            s = (s + 1) % n
        fints[-1, B_PTR] = (s + 1) % n
        fints[-1, B_USED] += 1
        for j in range(FI_N):
            fints[s, j] = 0
        fints[s, FI_USED] = 1
        fints[s, FI_SHI], fints[s, FI_SLO], fints[s, FI_DHI], fints[s, FI_DLO] = shi, slo, dhi, dlo
        fints[s, FI_ID] = fid
        fints[s, FI_VER] = ver
        fints[s, FI_HLEN] = -1
        fints[s, FI_TS] = now
        keys[key] = s
    row = fdata[s]
    if off == 0 and fints[s, FI_HLEN] < 0:
        if ver == 4:
            hlen = info[fr.F_IPHLEN]
            for i in range(hlen):
                row[HDR_ROOM - hlen + i] = buf[l3 + i]
        else:
            hlen = _v6_header(buf, l3, info[fr.F_FRAG_HDR], row, HDR_ROOM)
        if hlen < 0:
            skips[fr.SKIP_FRAG_BAD] += weight
            return BAD, -1
        fints[s, FI_HLEN] = hlen
    filled = 0
    for i in range(stop - start):
        if row[MASK0 + off + i] == 0:
            row[MASK0 + off + i] = 1
            row[HDR_ROOM + off + i] = buf[start + i]
            filled += 1
    fints[s, FI_FILLED] += filled
    if upper > fints[s, FI_SIZE]:
        fints[s, FI_SIZE] = upper
    if info[fr.F_FRAG_MF] == 0:
        fints[s, FI_LAST] = 1
    fints[s, FI_PIECES] += 1
    fints[s, FI_UNCOUNTED] += weight
    if fints[s, FI_LAST] and fints[s, FI_HLEN] >= 0 and fints[s, FI_FILLED] == fints[s, FI_SIZE]:
        hlen = fints[s, FI_HLEN]
        h = HDR_ROOM - hlen
        n = hlen + fints[s, FI_SIZE]
        if ver == 4:
            row[h + 2], row[h + 3] = (n >> 8) & 0xFF, n & 0xFF
        else:
            row[h + 4], row[h + 5] = ((n - 40) >> 8) & 0xFF, (n - 40) & 0xFF
        fints[s, FI_TS] = NEVER  # in use until the caller releases it: never given up for age
        return COMPLETE, s
    return PENDING, s


@njit(cache=True)
def datagram(fints, s):
    """(start, end) of slot s's reassembled datagram in its data row."""
    return HDR_ROOM - fints[s, FI_HLEN], HDR_ROOM + fints[s, FI_SIZE]
