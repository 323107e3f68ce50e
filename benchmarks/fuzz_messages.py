"""Fuzz targets over messages and small files: Zeek WebSocket texts through the serve loop,
Suricata EVE lines, the analysts' allow-list (benchmarks/fuzz.py)."""

from __future__ import annotations

import base64
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from fuzz_base import ROOT, Target, Uncounted
from fuzz_capture import capture_seeds, mutate_frame_fields
from fuzz_mutate import dumps, mutate_bytes, mutate_json, mutate_text, weird_value


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
    # (message, received at, flows it names): per-flow requests name one each
    results = app.batcher.process([(r, time.perf_counter(), 1) for r in raws])
    unanswered = sum(1 for _, e in st.last.errors if getattr(e, "key", None) is None)
    if len(results) + unanswered != len(raws):
        raise Uncounted(f"{len(raws)} requests, {len(results)} verdicts, "
                        f"{unanswered} counted errors")
    if unanswered and sum(app.stats.errors.values()) - before < unanswered:
        raise Uncounted("an unanswerable request was not counted")
    for text in app._texts(results):  # the verdict messages serve would publish
        json.loads(text)
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
