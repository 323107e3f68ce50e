"""Why flows from Suricata's pcap-log differ from the raw capture's: a per-flow join, by cause.

The same capture goes two ways: straight into semiflow's flow table (`semiflow extract` /
`score`), and through `suricata -r` whose pcap-log is read by the connector's follower
(`semiflow suricata`). Flows are joined on the flow table's canonical key (the 5-tuple; ICMP:
the address pair) and time: every pcap-log flow belongs to the raw flow whose [first, last]
packet interval holds its first packet. Each raw flow then gets exactly one outcome, and every
outcome other than `same` one cause (CAUSES), checked from the bytes, the timestamps and
Suricata's own eve.json, so that "not yet explained" is a count, not a shrug.
Shared by tests/test_suricata.py and benchmarks/suricata_benchmark.py (--gaps).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin import flowscan as fs
from semiflow.plugin.capture import ZEEK_TIMEOUTS, FlowTable, ScanReport, scan_capture
from semiflow.plugin.community_id import CommunityIds
from semiflow.plugin.flowstore import batch_to_frame
from semiflow.plugin.pcap_follow import PcapLogFollower, pcap_log_files

# Every outcome of a raw flow; all but `same` are mismatches, all but `unexplained` explained.
CAUSES = {
    "same": "one pcap-log flow, identical sample (bytes, directions, packet count)",
    "split_reordered": "several pcap-log flows for one raw flow, each gap shorter than the "
                       "timeout: pcap-log was written out of timestamp order (several Suricata "
                       "worker threads share one file), the capture clock ran ahead and ended "
                       "the flow early",
    "merged": "(some of) its packets went into the pcap-log flow before it on the same "
              "5-tuple: that flow, a piece of a split_reordered one, had not seen the close "
              "(FIN/RST) or the SYN that ended the raw flow before it",
    "stream_depth": "a direction reached stream.reassembly.depth within the sampled packets: "
                    "Suricata logs no further packet of the flow, either direction",
    "app_layer_failed": "Suricata's protocol detection failed (eve app_proto 'failed') and no "
                        "loaded rule inspects the raw TCP stream: Suricata stops reassembling "
                        "and logs no further packet of the flow",
    "timestamp_rounding": "same packets and bytes, timestamps differ by < 1 us: pcap-log "
                          "writes microseconds, the raw capture had nanoseconds",
    "wire_length": "same packets and bytes, another wire length: pcap-log writes the captured "
                   "length as the wire length (the raw capture was cut by its snaplen)",
    "unexplained": "none of the above",
}


@dataclass
class Flow:
    """One finished flow of either path, reduced to what the join and the causes need."""

    key: tuple
    proto: int
    ts: float
    end: float
    nsel: int
    pkts: int                # packets of the flow, both directions
    rows: list[str]          # digest of each selected row (bytes), in order
    dirs: np.ndarray
    pts: np.ndarray
    plen: np.ndarray
    pay: np.ndarray          # transport payload bytes of each selected row
    seq_end: np.ndarray      # TCP: sequence number after each selected row's data
    cid: str = ""
    cid_alias: str | None = None   # Suricata < 7.0.12's id when both addresses are equal


@dataclass
class Breakdown:
    """Outcome counts over raw flows, flow totals of both paths, pcap-log order, examples."""

    raw_flows: int = 0
    log_flows: int = 0
    outcomes: Counter = field(default_factory=Counter)
    extra_log_flows: int = 0        # pcap-log flows beyond one per raw flow (splits)
    orphan_log_flows: int = 0       # pcap-log flows inside no raw flow
    missing: int = 0                # raw flows with no pcap-log flow at all
    late_packets: int = 0           # pcap-log packets older than one already written
    max_lag: float = 0.0            # seconds the oldest such packet was behind
    examples: dict = field(default_factory=dict)

    @property
    def mismatched(self) -> int:
        return self.raw_flows - self.outcomes["same"]

    @property
    def unexplained(self) -> int:
        return (self.outcomes["unexplained"] + self.orphan_log_flows + self.missing)

    def add(self, other: Breakdown) -> None:
        for name in ("raw_flows", "log_flows", "extra_log_flows", "orphan_log_flows",
                     "missing", "late_packets"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_lag = max(self.max_lag, other.max_lag)
        self.outcomes.update(other.outcomes)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)

    def lines(self) -> list[str]:
        out = [f"raw capture: {self.raw_flows} flows; pcap-log: {self.log_flows} flows "
               f"({self.extra_log_flows} extra from splits, {self.orphan_log_flows} in no raw "
               f"flow, {self.missing} raw flows absent)",
               f"pcap-log order: {self.late_packets} packets written after a newer one "
               f"(up to {self.max_lag:.1f} s behind)",
               f"identical samples: {self.outcomes['same']}/{self.raw_flows}; mismatched "
               f"{self.mismatched}, unexplained {self.unexplained}"]
        for cause in CAUSES:
            if cause != "same" and self.outcomes[cause]:
                out.append(f"  {cause:20s} {self.outcomes[cause]:7d}  {CAUSES[cause]}")
        return out


def _payload(row: np.ndarray, proto: int) -> tuple[int, int]:
    """Transport payload length and its end in TCP sequence space, from a sample row."""
    b = [int(x) for x in row[:80]]
    if b[0] >> 4 == 4:
        ip_pay = (b[2] << 8 | b[3]) - (b[0] & 15) * 4
    else:   # IPv6: the payload length (extension headers, rare with TCP, counted as payload)
        ip_pay = b[4] << 8 | b[5]
    if proto != 6:
        return max(ip_pay - 8, 0), 0
    pay = max(ip_pay - (b[72] >> 4) * 4, 0)
    seq = b[64] << 24 | b[65] << 16 | b[66] << 8 | b[67]
    syn = (b[73] & 0x02) != 0
    return pay, (seq + pay + syn) & 0xFFFFFFFF


def flows_of(batches, ids: CommunityIds | None = None) -> list[Flow]:
    """Finished flow batches (either path) as Flow records."""
    ids = ids or CommunityIds()
    out = []
    for b in batches:
        frame = batch_to_frame(b, "x")
        cids = ids.for_flows(frame)
        alias = [ids.suricata_same_host(r.proto, r.orig_h, r.resp_h, r.orig_p, r.resp_p,
                                        r.ip_version) if r.orig_h == r.resp_h else None
                 for r in frame.itertuples(index=False)]
        data = b.data
        for i in range(len(b)):
            n = int(b.ints[i, fs.I_NSEL])
            proto = int(b.ints[i, fs.I_PROTO])
            rows = data[i, :n]
            pays = [_payload(r, proto) for r in rows]
            out.append(Flow(
                key=tuple(int(x) for x in b.ints[i, :fs.K_PROTO + 1]), proto=proto,
                ts=float(b.times[i, 0]), end=float(b.times[i, 1]), nsel=n,
                pkts=int(b.ints[i, fs.I_ORIG_PKTS] + b.ints[i, fs.I_RESP_PKTS]),
                rows=[hashlib.blake2b(r.tobytes(), digest_size=12).hexdigest() for r in rows],
                dirs=b.direction[i, :n].copy(), pts=b.pkt_ts[i, :n].copy(),
                plen=b.pkt_len[i, :n].copy(), pay=np.array([p for p, _ in pays], np.int64),
                seq_end=np.array([e for _, e in pays], np.int64),
                cid=cids[i], cid_alias=alias[i]))
    return out


def raw_flows(capture: Path, spec: FlowSampleSpec) -> list[Flow]:
    return flows_of(scan_capture(capture, FlowTable(spec), ScanReport()))


def log_flows(pcap_dir: Path, spec: FlowSampleSpec) -> list[Flow]:
    f = PcapLogFollower(pcap_dir, FlowTable(spec))
    return flows_of(list(f.poll(final=True)) + list(f.finish()))


def pcap_log_order(pcap_dir: Path) -> tuple[int, float]:
    """Packets in pcap-log older than one written before them, and the largest lag (s)."""
    late, lag, newest = 0, 0.0, -1.0
    for p in pcap_log_files(pcap_dir):
        data = p.read_bytes()
        if len(data) < 24:
            continue
        e = ">" if data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
        scale = 1e-9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
        pos = 24
        while pos + 16 <= len(data):
            sec, frac, caplen = struct.unpack_from(e + "III", data, pos)
            ts = sec + frac * scale
            if ts < newest:
                late += 1
                lag = max(lag, newest - ts)
            newest = max(newest, ts)
            pos += 16 + caplen
    return late, lag


def eve_app_protos(eve: Path) -> dict[str, list[tuple[float, float, str]]]:
    """community_id -> (start, end, app_proto) of each of Suricata's flow records."""
    out: dict[str, list] = {}
    if not Path(eve).exists():
        return out
    with open(eve) as fh:
        for line in fh:
            if '"event_type":"flow"' not in line:
                continue
            r = json.loads(line)
            t = [datetime.strptime(r["flow"][k], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                 for k in ("start", "end")]
            out.setdefault(r.get("community_id", ""), []).append(
                (t[0], t[1], r.get("app_proto", "")))
    return out


def _app_proto(eve: dict, f: Flow) -> str:
    for start, end, app in eve.get(f.cid, []) + eve.get(f.cid_alias, []):
        if start - 1.0 <= f.ts <= end + 1.0:
            return app
    return ""


def _inactivity(proto: int) -> float:
    return ZEEK_TIMEOUTS["tcp"] if proto == 6 else ZEEK_TIMEOUTS["udp"]


def _depth_reached(raw: Flow, m: int, depth: int) -> bool:
    """Had a direction's stream reached the depth before raw packet m, or does m cross it?

    Suricata counts the depth in sequence space from the first byte (the ISN + 1, or the
    first packet seen): data the capture lost counts too.
    """
    base: dict[int, int] = {}
    reached = [0, 0]

    def offset(j: int) -> int:
        d = int(raw.dirs[j])
        start = (int(raw.seq_end[j]) - int(raw.pay[j])) & 0xFFFFFFFF
        base.setdefault(d, start if raw.pay[j] else int(raw.seq_end[j]))
        return (int(raw.seq_end[j]) - base[d]) & 0xFFFFFFFF

    for j in range(min(m, raw.nsel)):
        reached[int(raw.dirs[j])] = max(reached[int(raw.dirs[j])], offset(j))
    if max(reached) >= depth:
        return True
    return m < raw.nsel and offset(m) > depth


def classify(raw: Flow, got: list[Flow], depth: int, eve: dict, reordered: bool) -> str:
    """The outcome of one raw flow, given the pcap-log flows that fell inside it."""
    if len(got) > 1:
        ends = np.maximum.accumulate([f.end for f in got])
        gaps = [b.ts - e for e, b in zip(ends, got[1:])]
        if reordered and all(g <= _inactivity(raw.proto) for g in gaps):
            return "split_reordered"
        return "unexplained"
    log = got[0]
    if log.nsel == raw.nsel and log.rows == raw.rows and np.array_equal(log.dirs, raw.dirs):
        if not np.allclose(log.pts, raw.pts, rtol=0, atol=1e-6):
            return "unexplained"
        if not np.array_equal(log.pts, raw.pts):
            return "timestamp_rounding"
        if not np.array_equal(log.plen, raw.plen):
            return "wire_length"
        return "same"
    m = 0   # the first sampled packet where the two differ
    while m < min(log.nsel, raw.nsel) and log.rows[m] == raw.rows[m] \
            and log.dirs[m] == raw.dirs[m]:
        m += 1
    if log.pkts >= raw.pkts:
        return "unexplained"     # not a gap: Suricata logged as many packets, other bytes
    if raw.proto == 6 and _depth_reached(raw, m, depth):
        return "stream_depth"
    if raw.proto == 6 and _app_proto(eve, raw) == "failed":
        return "app_layer_failed"
    return "unexplained"


def compare(raw: list[Flow], log: list[Flow], depth: int, eve: dict,
            order: tuple[int, float] = (0, 0.0), examples: int = 3) -> Breakdown:
    """Join the two paths' flows and classify every raw flow (see the module docstring)."""
    bd = Breakdown(raw_flows=len(raw), log_flows=len(log), late_packets=order[0],
                   max_lag=order[1])
    by_key: dict[tuple, list[Flow]] = {}
    for f in raw:
        by_key.setdefault(f.key, []).append(f)
    for fl in by_key.values():
        fl.sort(key=lambda f: f.ts)
    starts = {k: [f.ts for f in v] for k, v in by_key.items()}
    inside: dict[int, list[Flow]] = {}
    for f in sorted(log, key=lambda f: f.ts):
        cands = by_key.get(f.key, [])
        i = bisect.bisect_right(starts.get(f.key, []), f.ts + 1e-6) - 1
        if i >= 0 and f.ts <= cands[i].end + 1e-6:
            inside.setdefault(id(cands[i]), []).append(f)
        else:
            bd.orphan_log_flows += 1
    log_by_key: dict[tuple, list[Flow]] = {}
    for f in log:
        log_by_key.setdefault(f.key, []).append(f)
    reordered = order[0] > 0
    for f in raw:
        got = inside.get(id(f), [])
        bd.extra_log_flows += max(len(got) - 1, 0)
        spilled = any(g.ts < f.ts - 1e-6 and g.end >= f.ts - 1e-6
                      for g in log_by_key.get(f.key, []))
        if spilled and reordered:
            cause = "merged"
        elif got:
            cause = classify(f, got, depth, eve, reordered)
        else:
            bd.missing += 1
            continue
        bd.outcomes[cause] += 1
        ex = bd.examples.setdefault(cause, [])
        if len(ex) < examples:
            ex.append((f.cid, f.ts))
    return bd


def suricata_depth(config: Path) -> int:
    """stream.reassembly.depth in bytes, as Suricata reads it from config."""
    r = subprocess.run(["suricata", "-c", str(config), "--dump-config"], capture_output=True,
                       text=True, check=True)
    for line in r.stdout.splitlines():
        if line.startswith("stream.reassembly.depth = "):
            v = line.split("=", 1)[1].strip().lower()
            unit = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}.get(v[-2:], 1)
            return int(v[:-2] if unit > 1 else v) * unit
    return 1 << 20     # Suricata's default


def explain(capture: Path, suricata_out: Path, spec: FlowSampleSpec,
            depth: int = 16384) -> Breakdown:
    """The breakdown of one capture against Suricata's output directory for it."""
    return compare(raw_flows(capture, spec), log_flows(suricata_out, spec), depth,
                   eve_app_protos(suricata_out / "eve.json"), pcap_log_order(suricata_out))
