"""What zeek_scripts/collect.zeek does per connection, in Python: capture -> request events.

Used by tests and benchmarks to produce exactly the flow_request events the Zeek package
would publish for a capture, without Zeek. Connections are cut as plugin/flowscan.py cuts
them (Zeek's keying, originator rule, timeouts); per connection the script keeps the frames
whose transport payload is > 0 (all frames with select_all), cuts them at snaplen, stops at
k, and publishes at the k-th frame, at max_wait after the first kept frame (collect.zeek
arms its timer there), or at removal. Connections with no such frame are logged locally
as no_payload (no request), at removal.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import dpkt
import numpy as np

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample import tunnel as tn
from semiflow.plugin.capture import ZEEK_TIMEOUTS

from . import zeek_wire as zw

PROTO_NAME = {fr.PROTO_TCP: "tcp", fr.PROTO_UDP: "udp", fr.PROTO_ICMP: "icmp",
              fr.PROTO_ICMP6: "icmp"}


@dataclass
class ZeekSideConfig:
    """The SemiFlow:: options that shape requests (main.zeek defaults)."""

    k: int = 8
    snaplen: int = 1664
    select_all: bool = True
    max_wait: float = 10.0
    shards: int = 1
    request_topic: str = zw.DEFAULT_REQUEST_TOPIC
    reply_topic: str = zw.DEFAULT_VERDICT_TOPIC


@dataclass
class Conn:
    uid: str
    first_ts: float
    last_ts: float
    orig: tuple
    resp: tuple
    proto: int
    flags: int = 0
    frames: list = field(default_factory=list)
    done: bool = False
    first_sel: float = math.inf  # ts of the first kept frame: max_wait counts from here


@dataclass
class ZeekEvent:
    """One thing the script does: publish a request (topic, args) or log locally."""

    kind: str            # "request" | "local"
    ts: float            # network time when it happened
    uid: str
    conn_id: tuple       # (orig_h, orig_p "n/proto", resp_h, resp_p)
    first_ts: float
    topic: str = ""
    args: list | None = None
    status: str = ""
    detail: str = ""

    def message(self) -> dict:
        """The request as the JSON v1 data-message Zeek sends."""
        return zw.event_message(self.topic, zw.FLOW_REQUEST, self.args)


def _addr(ver: int, hi: int, lo: int) -> str:
    import ipaddress
    if ver == 4:
        return str(ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(((int(hi) & (2**64 - 1)) << 64) | (int(lo) & (2**64 - 1))))


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[bytes, int, float, int]]:
    """(frame bytes, linktype, ts, wire_len) of every record, via dpkt."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    fh = gzip.open(path, "rb") if gz else open(path, "rb")
    with fh:
        head = fh.read(4)
        fh.seek(0)
        if head == b"\x0a\x0d\x0d\x0a":
            rd = dpkt.pcapng.Reader(fh)
            for ts, buf in rd:
                yield buf, rd.datalink(), float(ts), len(buf)
        else:
            rd = dpkt.pcap.Reader(fh)
            lt = rd.datalink()
            for hdr_ts, buf in rd:
                yield buf, lt, float(hdr_ts), len(buf)


def _payload_len(buf: np.ndarray, info: np.ndarray) -> int:
    """collect.zeek payload_len(): tcp dl, udp ulen-8, ICMPv4 ip len-hl-8, IPv6 plen-8."""
    proto = int(info[fr.F_PROTO])
    if proto == fr.PROTO_TCP or proto == fr.PROTO_ICMP:
        return int(info[fr.F_PAYLEN])
    if proto == fr.PROTO_UDP:
        ulen = (int(buf[info[fr.F_L4OFF] + 4]) << 8) | int(buf[info[fr.F_L4OFF] + 5])
        return max(ulen - 8, 0)
    l3 = int(info[fr.F_L3OFF])
    plen = (int(buf[l3 + 4]) << 8) | int(buf[l3 + 5])
    return max(plen - 8, 0)


class ZeekSelection:
    """Feed frames in capture order; collect ZeekEvents in the order Zeek would emit them."""

    def __init__(self, cfg: ZeekSideConfig | None = None, uid_prefix: str = "C"):
        self.cfg = cfg or ZeekSideConfig()
        self.conns: dict[tuple, Conn] = {}
        self.events: list[ZeekEvent] = []
        self.uid_prefix = uid_prefix
        self._n = 0
        self._shard = 0
        self._info = np.zeros(fr.NFIELDS, np.int64)
        self.linktype = 1

    def _timeout(self, c: Conn) -> float:
        if c.proto == fr.PROTO_TCP:
            f = c.flags
            if (f & 1 and f & 4) or f & 2:  # both FIN, or a RST: Zeek's close delay
                return ZEEK_TIMEOUTS["close"]
            return ZEEK_TIMEOUTS["tcp"]
        return ZEEK_TIMEOUTS["udp" if c.proto == fr.PROTO_UDP else "icmp"]

    def _conn_id(self, c: Conn) -> tuple:
        p = PROTO_NAME[c.proto]
        return (c.orig[0], f"{c.orig[1]}/{p}", c.resp[0], f"{c.resp[1]}/{p}")

    def _flush(self, c: Conn, now: float) -> None:
        if c.done:
            return
        c.done = True
        cid = self._conn_id(c)
        if not c.frames:
            self.events.append(ZeekEvent("local", now, c.uid, cid, c.first_ts,
                                         status="no_payload",
                                         detail="no packet carried payload"))
            return
        topic = f"{self.cfg.request_topic}{self._shard % self.cfg.shards}/"
        self._shard += 1
        frames = [f[0] for f in c.frames]
        args = zw.flow_request_args(c.uid, self.cfg.reply_topic, cid[0], cid[1], cid[2],
                                    cid[3], self.linktype, self.cfg.k, self.cfg.snaplen,
                                    frames, [f[1] for f in c.frames],
                                    [f[2] for f in c.frames], [f[3] for f in c.frames])
        self.events.append(ZeekEvent("request", now, c.uid, cid, c.first_ts, topic, args))
        c.frames = []

    def _expire(self, now: float) -> None:
        for key, c in list(self.conns.items()):
            if not c.done and now - c.first_sel >= self.cfg.max_wait:
                self._flush(c, c.first_sel + self.cfg.max_wait)
            if now - c.last_ts > self._timeout(c):
                self._flush(c, now)
                del self.conns[key]

    def packet(self, raw: bytes, linktype: int, ts: float, wire_len: int) -> None:
        """One frame: every IP level Zeek makes a connection of raises new_packet with the
        whole frame (tunnels: detector/sample/tunnel.py, as plugin/flowscan.py descends). A
        fragment is Zeek's to reassemble; collect.zeek skips the frame of a reassembled
        datagram, so here a first piece counts for its connection without its frame and a
        later piece is ignored (Zeek would count the datagram when its last piece arrives)."""
        self.linktype = linktype
        buf = np.frombuffer(raw, np.uint8)
        info = self._info
        reason = fr.parse_frame(buf, 0, buf.shape[0], int(linktype), info)
        depth = 0
        while True:
            if reason == fr.OK:
                keep = not info[fr.F_FRAG]
                c = self._on_packet(buf, info, raw, ts, wire_len, keep)
                if info[fr.F_PROTO] != fr.PROTO_UDP or not keep:
                    return
                start, lt, _ = tn.tunnel_inner(buf, info, c.resp[1])
            elif reason == fr.SKIP_UNTRACKED_PROTO:
                start, lt, _ = tn.tunnel_inner(buf, info, tn.ANY_PORT)
            else:
                return  # not a connection packet (Zeek raises no new_packet for it)
            if start < 0 or depth >= tn.MAX_DEPTH:
                return
            reason = tn.parse_inner(buf, start, lt, int(info[fr.F_IPEND]), info)
            depth += 1

    def _on_packet(self, buf: np.ndarray, info: np.ndarray, raw: bytes, ts: float,
                   wire_len: int, keep: bool) -> Conn:
        """new_packet for the connection of the IP level parsed into info."""
        proto = int(info[fr.F_PROTO])
        ver = int(info[fr.F_IPVER])
        src = (_addr(ver, info[fr.F_SRC_HI], info[fr.F_SRC_LO]), int(info[fr.F_SPORT]))
        dst = (_addr(ver, info[fr.F_DST_HI], info[fr.F_DST_LO]), int(info[fr.F_DPORT]))
        icmp = proto in (fr.PROTO_ICMP, fr.PROTO_ICMP6)
        ka, kb = ((src[0], 0), (dst[0], 0)) if icmp else (src, dst)
        key = (min(ka, kb), max(ka, kb), proto)
        tflags = int(info[fr.F_TCPFLAGS])
        syn_only = proto == fr.PROTO_TCP and tflags & 0x02 and not tflags & 0x10
        c = self.conns.get(key)
        if c is not None:
            closed = (c.flags & 1 and c.flags & 4) or c.flags & 2
            if ts - c.last_ts > self._timeout(c) or (closed and syn_only):
                self._flush(c, ts)
                del self.conns[key]
                c = None
        if c is None:
            self._n += 1
            flip = proto == fr.PROTO_TCP and (tflags & 0x12) == 0x12
            orig, resp = (dst, src) if flip else (src, dst)
            c = Conn(f"{self.uid_prefix}{self._n:08d}", ts, ts, orig, resp, proto)
            self.conns[key] = c
        c.last_ts = max(c.last_ts, ts)
        is_orig = src[0] == c.orig[0] and (icmp or src[1] == c.orig[1])
        if proto == fr.PROTO_TCP:
            fin, rst = tflags & 0x01, tflags & 0x04
            c.flags |= (1 if is_orig else 4) if fin else 0
            c.flags |= 2 if rst else 0
        if c.done:
            return c  # collect.zeek: early return once published
        if not c.done and ts - c.first_sel >= self.cfg.max_wait:
            self._flush(c, c.first_sel + self.cfg.max_wait)
            return c
        if not self.cfg.select_all and _payload_len(buf, info) == 0:
            return c
        if not keep:
            return c
        data = raw[:self.cfg.snaplen] if self.cfg.snaplen else raw
        if not c.frames:
            c.first_sel = ts
        c.frames.append((data, ts, wire_len, bool(is_orig)))
        if len(c.frames) >= self.cfg.k:
            self._flush(c, ts)
        return c

    def finish(self, now: float = math.inf) -> list[ZeekEvent]:
        for c in self.conns.values():
            self._flush(c, c.last_ts if math.isinf(now) else now)
        self.conns.clear()
        return self.events


class BatchPolicy:
    """batch.zeek's publishing rule on a clock the caller supplies (network time in Zeek):
    a finished flow joins the buffer; the buffer goes out when it holds batch_size flows,
    or at once if nothing was published within the last batch_wait (a quiet sensor adds no
    delay), or batch_wait after the flow that started it (`due`), or at the end (`flush`)."""

    def __init__(self, batch_size: int = 64, batch_wait: float = 0.02):
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.buf: list = []
        self.deadline = math.inf
        self.last_publish = -math.inf

    def _publish(self, now: float) -> list:
        out, self.buf = self.buf, []
        self.deadline = math.inf
        self.last_publish = now
        return out

    def add(self, item, now: float) -> list | None:
        """Queue one flow; returns the batch to publish now, if any."""
        self.buf.append(item)
        if len(self.buf) >= self.batch_size or now - self.last_publish >= self.batch_wait:
            return self._publish(now)
        if len(self.buf) == 1:
            self.deadline = now + self.batch_wait
        return None

    def due(self, now: float) -> list | None:
        """The buffered batch if its batch_wait timer has fired by `now`."""
        return self._publish(now) if self.buf and now >= self.deadline else None

    def flush(self, now: float) -> list | None:
        return self._publish(now) if self.buf else None


def capture_to_events(paths, cfg: ZeekSideConfig | None = None,
                      uid_prefix: str = "C") -> list[ZeekEvent]:
    """Every capture in turn (flows never span files, as in plugin/capture.py)."""
    out: list[ZeekEvent] = []
    for i, p in enumerate(paths):
        sel = ZeekSelection(cfg, uid_prefix=f"{uid_prefix}{i:04d}x")
        last = None
        for raw, lt, ts, wl in iter_frames(p):
            if last is None or ts - last >= 1.0:
                sel._expire(ts)
                last = ts
            sel.packet(raw, lt, ts, wl)
        out.extend(sel.finish())
    return out
