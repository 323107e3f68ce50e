"""`semiflow serve` with a FLOW-level model (the default): a tiny FlowSemiFlowDetector fitted on
the shipped lab sample, served to the Zeek double replaying that capture with the Zeek-side
selection (SemiFlow::select_all = T, the default). Every flow gets a verdict, scan flows
without payload are scored (not no_payload), and the live scores equal `semiflow score`'s
offline scores for the same connections; single process and --workers 2 (zmq)."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample.spec import SELECT_ALL, FlowSampleSpec
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import free_port  # noqa: E402
from test_serve import _key, scrape, start_serve, stop, wait_for  # noqa: E402
from zeek_double import ZeekDouble  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "semiflow" / "data" / "lab-sample" / "capture.pcap.gz"
SPEC = FlowSampleSpec(k=4, l=128)                     # the default selection: "all"
# main.zeek's defaults (select_all = T, max_wait = 10 s: no lab-sample flow is cut by it)
# but K/snaplen to fit the tiny model.
CFG = ZeekSideConfig(k=SPEC.k, snaplen=SPEC.l + 64)
SYN, RST = 0x02, 0x04


@pytest.fixture(scope="module")
def flow_model(tmp_path_factory):
    """A real flow-level artifact: tiny FlowSemiFlowDetector fitted on the lab sample's flows
    (extracted with the default spec), threshold calibrated, saved with save_flow_artifact."""
    import torch

    from semiflow.detector.artifact import save_flow_artifact
    from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
    from semiflow.detector.models.semiflow_flownet import FlowNetConfig
    from semiflow.detector.threshold import calibrate_threshold
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.extract import extract

    torch.set_num_threads(1)
    if not LAB.exists():
        pytest.skip(f"{LAB} not shipped")
    assert SPEC.selection == SELECT_ALL and CFG.select_all  # the defaults under test
    tmp = tmp_path_factory.mktemp("flowmodel")
    extract([str(LAB)], tmp / "flows", SPEC)
    store = FlowStore.open(tmp / "flows")
    x = np.asarray(store.samples)
    x = x[store.flows["n_selected"].to_numpy() > 0]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(x))
    cfg = FlowNetConfig(length=SPEC.l, k=SPEC.k, byte_channels=(4, 8, 8), packet_dim=8,
                        hidden=32, latent_dim=4, flow_blocks=2, flow_hidden=16,
                        cls_hidden=(8,), epochs=(2, 2, 1), min_service_flows=5,
                        batch_size=64)
    det = FlowSemiFlowDetector(cfg, random_state=0).fit(x[pick[:384]], x[pick[384:512]])
    thr = calibrate_threshold(det.anomaly_score(x[pick[512:768]]), 0.05, "flow")
    return save_flow_artifact(tmp / "model", det, SPEC, thr, {"note": "serve test"},
                              model_name="tiny-flow", model_version="test-flow-1")


@pytest.fixture(scope="module")
def lab_events():
    if not LAB.exists():
        pytest.skip(f"{LAB} not shipped")
    evs = capture_to_events([str(LAB)], CFG)
    # What the packet-level selection (select_all = F) would have logged locally.
    no_payload = {e.uid for e in capture_to_events(
        [str(LAB)], ZeekSideConfig(k=SPEC.k, snaplen=SPEC.l + 64, select_all=False))
        if e.kind == "local"}
    return evs, no_payload


@pytest.fixture(scope="module")
def offline(flow_model, tmp_path_factory):
    """`semiflow score` on the same capture (JSON logs: full float precision), by conn key;
    plus the SYN-scan flows (a bare SYN answered, if at all, by RSTs: no payload anywhere)."""
    from semiflow.cli_score import score_captures
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.plugin.zeeklog import read_zeek_log
    from semiflow.training.extract import extract

    out = tmp_path_factory.mktemp("offline")
    res = score_captures([str(LAB)], flow_model, out / "logs", json=True)
    df = read_zeek_log(out / "logs" / "semiflow.log")
    assert len(df) == res.flows
    rows = {_key(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"], r["ts"]): r
            for r in df.to_dict("records")}
    assert len(rows) == len(df)
    extract([str(LAB)], out / "flows", SPEC)
    store = FlowStore.open(out / "flows")
    scans = set()
    for f in store.flows.itertuples():
        flags = store.samples[f.row][:f.n_selected, 73]  # ip60-transport60: 60 + 13
        if f.proto == "tcp" and f.n_selected and flags[0] == SYN and (flags[1:] & RST).all() \
                and f.orig_bytes == 0 and f.resp_bytes == 0:
            scans.add(_key(f.orig_h, f.orig_p, f.resp_h, f.resp_p, f.ts))
    return rows, res, scans


def _serve(model, reqs, workers: int = 1):
    async def main():
        dbl = await ZeekDouble().start()
        extra = ("--workers", str(workers), "--max-batch", "64") if workers > 1 else ()
        mport = None if workers > 1 else free_port()
        proc = start_serve(model, dbl.url, *extra, metrics_port=mport)
        try:
            await wait_for(lambda: len(dbl.clients) == workers or proc.poll() is not None,
                           120, f"{workers} serve connection(s)")
            assert proc.poll() is None, proc.stdout.read()
            for i, e in enumerate(reqs):
                topic = f"{zw.DEFAULT_REQUEST_TOPIC}{i % workers}/" if workers > 1 else e.topic
                await dbl.publish(topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: len(dbl.verdicts()) >= len(reqs), 120, "verdicts")
            await asyncio.sleep(0.3)  # nothing is answered twice
            m = scrape(mport) if mport else {}
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl.verdicts(), m, out, proc.returncode
    return asyncio.run(main())


def _check(verdicts, reqs, offline, no_payload):
    rows, res, scans = offline
    assert len(verdicts) == len(reqs)                       # one verdict per flow, no more
    got = {v.uid: v for v in verdicts}
    assert set(got) == {e.uid for e in reqs}
    bad = {v.status for v in verdicts} - {"ok"}
    assert not bad, f"statuses other than ok: {bad}"
    assert {v.model for v in verdicts} == {"tiny-flow"}
    live, want, used = [], [], []
    for e in reqs:
        r = rows[_key(*e.conn_id, e.first_ts)]
        v = got[e.uid]
        assert r["status"] == "scored", (e.uid, r["status"])
        live.append(v.score)
        want.append(r["score"])
        used.append((v.packets, int(r["packets_used"])))
        assert v.anomalous == (v.score > v.threshold)
        assert math.isclose(v.threshold, res.threshold, rel_tol=1e-9)
    live, want = np.array(live), np.array(want)
    assert np.isfinite(live).all() and np.ptp(live) > 0
    np.testing.assert_allclose(live, want, rtol=1e-5, atol=1e-5)
    assert all(a == b for a, b in used)
    # Flows the payload-only selection could not judge are scored, SYN-only scans included.
    npl = [got[u] for u in no_payload if u in got]
    assert len(npl) == len(no_payload) > 100
    assert all(v.status == "ok" and np.isfinite(v.score) for v in npl)
    syn = [got[e.uid] for e in reqs if _key(*e.conn_id, e.first_ts) in scans]
    assert len(syn) == len(scans) and all(v.status == "ok" and v.packets >= 1 for v in syn)


def test_offline_score_judges_every_flow(offline, lab_events):
    """The default spec leaves nothing unscored offline either: every connection the Zeek
    side requests is in `semiflow score`'s semiflow.log as scored, and vice versa."""
    rows, res, scans = offline
    evs, no_payload = lab_events
    assert {e.kind for e in evs} == {"request"}             # select_all: no local no_payload
    assert res.scored == res.flows == len(evs) and not res.unscored
    assert {_key(*e.conn_id, e.first_ts) for e in evs} == set(rows)
    assert len(scans) > 50 and len(no_payload) > 100


def test_serve_flow_model_matches_offline_score(flow_model, lab_events, offline):
    evs, no_payload = lab_events
    reqs = [e for e in evs if e.kind == "request"]
    verdicts, m, out, rc = _serve(flow_model, reqs)
    assert rc == 0, out[-3000:]
    assert "warm-up failed" not in out and "scoring failed" not in out, out[-3000:]
    _check(verdicts, reqs, offline, no_payload)
    assert m["semiflow_flows_scored_total"] == len(reqs)
    assert m["semiflow_requests_received_total"] == len(reqs)


def test_serve_flow_model_workers_zmq(flow_model, lab_events, offline):
    """--workers 2: decode processes feed the one flow-level scorer over zmq; same scores."""
    evs, no_payload = lab_events
    reqs = [e for e in evs if e.kind == "request"]
    verdicts, _, out, rc = _serve(flow_model, reqs, workers=2)
    assert rc == 0, out[-3000:]
    assert "warm-up failed" not in out and "scoring failed" not in out, out[-3000:]
    _check(verdicts, reqs, offline, no_payload)
    assert out.count("stopped: ") == 3  # two workers + the scorer process
