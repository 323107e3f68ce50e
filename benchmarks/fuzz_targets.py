"""The fuzz targets of benchmarks/fuzz.py: every parser of input semiflow does not control,
each driven through the code the product runs (not a private copy of it).

A target builds its seeds once (`setup`), makes one mutated input per case (`make`, from a
seeded random.Random) and runs it (`run`), which returns "ok" (accepted) or "skip" (rejected
or partly skipped, and counted by the product's own counters: extract's per-reason skip
counts and bad files, the serve loop's error statuses and error counters, the EVE
follower's malformed count, the allow-list's invalid count). Raising one of the target's
`clean` types is a documented clean rejection (also a counted skip); any other exception,
and an `Uncounted` (input that vanished without being counted), is a crash.
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fuzz_mutate import (
    dumps,
    extreme,
    mutate_bytes,
    mutate_json,
    mutate_text,
    set_uint,
    weird_value,
)

ROOT = Path(__file__).resolve().parent.parent
LAB_SAMPLE = ROOT / "semiflow" / "data" / "lab-sample" / "capture.pcap.gz"
SEED_MAX_BYTES = 96 << 10   # corpus captures up to this size become seeds
SEED_FILES = 48


class Uncounted(AssertionError):
    """An input the product neither processed nor counted (silent data loss)."""


@dataclass
class Target:
    name: str
    what: str
    setup: Callable[[Path, Path | None], object]
    make: Callable[[object, random.Random], object]
    run: Callable[[object, object], str]
    clean: tuple[type[BaseException], ...] = ()
    save: Callable[[object, Path], None] = field(default=lambda x, p: p.write_text(repr(x)))


# ---- seeds --------------------------------------------------------------------------------
def _corpus_seeds(corpus: Path | None) -> list[Path]:
    """Small corpus captures, spread over sources and formats (deterministic)."""
    if corpus is None or not (corpus / "manifest.csv").exists():
        return []
    rows = sorted(csv.DictReader(open(corpus / "manifest.csv")), key=lambda r: r["file"])
    small = [corpus / r["file"] for r in rows if (corpus / r["file"]).exists()
             and 200 < (corpus / r["file"]).stat().st_size <= SEED_MAX_BYTES]
    step = max(1, len(small) // SEED_FILES)
    return small[::step][:SEED_FILES]


def _lab_slice(n_records: int = 300) -> bytes:
    """The first records of the bundled lab capture (always there: no corpus needed)."""
    raw = gzip.decompress(LAB_SAMPLE.read_bytes())
    big = raw[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    pos = 24
    for _ in range(n_records):
        if pos + 16 > len(raw):
            break
        pos += 16 + int.from_bytes(raw[pos + 8:pos + 12], "big" if big else "little")
    return raw[:pos]


def capture_seeds(corpus: Path | None) -> list[bytes]:
    seeds = [_lab_slice()]
    for p in _corpus_seeds(corpus):
        b = p.read_bytes()
        seeds.append(gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b)
    return seeds


# ---- capture structure: where the length fields are ----------------------------------------
def pcap_records(data: bytes, limit: int = 4000) -> tuple[bool, list[tuple[int, int]]]:
    """(big-endian, [(record offset, caplen)]) of a classic pcap, as far as it walks."""
    big = data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    out, pos = [], 24
    while pos + 16 <= len(data) and len(out) < limit:
        caplen = int.from_bytes(data[pos + 8:pos + 12], "big" if big else "little")
        out.append((pos, caplen))
        pos += 16 + caplen
    return big, out


def pcapng_blocks(data: bytes, limit: int = 4000) -> list[tuple[int, int, int, bool]]:
    """[(offset, type, length, big-endian)] of a pcapng file, as far as it walks."""
    out, pos, big = [], 0, False
    while pos + 12 <= len(data) and len(out) < limit:
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            big = data[pos + 8:pos + 12] == b"\x1a\x2b\x3c\x4d"
        order = "big" if big else "little"
        btype = int.from_bytes(data[pos:pos + 4], order)
        blen = int.from_bytes(data[pos + 4:pos + 8], order)
        out.append((pos, btype, blen, big))
        if blen < 12:
            break
        pos += blen
    return out


def mutate_frame_fields(rng: random.Random, b: bytearray, start: int, end: int,
                        linktype: int) -> None:
    """Set one IP/transport length-like field of the frame b[start:end] to an extreme."""
    from semiflow.detector import frame as fr
    from semiflow.detector.spec import parse_frame

    _, info = parse_frame(bytes(b[start:end]), linktype)
    l3, l4 = start + int(info[fr.F_L3OFF]), start + int(info[fr.F_L4OFF])
    if info[fr.F_L3OFF] == 0 and info[fr.F_REASON] != fr.OK:
        l3 = start + rng.choice((0, 4, 14, 16, 18, 20))
    if info[fr.F_L4OFF] == 0:
        l4 = l3 + rng.choice((20, 40))
    ver = b[l3] >> 4 if l3 < len(b) else 4
    fields = [(l3, 1, "ihl"), (l3 + 2, 2, "ip4 total length"), (l3 + 6, 2, "fragment"),
              (l3 + 9, 1, "ip4 protocol")] if ver == 4 else \
        [(l3 + 4, 2, "ip6 payload length"), (l3 + 6, 1, "next header"),
         (l3 + 41, 1, "extension length")]
    fields += [(l4 + 12, 1, "tcp data offset"), (l4 + 4, 2, "udp length")]
    off, size, what = rng.choice(fields)
    if what == "ihl" and off < len(b):
        b[off] = (b[off] & 0xF0) | rng.randrange(16)
    elif what == "next header":
        set_uint(b, off, 1, rng.choice((0, 43, 44, 51, 60, 6, 17, 58, 59, 255)))
    elif what == "tcp data offset" and off < len(b):
        b[off] = (rng.randrange(16) << 4) | (b[off] & 0x0F)
    else:
        set_uint(b, off, size, extreme(rng, size))


def mutate_capture(rng: random.Random, seed: bytes) -> bytes:
    """Bit flips, cuts and length fields at their extremes (file, record and packet level)."""
    from semiflow.plugin.capture import PCAP_MAGICS

    data = bytearray(seed)
    pcapng = data[:4] == b"\x0a\x0d\x0d\x0a"
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.random()
        if op < 0.3:  # a capture-level length field
            if pcapng:
                blocks = pcapng_blocks(bytes(data))
                pos, btype, blen, big = rng.choice(blocks)
                off, size = rng.choice(((4, 4), (4, 4), (blen - 4, 4), (8, 4), (8, 2),
                                        (20, 4), (24, 4), (16, 8), (0, 4)))
                if off == 0:
                    set_uint(data, pos, 4, rng.choice((1, 2, 3, 6, 0x0A0D0D0A, 0xFFFFFFFF)),
                             big)
                elif off == 16 and btype == 0x0A0D0D0A:
                    set_uint(data, pos + 16, 8, rng.choice((0, 2**63, 2**64 - 1)), big)
                else:
                    set_uint(data, pos + off, size, extreme(rng, size), big)
            else:
                big, recs = pcap_records(bytes(data))
                if recs and rng.random() < 0.8:
                    pos, _ = rng.choice(recs)
                    off = rng.choice((0, 4, 8, 8, 12))
                    val = extreme(rng, 4) if off != 4 else rng.choice((999_999, 1_000_000,
                                                                       0xFFFFFFFF))
                    set_uint(data, pos + off, 4, val, big)
                else:
                    which = rng.choice(("magic", "snaplen", "linktype", "version"))
                    if which == "magic":
                        data[0:4] = rng.choice(list(PCAP_MAGICS))
                    elif which == "linktype":
                        set_uint(data, 20, 4, rng.choice((0, 1, 12, 14, 101, 108, 113, 228,
                                                          229, 276, 0x0FFFFFFF, 0xFFFFFFFF)),
                                 big)
                    else:
                        set_uint(data, 16 if which == "snaplen" else 4, 4, extreme(rng, 4), big)
        elif op < 0.6:  # a packet's own IP/transport length fields
            if pcapng:
                epbs = [(p, bl, big) for p, t, bl, big in pcapng_blocks(bytes(data)) if t == 6]
                if epbs:
                    pos, blen, big = rng.choice(epbs)
                    mutate_frame_fields(rng, data, pos + 28, min(len(data), pos + blen - 4),
                                        1)
            else:
                big, recs = pcap_records(bytes(data))
                if recs:
                    pos, caplen = rng.choice(recs)
                    lt = int.from_bytes(data[20:24], "big" if big else "little") & 0x0FFFFFFF
                    mutate_frame_fields(rng, data, pos + 16, min(len(data), pos + 16 + caplen),
                                        lt)
        else:
            data = bytearray(mutate_bytes(rng, bytes(data), start=rng.choice((0, 24, 24))))
    out = bytes(data)
    if rng.random() < 0.1:  # compressed, and sometimes the compressed stream broken
        out = gzip.compress(out, compresslevel=1)
        if rng.random() < 0.7:
            out = mutate_bytes(rng, out, start=10)
    return out


# ---- capture reader + flow kernels ---------------------------------------------------------
def setup_capture(work: Path, corpus: Path | None):
    from semiflow.detector.spec import FlowSampleSpec
    from semiflow.plugin.capture import FlowTable

    st = SimpleNamespace(seeds=capture_seeds(corpus), spec=FlowSampleSpec(k=4, l=256),
                         path=work / "case.pcap")
    st.table = FlowTable(st.spec)
    run_capture(st, st.seeds[0])  # compiles/loads the kernels before the first timed case
    return st


def run_capture(st, data: bytes) -> str:
    """scan_capture as `semiflow extract` drives it (one FlowTable for every file; a
    CaptureError or OSError is the file's counted bad_files entry)."""
    from semiflow.plugin import flowscan as fs
    from semiflow.plugin.capture import CaptureError, ScanReport, scan_capture
    from semiflow.plugin.flowstore import batch_to_frame

    st.path.write_bytes(data)
    report = ScanReport()
    in_flows = 0
    try:
        for batch in scan_capture(st.path, st.table, report):
            batch_to_frame(batch, str(st.path))
            data_ = batch.data
            n = batch.ints[:, fs.I_NSEL]
            if (n < 0).any() or (n > st.spec.k).any() or data_.shape[1:] != (st.spec.k,
                                                                            st.spec.l):
                raise Uncounted("flow sample out of shape")
            in_flows += int(batch.ints[:, fs.I_ORIG_PKTS].sum() +
                            batch.ints[:, fs.I_RESP_PKTS].sum())
    except (CaptureError, OSError):
        return "skip"
    if in_flows != report.packets:
        raise Uncounted(f"{report.packets} packets counted, {in_flows} in flows")
    return "skip" if report.skipped or report.bad_files else "ok"


CAPTURE = Target(
    "capture", "pcap/pcapng/gzip captures -> plugin/capture.scan_capture + flowscan kernels",
    setup_capture, lambda st, rng: mutate_capture(rng, rng.choice(st.seeds)), run_capture,
    save=lambda x, p: p.with_suffix(".pcap").write_bytes(x))


# ---- Suricata pcap-log files (the connector's reader of the same kernels) -------------------
def setup_pcap_log(work: Path, corpus: Path | None):
    from semiflow.detector.spec import FlowSampleSpec
    from semiflow.plugin.capture import PCAP_MAGICS

    seeds = [b for b in capture_seeds(corpus) if b[:4] in PCAP_MAGICS]
    st = SimpleNamespace(seeds=seeds, spec=FlowSampleSpec(k=4, l=256), dir=work / "pcap-log")
    run_pcap_log(st, [seeds[0]])
    return st


def make_pcap_log(st, rng: random.Random) -> list[bytes]:
    """One or two pcap-log files (a rotation can cut a record, or not)."""
    data = mutate_capture(rng, rng.choice(st.seeds))  # gzip'd ones: "not a classic pcap"
    if rng.random() < 0.3 and len(data) > 24:
        cut = rng.randrange(24, len(data) + 1)
        return [data[:cut], data[:24] + data[cut:]]
    return [data]


def run_pcap_log(st, files: list[bytes]) -> str:
    """PcapLogFollower.poll(final) + finish, as SuricataConnector.step drives it."""
    from semiflow.plugin import flowscan as fs
    from semiflow.plugin.capture import FlowTable
    from semiflow.plugin.pcap_follow import PcapLogFollower

    if st.dir.exists():
        shutil.rmtree(st.dir)
    st.dir.mkdir()
    for i, data in enumerate(files):
        (st.dir / f"log.pcap.{1000 + i}").write_bytes(data)
    table = FlowTable(st.spec)
    fol = PcapLogFollower(st.dir, table)
    in_flows = 0
    for b in [*fol.poll(final=True), *fol.finish()]:
        in_flows += int(b.ints[:, fs.I_ORIG_PKTS].sum() + b.ints[:, fs.I_RESP_PKTS].sum())
    if in_flows != int(table.st[fs.S_PACKETS]):
        raise Uncounted(f"{int(table.st[fs.S_PACKETS])} packets counted, {in_flows} in flows")
    if fol.counters.files_done != len(files):
        raise Uncounted(f"{len(files)} files, {fol.counters.files_done} done")
    c = fol.counters
    return "skip" if c.bad_files or c.truncated_tails or table.skips[1:].sum() else "ok"


PCAP_LOG = Target(
    "pcap-log", "Suricata pcap-log files -> plugin/pcap_follow.PcapLogFollower (same kernels)",
    setup_pcap_log, make_pcap_log, run_pcap_log,
    save=lambda x, p: [p.with_suffix(f".{i}.pcap").write_bytes(b) for i, b in enumerate(x)])


# ---- Zeek WebSocket messages through the serve loop ----------------------------------------
def setup_ws(work: Path, corpus: Path | None):
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from serve_helpers import tiny_model
    from zeek_double import zeek_json

    from semiflow.cli_serve import ServeApp, _allow_hook
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.allowlist import AllowRule, write_allowlist
    from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events

    torch.set_num_threads(1)
    caps = []
    for i, b in enumerate(capture_seeds(corpus)[:12]):
        p = work / f"seed{i}.pcap"
        p.write_bytes(b)
        caps.append(str(p))
    events = [e for e in capture_to_events(caps, ZeekSideConfig(k=4, snaplen=256 + 64))
              if e.kind == "request"]
    model = tiny_model(work / "model", k=4, l=256)
    allow = work / "allow.tsv"
    write_allowlist(allow, [AllowRule(host="192.0.2.0/24", reason="fuzz"),
                            AllowRule(service="53/udp", reason="fuzz"),
                            AllowRule(uid=events[0].uid if events else "C1", reason="fuzz")])
    app = ServeApp(load_scorer(model, device="cpu"), "ws://127.0.0.1:9", ["x/"],
                   allow=_allow_hook(str(allow)))
    st = SimpleNamespace(app=app, msgs=[e.message() for e in events[:400]], zeek_json=zeek_json,
                         last=None)
    decode = app.batcher.decode

    def recording_decode(raws):
        st.last = decode(raws)
        return st.last
    app.batcher.decode = recording_decode
    run_ws(st, [zeek_json(m) for m in st.msgs[:4]])
    return st


def _mutate_frames(rng: random.Random, msg: dict) -> dict:
    """A well-formed request whose frames are broken (the sample kernels' input)."""
    msg = json.loads(json.dumps(msg))
    args = msg["data"][2]["data"][1]["data"]
    frames = args[9]["data"]
    lt = args[6]["data"]
    for f in frames:
        if rng.random() < 0.5:
            b = bytearray(base64.b64decode(f["data"]))
            if rng.random() < 0.5:
                mutate_frame_fields(rng, b, 0, len(b), lt)
            else:
                b = bytearray(mutate_bytes(rng, bytes(b)))
            f["data"] = base64.b64encode(bytes(b)).decode()
    if rng.random() < 0.2:
        args[6]["data"] = rng.choice((0, 1, 101, 113, 276, 9999, 2**32, 2**63 - 1))
    return msg


def make_ws(st, rng: random.Random) -> list[str]:
    out = []
    for _ in range(1 if rng.random() < 0.7 else rng.randrange(2, 9)):
        msg = rng.choice(st.msgs)
        op = rng.random()
        if op < 0.1:
            out.append(st.zeek_json(msg))
        elif op < 0.35:
            out.append(st.zeek_json(_mutate_frames(rng, msg)))
        elif op < 0.8:
            out.append(dumps(mutate_json(rng, msg, rounds=rng.choice((1, 1, 2, 3)))))
        elif op < 0.95:
            out.append(mutate_text(rng, st.zeek_json(msg)))
        else:
            out.append(dumps(rng.choice((
                weird_value(rng), {"type": "error", "code": weird_value(rng),
                                   "context": weird_value(rng)},
                {"type": "ack"}, {"type": "data-message"}))))
    return out


def run_ws(st, raws: list[str]) -> str:
    """What ServeApp does with each text frame: the shed answer's head_of, then a
    micro-batch through MicroBatcher.process (decode, samples, allow-list, scoring) and
    the verdict texts. Every request gets a verdict or a counted error."""
    from semiflow.plugin.zeek_decode import head_of

    for r in raws:
        head_of(r)
    app = st.app
    before = sum(app.stats.errors.values())
    results = app.batcher.process([(r, time.perf_counter()) for r in raws])
    unanswered = sum(1 for _, e in st.last.errors if getattr(e, "key", None) is None)
    if len(results) + unanswered != len(raws):
        raise Uncounted(f"{len(raws)} requests, {len(results)} verdicts, "
                        f"{unanswered} counted errors")
    if unanswered and sum(app.stats.errors.values()) - before < unanswered:
        raise Uncounted("an unanswerable request was not counted")
    for r in results:
        if r.reply:
            json.loads(app._verdict_text(r))
    return "skip" if unanswered or any(r.status not in ("ok", "allowlisted") for r in results) \
        else "ok"


WS = Target(
    "zeek-ws", "Zeek WebSocket texts -> ServeApp's batcher (zeek_decode, build_flow_samples, "
    "allow-list hook, scorer, verdict_text)", setup_ws, make_ws, run_ws,
    save=lambda x, p: p.with_suffix(".json").write_text(json.dumps(x)))


# ---- Suricata EVE lines ------------------------------------------------------------------
EVE_MAX_LINE = 1 << 16   # the follower's runaway-line limit, small here so cases hit it


def _eve_templates() -> list[dict]:
    from semiflow.plugin.suricata import semiflow_record

    cid = "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    flow = {"timestamp": "2016-08-02T02:19:33.025824+0000", "flow_id": 1234567890123456,
            "event_type": "flow", "src_ip": "10.0.0.1", "src_port": 40000,
            "dest_ip": "10.0.0.2", "dest_port": 443, "proto": "TCP", "community_id": cid,
            "flow": {"pkts_toserver": 5, "pkts_toclient": 4, "bytes_toserver": 500,
                     "bytes_toclient": 4000, "start": "2016-08-02T02:19:33.025824+0000",
                     "end": "2016-08-02T02:19:34.000000+0000", "age": 1, "state": "closed",
                     "reason": "timeout", "alerted": False}}
    alert = dict(flow, event_type="alert", alert={"signature_id": 1, "signature": "x"})
    alert.pop("flow")
    anomaly = dict(alert, event_type="anomaly", anomaly={"type": "stream"})
    anomaly.pop("alert")
    rec = semiflow_record(ts=1470104373.0, community_id=cid, flow_id=None, src_ip="10.0.0.1",
                          src_port=40000, dest_ip="10.0.0.2", dest_port=443, proto="tcp",
                          score=1.5, threshold=1.0, verdict="anomalous", status="ok",
                          model="m", model_version="v", packets_used=4, uid="Cabc")
    stats = {"timestamp": "2016-08-02T02:19:33.025824+0000", "event_type": "stats",
             "stats": {"uptime": 10}}
    return [flow, alert, anomaly, rec, stats]


def setup_eve(work: Path, corpus: Path | None):
    return SimpleNamespace(templates=_eve_templates(), path=work / "eve.json")


def make_eve(st, rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(1, 20)):
        t = rng.choice(st.templates)
        op = rng.random()
        if op < 0.2:
            lines.append(json.dumps(t).encode())
        elif op < 0.7:
            m = mutate_json(rng, t, rounds=rng.choice((1, 2)))
            if rng.random() < 0.3 and isinstance(m, dict) and isinstance(m.get("flow"), dict):
                m["flow"][rng.choice(("start", "end"))] = rng.choice((
                    "0001-01-01T00:00:00.000000+2359", "9999-12-31T23:59:59.999999-2359",
                    "2016-02-30T00:00:00.000000+0000", "2016-08-02T02:19:33+0000", "", 0))
            lines.append(dumps(m).encode())
        elif op < 0.9:
            lines.append(mutate_bytes(rng, json.dumps(t).encode()))
        else:
            lines.append(rng.choice((b"", b"   ", b"\x00\xff", b"[" * 100_000,
                                     b"x" * (EVE_MAX_LINE + 10), b"null", b"[]", b"1e999")))
    data = b"\n".join(lines)
    return data + b"\n" if rng.random() < 0.8 else data


def run_eve(st, data: bytes) -> str:
    """EveFollower.poll + FlowIndex.add/lookup, as SuricataConnector.step/_release use them:
    every complete line is a record or counted malformed."""
    from semiflow.plugin.suricata import EveFollower, FlowIndex

    st.path.write_bytes(data)
    fol = EveFollower(st.path, max_line=EVE_MAX_LINE)
    try:
        recs = fol.poll()
    finally:
        fol.close()
    pieces = data.split(b"\n")
    want = sum(1 for line in pieces[:-1] if line.strip()) + (len(pieces[-1]) > EVE_MAX_LINE)
    c = fol.counters
    if c.records + c.malformed != want:
        raise Uncounted(f"{want} lines, {c.records} records + {c.malformed} malformed")
    index = FlowIndex()
    for rec in recs:
        index.add(rec)
    for rec in recs:
        cid = rec.get("community_id")
        if isinstance(cid, str):
            flow = index.lookup(cid, 1470104373.5)
            if flow is not None:
                json.dumps(dict(rec, flow_id=flow.flow_id))
    return "skip" if c.malformed else "ok"


EVE = Target("eve", "eve.json lines -> plugin/suricata EveFollower + FlowIndex",
             setup_eve, make_eve, run_eve,
             save=lambda x, p: p.with_suffix(".eve.json").write_bytes(x))


# ---- the analysts' allow-list ------------------------------------------------------------
ALLOW_TOKENS = ("-", "(empty)", "", "\\x", "\\xZZ", "\\x41", "\\N{foo}", "\\u12", "1e400",
                "nan", "-inf", "::/0", "0.0.0.0/33", "10.0.0.0/8", "fe80::1%eth0", "1.2.3.4",
                "65536/tcp", "443/sctp", "443", "-1/udp", "0x1bb/tcp", "99999999999999999999",
                "C" * 5000, "\u00e9", "\x00")


def setup_allowlist(work: Path, corpus: Path | None):
    import pandas as pd

    from semiflow.plugin.allowlist import AllowRule, write_allowlist

    seed = work / "allow-seed.tsv"
    write_allowlist(seed, [
        AllowRule(uid="CAbc123", reason="ok\tthen", analyst="ann", orig_h="10.0.0.1",
                  orig_p=40000, resp_h="10.0.0.2", resp_p=443, proto="tcp", ts=1.5e9),
        AllowRule(host="192.168.0.0/16", reason="lab"),
        AllowRule(service="53/udp", reason="dns", expires=2e9),
        AllowRule(host="2001:db8::/32", service="443", reason="v6")])
    flows = pd.DataFrame({"uid": ["CAbc123", "Cx"], "ts": [1.5e9, 1.6e9],
                          "orig_h": ["10.0.0.1", "192.168.1.1"], "orig_p": [40000, 53],
                          "resp_h": ["10.0.0.2", "2001:db8::1"], "resp_p": [443, 53],
                          "proto": ["tcp", "udp"]})
    return SimpleNamespace(seed=seed.read_bytes(), flows=flows, path=work / "allow.tsv")


def make_allowlist(st, rng: random.Random) -> bytes:
    lines = st.seed.split(b"\n")
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.random()
        i = rng.randrange(len(lines))
        if op < 0.4:  # one field replaced by an edge token
            cols = lines[i].split(b"\t")
            cols[rng.randrange(len(cols))] = rng.choice(ALLOW_TOKENS).encode("utf-8")
            lines[i] = b"\t".join(cols)
        elif op < 0.55:  # a column dropped or added
            cols = lines[i].split(b"\t")
            if rng.random() < 0.5 and len(cols) > 1:
                del cols[rng.randrange(len(cols))]
            else:
                cols.insert(rng.randrange(len(cols) + 1), b"x")
            lines[i] = b"\t".join(cols)
        elif op < 0.65:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op < 0.75:
            del lines[i]
        else:
            lines[i] = mutate_bytes(rng, lines[i])
    return b"\n".join(lines)


def run_allowlist(st, data: bytes) -> str:
    """read_allowlist (every data line a rule or counted invalid), then the matching the
    scorer, the serve hook and `feedback export` do."""
    from semiflow.plugin.allowlist import (
        AllowlistReport,
        allowlisted,
        marked_flows,
        read_allowlist,
    )

    st.path.write_bytes(data)
    rep = AllowlistReport()
    rules = read_allowlist(st.path, rep)
    header, want = None, 0
    for line in data.decode("utf-8", "backslashreplace").splitlines():
        line = line.rstrip("\r")
        if not line:
            continue
        if line.startswith("#"):
            if header is None and line.startswith("#fields\t"):
                header = line
            continue
        if header is None:
            header = line
            continue
        want += 1
    if len(rules) + rep.invalid != want:
        raise Uncounted(f"{want} rule lines, {len(rules)} rules + {rep.invalid} invalid")
    allowlisted(st.flows, rules)
    marked_flows(st.flows, rules)
    return "skip" if rep.invalid else "ok"


ALLOWLIST = Target("allowlist", "allow-list file -> plugin/allowlist read_allowlist + matching",
                   setup_allowlist, make_allowlist, run_allowlist, clean=(ValueError,),
                   save=lambda x, p: p.with_suffix(".tsv").write_bytes(x))


# ---- model artifacts ------------------------------------------------------------------------
def _flow_artifact(out: Path) -> Path:
    """A flow-level artifact with seeded random weights (fitting is not what is tested)."""
    import torch

    from semiflow.detector.artifact import save_flow_artifact
    from semiflow.detector.semiflow_flowartifact import flow_modules
    from semiflow.detector.semiflow_flowlevel import FlowSemiFlowDetector
    from semiflow.detector.semiflow_flownet import FlowNetConfig
    from semiflow.detector.spec import FlowSampleSpec
    from semiflow.detector.threshold import Threshold

    torch.manual_seed(0)
    cfg = FlowNetConfig(length=128, k=4, byte_channels=(4, 8), packet_dim=8, hidden=16,
                        latent_dim=4, flow_blocks=2, flow_hidden=8, cls_hidden=(8,))
    det = FlowSemiFlowDetector(cfg, score="nll+rec")
    mods = flow_modules(cfg)
    det.config_, det.encoder_, det.decoder_, det.flow_ = cfg, mods["encoder"], \
        mods["decoder"], mods["flow"]
    det.stats_ = {"nll": (0.0, 1.0), "rec": (0.0, 1.0)}
    return save_flow_artifact(out, det, FlowSampleSpec(k=4, l=128),
                              Threshold(1.0, 0.01, 0.01, 100), model_name="tiny-flow")


def setup_artifact(work: Path, corpus: Path | None, level: str = "packet"):
    import torch

    torch.set_num_threads(1)
    if level == "packet":
        sys.path.insert(0, str(ROOT / "tests"))
        from serve_helpers import tiny_model
        src = tiny_model(work / "seed-model", k=4, l=256)
    else:
        src = _flow_artifact(work / "seed-model")
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    st = SimpleNamespace(files=files, dir=work / "model")
    run_artifact(st, files)
    return st


def _mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    head, body = data[8:8 + n], data[8 + n:]
    op = rng.random()
    if op < 0.25:  # the header length at its extremes
        b = bytearray(data)
        set_uint(b, 0, 8, rng.choice((0, 1, 2, n - 1, n + 1, len(data), 2**31, 2**63,
                                      2**64 - 1)), big=False)
        return bytes(b)
    if op < 0.7:  # the header's JSON: dtypes, shapes, offsets, metadata
        try:
            h = json.loads(head)
        except ValueError:
            return mutate_bytes(rng, data)
        for _ in range(rng.choice((1, 1, 2))):
            name = rng.choice(list(h))
            entry = h[name]
            if isinstance(entry, dict) and "dtype" in entry and rng.random() < 0.6:
                key = rng.choice(("dtype", "shape", "data_offsets"))
                entry[key] = rng.choice({
                    "dtype": ("F16", "F64", "I8", "BOOL", "U8", "X9", "", 1),
                    "shape": ([], [0], [2**40], [-1], [1, 2, 3], "x", [2**64]),
                    "data_offsets": ([0, 0], [0, 2**40], [5, 1], [0, len(body) + 1],
                                     [-1, 4], [0], "x")}[key])
            else:
                h = mutate_json(rng, h)
        new = dumps(h).encode()
        return len(new).to_bytes(8, "little") + new + body
    return mutate_bytes(rng, data, start=rng.choice((0, 8)))


def make_artifact(st, rng: random.Random) -> dict:
    from semiflow.detector.artifact import META_FILE, PROVENANCE_FILE, WEIGHTS_FILE

    files = dict(st.files)
    meta = json.loads(files[META_FILE])
    op = rng.random()
    if op < 0.45:
        files[WEIGHTS_FILE] = _mutate_safetensors(rng, files[WEIGHTS_FILE])
        if rng.random() < 0.85:  # keep the checksum right, so the parser is reached
            import hashlib
            meta["weights"]["sha256"] = hashlib.sha256(files[WEIGHTS_FILE]).hexdigest()
        files[META_FILE] = json.dumps(meta).encode()
    elif op < 0.9:
        if rng.random() < 0.5:  # a mismatched config or spec: one plausible number changed
            sect = rng.choice(("config", "spec"))
            key = rng.choice(sorted(meta[sect]))
            v = meta[sect][key]
            if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
                v = list(v)
                v[rng.randrange(len(v))] = rng.choice((0, 1, 3, 64, 2**20, -1))
            else:
                v = rng.choice((0, 1, 2, 7, 9, 100, 2**16, 2**31, -3, "max", None))
            meta[sect][key] = v
            files[META_FILE] = json.dumps(meta).encode()
        else:
            files[META_FILE] = dumps(mutate_json(rng, meta, rounds=rng.choice((1, 2)))).encode()
        if rng.random() < 0.1:
            files[META_FILE] = mutate_bytes(rng, files[META_FILE])
    else:
        files[PROVENANCE_FILE] = mutate_bytes(rng, files[PROVENANCE_FILE])
    return files


def run_artifact(st, files: dict) -> str:
    """load_scorer (what serve/score/suricata/report call), then one scoring call."""
    from semiflow.detector.scoring import load_scorer

    if st.dir.exists():
        shutil.rmtree(st.dir)
    st.dir.mkdir()
    for name, data in files.items():
        (st.dir / name).write_bytes(data)
    scorer = load_scorer(st.dir, device="cpu")
    spec = scorer.spec
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, spec.k, spec.l), dtype=np.uint8)
    s = scorer.score_flows(x, np.array([spec.k, 1]))
    if s.shape != (2,):
        raise Uncounted(f"scores of shape {s.shape}")
    return "ok"


def _save_files(files: dict, p: Path) -> None:
    p.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (p / name).write_bytes(data)


ARTIFACT = Target("artifact", "packet-level model artifact -> detector/scoring.load_scorer",
                  setup_artifact, make_artifact, run_artifact, clean=(ValueError,),
                  save=_save_files)
FLOW_ARTIFACT = Target(
    "flow-artifact", "flow-level model artifact -> detector/scoring.load_scorer",
    lambda w, c: setup_artifact(w, c, "flow"), make_artifact, run_artifact,
    clean=(ValueError,), save=_save_files)

TARGETS = {t.name: t for t in (CAPTURE, PCAP_LOG, WS, EVE, ALLOWLIST, ARTIFACT,
                                FLOW_ARTIFACT)}
