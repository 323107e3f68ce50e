"""Every packet's metadata (time, wire length, MACs, addresses, ports, protocol) of a capture,
and the map from packets to the flows of semiflow's flow table.

Kitsune needs ALL packets, not only the selected payload packets the flow store keeps. Frames
are parsed by the kernels the flow table uses (detector.sample.frame), down to the innermost
tunnelled IP level (detector.sample.tunnel.parse_innermost), so addresses, ports and ICMP
"ports" agree with flows.parquet; a UDP tunnel's frame maps to the inner flow, not the outer
one. Frames it cannot parse (ARP, fragments: not reassembled here, other protocols) are kept
with whatever was parsed, ports 0 (MACs as addresses when not IP).
The capture is read into memory whole (pcap or pcapng, gzip transparent); for pcapng (dpkt's
reader, first interface's link type) the wire length is the captured length.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import dpkt
import numpy as np
import pandas as pd
from numba import njit

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample import tunnel as tn

from .capture import PCAP_MAGICS, CaptureError, open_capture
from .flowstore import _addresses


@dataclass
class PacketMeta:
    """Column arrays, one entry per frame in capture order (int64 unless said)."""

    ts: np.ndarray          # float64 epoch seconds
    size: np.ndarray        # wire length of the frame
    src_mac: np.ndarray     # 48-bit MAC as an integer; 0 where the link type has none
    dst_mac: np.ndarray
    ip_ver: np.ndarray      # 4, 6, or 0 (not IP: the MACs stand in as addresses)
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    parsed: np.ndarray      # bool: parse_frame accepted the frame (a flow-table packet)

    def __len__(self) -> int:
        return len(self.ts)


@njit(cache=True)
def _pcap_records(buf, swap, nsec):
    """(ts, wire length, data start, data end) of every complete record of a pcap body."""
    n, pos = 0, 0
    cap = max(16, buf.shape[0] // 32)
    ts, wl = np.zeros(cap), np.zeros(cap, np.int64)
    st, en = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
    while pos + 16 <= buf.shape[0]:
        h = np.zeros(4, np.int64)
        for k in range(4):
            v = np.int64(0)
            for b in range(4):
                byte = np.int64(buf[pos + 4 * k + (3 - b if swap else b)])
                v |= byte << (8 * b)
            h[k] = v
        if pos + 16 + h[2] > buf.shape[0]:
            break
        if n == cap:
            cap *= 2
            ts, wl = np.resize(ts, cap), np.resize(wl, cap)
            st, en = np.resize(st, cap), np.resize(en, cap)
        ts[n] = h[0] + h[1] / (1e9 if nsec else 1e6)
        wl[n] = h[3]
        st[n], en[n] = pos + 16, pos + 16 + h[2]
        pos += 16 + h[2]
        n += 1
    return ts[:n], wl[:n], st[:n], en[:n]


@njit(cache=True)
def _mac(buf, a):
    v = np.int64(0)
    for b in range(6):
        v = (v << 8) | np.int64(buf[a + b])
    return v


@njit(cache=True)
def _parse_all(buf, starts, ends, linktype, out, macs, ok):
    info = np.zeros(fr.NFIELDS, np.int64)
    tmp = np.zeros(fr.NFIELDS, np.int64)
    for i in range(starts.shape[0]):
        a, b = starts[i], ends[i]
        ok[i] = tn.parse_innermost(buf, a, b, linktype, info, tmp) == fr.OK
        out[i, :] = info
        if linktype == fr.LINKTYPE_ETHERNET and b - a >= 14:
            macs[i, 0], macs[i, 1] = _mac(buf, a + 6), _mac(buf, a)
        elif linktype == fr.LINKTYPE_LINUX_SLL and b - a >= 16:
            macs[i, 0] = _mac(buf, a + 6)
        elif linktype == fr.LINKTYPE_LINUX_SLL2 and b - a >= 20:
            macs[i, 0] = _mac(buf, a + 12)


def _read_frames(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray, np.ndarray, int]:
    fh, pcapng, header = open_capture(path)
    try:
        if not pcapng:
            swap, nsec = PCAP_MAGICS[header[:4]]
            linktype = int(np.frombuffer(header[20:24], ">u4" if swap else "<u4")[0]) & 0x0FFFFFFF
            buf = np.frombuffer(fh.read(), np.uint8)
            ts, wl, st, en = _pcap_records(buf, bool(swap), bool(nsec))
            return buf, ts, wl, st, en, linktype
        data = header + fh.read()          # header = the 4 magic bytes already read
    finally:
        fh.close()
    try:
        rd = dpkt.pcapng.Reader(io.BytesIO(data))
        frames = list(rd)
    except (ValueError, dpkt.dpkt.UnpackError) as e:
        raise CaptureError(f"{path}: unreadable pcapng ({e})") from e
    lens = np.array([len(f[1]) for f in frames], np.int64)
    en = np.cumsum(lens)
    st = en - lens
    buf = np.frombuffer(b"".join(f[1] for f in frames), np.uint8)
    return buf, np.array([f[0] for f in frames], np.float64), lens, st, en, rd.idb.linktype


def read_packet_meta(path: str | os.PathLike) -> PacketMeta:
    """Every frame of one capture, in capture order."""
    buf, ts, wl, st, en, linktype = _read_frames(path)
    info = np.zeros((len(ts), fr.NFIELDS), np.int64)
    macs = np.zeros((len(ts), 2), np.int64)
    ok = np.zeros(len(ts), np.bool_)
    if len(ts):
        _parse_all(buf, st, en, linktype, info, macs, ok)
    ver = info[:, fr.F_IPVER]
    has_ip = ((ver == 4) | (ver == 6)) & ((info[:, fr.F_SRC_LO] | info[:, fr.F_SRC_HI]) != 0)
    src_lo = np.where(has_ip, info[:, fr.F_SRC_LO], macs[:, 0])
    dst_lo = np.where(has_ip, info[:, fr.F_DST_LO], macs[:, 1])
    return PacketMeta(
        ts=ts, size=wl, src_mac=macs[:, 0], dst_mac=macs[:, 1],
        ip_ver=np.where(has_ip, ver, 0), src_hi=np.where(has_ip, info[:, fr.F_SRC_HI], 0),
        src_lo=src_lo, dst_hi=np.where(has_ip, info[:, fr.F_DST_HI], 0), dst_lo=dst_lo,
        sport=np.where(ok, info[:, fr.F_SPORT], 0), dport=np.where(ok, info[:, fr.F_DPORT], 0),
        proto=np.where(has_ip, info[:, fr.F_PROTO], 0), parsed=ok)


_PROTO_NAME = {fr.PROTO_TCP: "tcp", fr.PROTO_UDP: "udp", fr.PROTO_ICMP: "icmp",
               fr.PROTO_ICMP6: "icmp"}


def map_packets_to_flows(meta: PacketMeta, flows: pd.DataFrame, tol: float = 1e-6
                         ) -> np.ndarray:
    """int64[n_packets]: the position in `flows` of each packet's flow, -1 for none.

    A packet belongs to the flow with its 5-tuple in either orientation (ICMP: the address
    pair, as the flow table keys it) that started last at or before it, if the packet lies
    within [ts, ts + duration] of that flow (tol seconds of slack)."""
    n = len(meta)
    out = np.full(n, -1, np.int64)
    cand = np.flatnonzero(meta.parsed)
    if not len(cand) or not len(flows):
        return out
    m = {k: np.asarray(getattr(meta, k))[cand] for k in
         ("ip_ver", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto")}
    pname = np.array([_PROTO_NAME.get(int(p), str(int(p))) for p in m["proto"]], object)
    icmp = pname == "icmp"
    src = _addresses(m["ip_ver"], m["src_hi"], m["src_lo"])
    dst = _addresses(m["ip_ver"], m["dst_hi"], m["dst_lo"])
    sp, dp = np.where(icmp, 0, m["sport"]), np.where(icmp, 0, m["dport"])
    pk = _canonical(pname, src, sp, dst, dp)
    pk["ts"], pk["_i"] = np.asarray(meta.ts)[cand], cand
    fproto = flows["proto"].astype(str).to_numpy()
    ficmp = fproto == "icmp"
    fk = _canonical(fproto.astype(object), flows["orig_h"].astype(str).to_numpy(object),
                    np.where(ficmp, 0, flows["orig_p"].to_numpy(np.int64)),
                    flows["resp_h"].astype(str).to_numpy(object),
                    np.where(ficmp, 0, flows["resp_p"].to_numpy(np.int64)))
    start = flows["ts"].to_numpy(np.float64)
    fk["ts"] = start - tol
    fk["_end"] = start + flows["duration"].fillna(0).to_numpy(np.float64) + tol
    fk["_f"] = np.arange(len(flows))
    by = ["p", "a", "pa", "b", "pb"]
    j = pd.merge_asof(pk.sort_values("ts", kind="stable"), fk.sort_values("ts", kind="stable"),
                      on="ts", by=by, direction="backward")
    hit = j["_f"].notna().to_numpy() & (j["ts"].to_numpy() <= j["_end"].to_numpy())
    out[j["_i"].to_numpy()[hit]] = j["_f"].to_numpy()[hit].astype(np.int64)
    return out


def _canonical(proto, a, pa, b, pb) -> pd.DataFrame:
    """Endpoints ordered so both directions of a connection give the same key."""
    pa, pb = np.asarray(pa, np.int64), np.asarray(pb, np.int64)
    a, b = np.asarray(a, object), np.asarray(b, object)
    swap = (a > b) | ((a == b) & (pa > pb))
    return pd.DataFrame({"p": proto, "a": np.where(swap, b, a), "pa": np.where(swap, pb, pa),
                         "b": np.where(swap, a, b), "pb": np.where(swap, pa, pb)})
