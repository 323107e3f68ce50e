"""Suricata's eve.json: a follower (tail with rotation), a flow index, semiflow EVE records.

Every EVE event Suricata writes about a flow (flow, alert, anomaly, app-layer events) carries
`flow_id` and, with `community-id: true`, `community_id`. The index maps community_id ->
Suricata flows so that a verdict on one of semiflow's flows can name Suricata's flow_id; the
community_id alone is the join key when Suricata has not logged the flow yet.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

EVENT_TYPE = "semiflow"
_PROTO_EVE = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "icmp6": "IPv6-ICMP"}


def eve_timestamp(ts: float) -> str:
    """Suricata's EVE timestamp format: 2016-08-02T02:19:33.025824+0000."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def parse_eve_time(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


@dataclass
class EveCounters:
    lines: int = 0
    records: int = 0
    malformed: int = 0       # lines that are not a JSON object
    rotations: int = 0       # eve.json replaced (new inode) or truncated under us
    malformed_examples: list[str] = field(default_factory=list)


class EveFollower:
    """Tail eve.json: complete lines only, survives rotation (rename or copy-truncate).

    A line without its newline yet is left for the next poll. A line that is not a JSON
    object is counted (and the first few kept for the report), never fatal.
    """

    def __init__(self, path: str | os.PathLike, max_line: int = 16 << 20):
        self.path = Path(path)
        self.max_line = max_line
        self.counters = EveCounters()
        self._fh = None
        self._ino: int | None = None
        self._pos = 0
        self._partial = b""
        self._skip_rest = False   # inside a runaway line that was counted and dropped

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self._fh, self._ino, self._pos, self._partial = fh, os.fstat(fh.fileno()).st_ino, 0, b""
        self._skip_rest = False
        return True

    def _read_all(self) -> list[dict]:
        out: list[dict] = []
        while True:
            chunk = self._fh.read(1 << 20)
            if not chunk:
                break
            self._pos += len(chunk)
            data = self._partial + chunk
            lines = data.split(b"\n")
            self._partial = lines.pop()
            if self._skip_rest:  # the rest of a dropped runaway line: not a line of its own
                if not lines:
                    self._partial = b""
                    continue
                lines.pop(0)
                self._skip_rest = False
            if len(self._partial) > self.max_line:   # a runaway line: count it, drop it
                self._bad(self._partial[:80])
                self._partial = b""
                self._skip_rest = True
            for line in lines:
                self._line(line, out)
        return out

    def _line(self, line: bytes, out: list[dict]) -> None:
        if not line.strip():
            return
        self.counters.lines += 1
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            rec = None
        if not isinstance(rec, dict):
            self._bad(line[:80])
            return
        self.counters.records += 1
        out.append(rec)

    def _bad(self, head: bytes) -> None:
        self.counters.malformed += 1
        if len(self.counters.malformed_examples) < 5:
            self.counters.malformed_examples.append(head.decode("utf-8", "replace"))

    def poll(self) -> list[dict]:
        """New complete records since the last poll."""
        if self._fh is None and not self._open():
            return []
        out = self._read_all()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return out            # rotated away, the new file not there yet
        if st.st_ino != self._ino or st.st_size < self._pos:
            # rotated (renamed: the old file is drained above) or truncated: start over
            self.counters.rotations += 1
            if self._partial:
                self._line(self._partial, out)
            self._fh.close()
            self._fh = None
            if self._open():
                out += self._read_all()
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class SuricataFlow:
    flow_id: int
    community_id: str
    start: float | None
    end: float | None
    src_ip: str | None = None
    src_port: int | None = None
    dest_ip: str | None = None
    dest_port: int | None = None
    proto: str | None = None


class FlowIndex:
    """community_id -> Suricata flows seen in eve.json (bounded: the oldest ids are dropped)."""

    def __init__(self, max_ids: int = 1_000_000):
        self.max_ids = max_ids
        self._by_cid: OrderedDict[str, dict[int, SuricataFlow]] = OrderedDict()
        self.flow_records = 0

    def __len__(self) -> int:
        return len(self._by_cid)

    def add(self, rec: dict) -> None:
        cid, fid = rec.get("community_id"), rec.get("flow_id")
        if not isinstance(cid, str) or not isinstance(fid, int):
            return
        flows = self._by_cid.get(cid)
        if flows is None:
            flows = self._by_cid[cid] = {}
            if len(self._by_cid) > self.max_ids:
                self._by_cid.popitem(last=False)
        else:
            self._by_cid.move_to_end(cid)
        f = flows.get(fid)
        if f is None:
            f = flows[fid] = SuricataFlow(fid, cid, None, None, rec.get("src_ip"),
                                          rec.get("src_port"), rec.get("dest_ip"),
                                          rec.get("dest_port"), rec.get("proto"))
        if rec.get("event_type") == "flow" and isinstance(rec.get("flow"), dict):
            self.flow_records += 1
            try:
                f.start = parse_eve_time(rec["flow"]["start"])
                f.end = parse_eve_time(rec["flow"]["end"])
            except (KeyError, TypeError, ValueError):
                pass

    def lookup(self, cid: str, first_ts: float, slack: float = 1.0) -> SuricataFlow | None:
        """Suricata's flow for community_id cid that holds a packet at first_ts.

        A flow record whose [start, end] holds first_ts wins (the id repeats when a 5-tuple
        is reused); failing that, a flow known so far only from other events (alert,
        anomaly, app-layer: still running in Suricata); else None.
        """
        flows = self._by_cid.get(cid)
        if not flows:
            return None
        running = None
        for f in flows.values():
            if f.start is None:
                running = f
            elif f.start - slack <= first_ts <= (f.end or f.start) + slack:
                return f
        return running

    def flows(self) -> list[SuricataFlow]:
        return [f for d in self._by_cid.values() for f in d.values()]


def semiflow_record(*, ts: float, community_id: str, flow_id: int | None, src_ip: str,
                    src_port: int, dest_ip: str, dest_port: int, proto: str,
                    score: float | None, threshold: float, verdict: str, status: str,
                    model: str, model_version: str, packets_used: int, uid: str,
                    pcap_file: str | None = None) -> dict:
    """One EVE line of event_type `semiflow` (Suricata's field names and layout)."""
    rec = {"timestamp": eve_timestamp(ts)}
    if flow_id is not None:
        rec["flow_id"] = int(flow_id)
    rec.update({
        "event_type": EVENT_TYPE, "src_ip": src_ip, "src_port": int(src_port),
        "dest_ip": dest_ip, "dest_port": int(dest_port),
        "proto": _PROTO_EVE.get(proto, proto.upper()), "community_id": community_id,
        "semiflow": {
            "score": None if score is None else round(float(score), 6),
            "threshold": round(float(threshold), 6) if math.isfinite(threshold) else None,
            "verdict": verdict, "status": status, "model": model,
            "model_version": model_version, "packets_used": int(packets_used),
            "uid": uid, "joined": flow_id is not None,
        },
    })
    if pcap_file:
        rec["semiflow"]["pcap_file"] = pcap_file
    return rec
