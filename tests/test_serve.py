"""End to end without Zeek: capture -> Zeek-side selection -> Zeek double -> `semiflow serve`
-> verdicts -> semiflow.log; live bytes == offline bytes; faults. Loopback only, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_sample
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import corpus_slice, free_port, tiny_model, write_semiflow_log  # noqa: E402
from zeek_double import ZeekDouble  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = FlowSampleSpec(k=4, l=256)
CFG = ZeekSideConfig(k=4, snaplen=256 + 64, max_wait=float("inf"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny", k=SPEC.k, l=SPEC.l)


@pytest.fixture(scope="module")
def events(corpus_dir):
    files = corpus_slice(corpus_dir)
    if not files:
        pytest.skip("corpus slice not found")
    return files, capture_to_events(files, CFG)


def start_serve(model, url, *extra, metrics_port=None):
    cmd = [sys.executable, "-m", "semiflow", "serve", "--zeek", url, "--model", str(model),
           "--threads", "1", "--device", "cpu", *extra]
    if metrics_port:
        cmd += ["--metrics-port", str(metrics_port)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


async def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc, sig=signal.SIGTERM, timeout=30.0) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("serve did not stop in time:\n" + out[-3000:]) from None
    return out


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def _offline(files, out):
    r = subprocess.run([sys.executable, "-m", "semiflow", "extract", *files, "-o", str(out),
                        "-k", str(SPEC.k), "-l", str(SPEC.l), "-q"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from semiflow.plugin.flowstore import FlowStore
    return FlowStore.open(out)


def _key(orig_h, orig_p, resp_h, resp_p, ts):
    return (orig_h, int(str(orig_p).split("/")[0]), resp_h, int(str(resp_p).split("/")[0]),
            round(float(ts), 6))



def test_live_bytes_equal_offline_extract(events, tmp_path):
    """The bytes the detector scores (Zeek JSON -> decode -> build_flow_sample) are the
    bytes `semiflow extract` writes for the same capture, flow for flow: per-flow requests
    and flow_batch events (batches of 1, 5 and 64 flows, as batch.zeek publishes them)."""
    from zeek_double import zeek_json

    from semiflow.cli_serve import decode_requests
    from semiflow.detector.sample.spec import build_flow_samples

    files, evs = events
    store = _offline(files, tmp_path / "offline")
    flows = store.flows
    index = {_key(r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.ts): r for r in flows.itertuples()}
    reqs = [e for e in evs if e.kind == "request"]
    assert len(reqs) >= 20
    single = [zeek_json(e.message()) for e in reqs]
    batched = {n: [zeek_json(zw.event_message(reqs[i].topic, zw.FLOW_BATCH, zw.flow_batch_args(
        [x.args for x in reqs[i:i + n]]))) for i in range(0, len(reqs), n)]
        for n in (1, 5, 64)}
    for texts in [single, *batched.values()]:
        b = decode_requests(texts)  # what serve's worker does with one micro-batch
        assert not b.errors and b.keys == [e.uid for e in reqs]
        live = build_flow_samples(b.blob, b.frame_off, b.frame_len, b.linktype, b.ts,
                                  b.wire_len, b.is_orig, b.flow_start, SPEC)
        for i, e in enumerate(reqs):
            off = index[_key(*e.conn_id, e.first_ts)]
            assert live.n_selected[i] == off.n_selected
            assert np.array_equal(live.data[i], store.samples[off.row]), e.uid
    # Every offline flow with a sample was requested; the others were logged locally.
    local = [e for e in evs if e.kind == "local"]
    assert len(reqs) + len(local) == len(flows)
    assert int((flows.n_selected > 0).sum()) == len(reqs)


def _run_serve_session(model, reqs, tmp_path, extra=(), metrics=True):
    """Start the double and serve, publish reqs, collect verdicts; returns (double, out)."""
    async def main():
        dbl = await ZeekDouble().start()
        mport = free_port() if metrics else None
        proc = start_serve(model, dbl.url, *extra, metrics_port=mport)
        try:
            await wait_for(lambda: dbl.clients or proc.poll() is not None, 90, "serve connect")
            assert proc.poll() is None, proc.stdout.read()
            for e in reqs:
                await dbl.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: len(dbl.verdicts()) >= len(reqs), 90, "verdicts")
            m = scrape(mport) if metrics else {}
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, out, m, proc.returncode
    return asyncio.run(main())


def test_serve_end_to_end_semiflow_log(model, events, tmp_path):
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.zeeklog import read_zeek_log

    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]
    dbl, out, metrics, rc = _run_serve_session(model, reqs, tmp_path)
    assert rc == 0, out[-2000:]
    verdicts = {v.uid: v for v in dbl.verdicts()}
    assert set(verdicts) == {e.uid for e in reqs}
    assert all(t == zw.DEFAULT_VERDICT_TOPIC for t, _, _ in dbl.received)

    # Same scores as scoring the offline-identical samples directly.
    scorer = load_scorer(model, device="cpu")
    samples = np.stack([build_flow_sample(zw.flow_request_from_args(
        zw.parse_event(e.message())[2]).frame_tuples(), SPEC).data for e in reqs])
    nsel = np.array([verdicts[e.uid].packets for e in reqs])
    want = scorer.score_flows(samples, nsel)
    got = np.array([verdicts[e.uid].score for e in reqs])
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(verdicts[e.uid].status == "ok" for e in reqs)
    assert all(verdicts[e.uid].anomalous == (verdicts[e.uid].score > scorer.threshold)
               for e in reqs)
    assert {v.model for v in verdicts.values()} == {"tiny"}

    # The Zeek side writes semiflow.log (verdict.zeek's Info record).
    rows = []
    for e in evs:
        row = {"ts": e.first_ts, "uid": e.uid, "id.orig_h": e.conn_id[0],
               "id.orig_p": e.conn_id[1].split("/")[0], "id.resp_h": e.conn_id[2],
               "id.resp_p": e.conn_id[3].split("/")[0], "status": e.status,
               "detail": e.detail}
        v = verdicts.get(e.uid)
        if v is not None:
            row.update(status=v.status, score=v.score, threshold=v.threshold,
                       verdict="anomalous" if v.anomalous else "normal", model=v.model,
                       model_version=v.model_version, packets=v.packets, latency=0.001)
        rows.append(row)
    log = tmp_path / "semiflow.log"
    write_semiflow_log(log, rows)
    df = read_zeek_log(log)
    assert len(df) == len(evs)
    assert set(df["status"]) <= {"ok", "no_payload"}
    assert (df["verdict"].dropna().isin(["normal", "anomalous"])).all()

    assert metrics["semiflow_requests_received_total"] == len(reqs)
    assert metrics["semiflow_flows_scored_total"] == len(reqs)
    assert metrics['semiflow_latency_seconds_bucket{le="+Inf"}'] == len(reqs)


def test_serve_answers_batches_with_verdict_batches(model, events):
    """flow_batch in -> verdict_batch out (to the batch's reply topic), one entry per flow,
    scores equal to direct scoring; a per-flow request in the same stream still gets a
    per-flow verdict; a batch with one bad frame fails that flow only; a batch the double
    would reject never reaches serve."""
    from semiflow.detector.scoring import load_scorer

    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]
    groups = [reqs[:-1][i:i + 16] for i in range(0, len(reqs) - 1, 16)]
    last = reqs[-1]
    bad = zw.flow_batch_args([e.args for e in reqs[:3]])
    bad[1] = ["BadA", "BadB", "BadC"]
    bad[10] = list(bad[10])
    bad[10][len(reqs[0].args[9])] = "***"  # BadB's first frame

    async def main():
        dbl = await ZeekDouble().start()
        proc = start_serve(model, dbl.url, "--max-wait-ms", "2")
        try:
            await wait_for(lambda: dbl.clients, 90, "serve connect")
            for g in groups:
                await dbl.publish(g[0].topic, zw.FLOW_BATCH,
                                  zw.flow_batch_args([e.args for e in g]))
            await dbl.publish(last.topic, zw.FLOW_REQUEST, last.args)
            await dbl.publish(last.topic, zw.FLOW_BATCH, bad)
            await wait_for(lambda: len(dbl.verdicts()) >= len(reqs) + 3, 90, "verdicts")
            await asyncio.sleep(0.3)  # nothing is answered twice
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, out, proc.returncode
    dbl, out, rc = asyncio.run(main())
    assert rc == 0, out[-2000:]
    got = {v.uid: v for v in dbl.verdicts()}
    assert len(dbl.verdicts()) == len(got) == len(reqs) + 3
    ev = dbl.verdict_events()
    assert ev[zw.VERDICT] == 1 and ev[zw.VERDICT_BATCH] <= len(groups) + 1
    assert dbl.verdict_flows == len(dbl.verdicts())   # batches and the single verdict
    assert all(t == zw.DEFAULT_VERDICT_TOPIC for t, _, _ in dbl.received)
    assert got["BadB"].status == "error" and "base64" in got["BadB"].detail
    assert got["BadA"].status == got["BadC"].status == "ok"
    scorer = load_scorer(model, device="cpu")
    samples = np.stack([build_flow_sample(zw.flow_request_from_args(
        zw.parse_event(e.message())[2]).frame_tuples(), SPEC).data for e in reqs])
    want = scorer.score_flows(samples, np.array([got[e.uid].packets for e in reqs]))
    assert np.allclose([got[e.uid].score for e in reqs], want, rtol=1e-5, atol=1e-6)
    assert all(got[e.uid].status == "ok" and got[e.uid].model == "tiny" for e in reqs)


def test_malformed_messages_get_error_verdicts_and_serve_survives(model, events, tmp_path):
    _, evs = events
    good = [e for e in evs if e.kind == "request"][:5]
    bad = []
    for i, e in enumerate(good[:4]):
        args = list(e.args)
        if i == 0:
            args[9] = ["***not base64***"]
            args[10], args[11], args[12] = [0.0], [1], [True]
        elif i == 1:
            args[7] = 9  # k differs from the model's K
        elif i == 2:
            args[10] = args[10][:-1]  # vectors of different lengths
        else:
            args[9] = ["AAAA"]  # 3 bytes: no parseable frame
            args[10], args[11], args[12] = [0.0], [3], [True]
        bad.append((f"Bad{i}", args))

    async def main():
        dbl = await ZeekDouble().start()
        mport = free_port()
        proc = start_serve(model, dbl.url, metrics_port=mport)
        try:
            await wait_for(lambda: dbl.clients, 90, "serve connect")
            topic = zw.DEFAULT_REQUEST_TOPIC + "0/"
            ws = next(iter(dbl.clients))
            await ws.send("this is not json")
            await ws.send(json.dumps({"type": "error", "code": "deserialization_failed",
                                      "context": "failed to create Zeek event"}))
            await ws.send(json.dumps(zw.event_message(topic, zw.VERDICT,
                                                      zw.Verdict("x", "ok").args())))
            for uid, args in bad:
                args[0] = uid
                await dbl.publish(topic, zw.FLOW_REQUEST, args)
            for e in good:
                await dbl.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: len(dbl.verdicts()) >= len(bad) + len(good), 60, "verdicts")
            m = scrape(mport)
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, m, out, proc.returncode
    dbl, m, out, rc = asyncio.run(main())
    assert rc == 0
    v = {x.uid: x for x in dbl.verdicts()}
    assert v["Bad0"].status == "error" and "base64" in v["Bad0"].detail
    assert v["Bad1"].status == "error" and "K is 4" in v["Bad1"].detail
    assert v["Bad2"].status == "error"
    assert v["Bad3"].status == "unparsed"
    assert all(v[e.uid].status == "ok" for e in good)
    errors = {k: n for k, n in m.items() if k.startswith("semiflow_errors_total")}
    assert errors['semiflow_errors_total{kind="json"}'] == 1
    assert errors['semiflow_errors_total{kind="zeek:deserialization_failed"}'] == 1
    assert errors['semiflow_errors_total{kind="k_mismatch"}'] == 1
    # Logged once per kind, not once per message.
    assert out.count("malformed request (json)") == 1


def test_double_rejects_like_zeek():
    import websockets

    async def main():
        dbl = await ZeekDouble().start()
        try:
            async with websockets.connect(dbl.url + "/v1/other") as ws:
                err = json.loads(await ws.recv())
                assert err == {"type": "error", "code": "invalid_uri",
                               "context": "Invalid URI - use /v1/messages/json"}
            async with websockets.connect(dbl.url + "/v1/messages/json") as ws:
                await ws.send('{"not": "an array"}')
                assert json.loads(await ws.recv())["context"] == "subscriptions not an array"
            async with websockets.connect(dbl.url + "/v1/messages/json") as ws:
                await ws.send("[]")
                assert json.loads(await ws.recv())["type"] == "ack"
                msg = zw.event_message("zeek/semiflow/verdict/", zw.VERDICT,
                                       zw.Verdict("u", "ok").args())
                msg["data"][2]["data"][1]["data"][5] = {"@data-type": "integer", "data": 1}
                await ws.send(json.dumps(msg))
                assert json.loads(await ws.recv())["context"] == "failed to create Zeek event"
                msg["data"][2]["data"][0]["data"] = "SemiFlow::undeclared"
                await ws.send(json.dumps(msg))
                assert json.loads(await ws.recv())["context"] == "failed to create Zeek event"
                await ws.send("{")
                assert json.loads(await ws.recv())["context"] == "failed to decode JSON object"
        finally:
            await dbl.stop()
    asyncio.run(main())


def test_serve_survives_kill_and_double_restart(model, events, tmp_path):
    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]
    a, b, c = reqs[:15], reqs[15:30], reqs[30:45]

    async def main():
        port = free_port()
        dbl = await ZeekDouble(port=port).start()
        proc = start_serve(model, dbl.url)
        try:
            await wait_for(lambda: dbl.clients, 90, "serve connect")
            for e in a:
                await dbl.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: len(dbl.verdicts()) >= len(a), 60, "verdicts a")
            proc.kill()  # detector killed mid-stream
            proc.communicate(timeout=30)
            await wait_for(lambda: not dbl.clients, 30, "client gone")
            proc = start_serve(model, dbl.url)
            await wait_for(lambda: dbl.clients, 90, "serve reconnect")
            for e in b:
                await dbl.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: {v.uid for v in dbl.verdicts()} >= {e.uid for e in b},
                           60, "verdicts b")
            await dbl.stop()  # Zeek restarted
            await asyncio.sleep(0.5)
            dbl2 = await ZeekDouble(port=port).start()
            await wait_for(lambda: dbl2.clients, 60, "reconnect to restarted zeek")
            for e in c:
                await dbl2.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await wait_for(lambda: len(dbl2.verdicts()) >= len(c), 60, "verdicts c")
            await dbl2.stop()
        finally:
            out = stop(proc)
        return proc.returncode, out
    rc, out = asyncio.run(main())
    assert rc == 0, out[-2000:]


def test_flood_is_shed_with_bounded_queue(model, events, tmp_path):
    """Several times capacity: every flow is answered (ok or shed), the queue never exceeds
    its bound, shed flows are counted, and SIGTERM still finishes in-flight batches."""
    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]
    n = 2000
    queue = 32

    async def main():
        dbl = await ZeekDouble().start()
        mport = free_port()
        proc = start_serve(model, dbl.url, "--queue", str(queue), "--max-batch", "8",
                           metrics_port=mport)
        depth = []
        try:
            await wait_for(lambda: dbl.clients, 90, "serve connect")
            for i in range(n):
                e = reqs[i % len(reqs)]
                args = list(e.args)
                args[0] = f"F{i}"
                await dbl.publish(e.topic, zw.FLOW_REQUEST, args)
                if i % 250 == 0:
                    depth.append(scrape(mport)["semiflow_queue_depth"])
            await wait_for(lambda: len(dbl.verdicts()) >= n, 120, "all flows answered")
            m = scrape(mport)
            rss = _rss_kb(proc.pid)
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, m, depth, rss, out, proc.returncode
    dbl, m, depth, rss, out, rc = asyncio.run(main())
    assert rc == 0, out[-2000:]
    st = {}
    for v in dbl.verdicts():
        st[v.status] = st.get(v.status, 0) + 1
    assert set(st) <= {"ok", "shed"} and st.get("shed", 0) > 0
    assert st["shed"] == m["semiflow_flows_shed_total"]
    assert st.get("ok", 0) == m["semiflow_flows_scored_total"]
    assert max(depth) <= queue
    assert rss < 1_500_000  # kB: bounded by the queue, not by the flood


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_sigterm_finishes_in_flight(model, events, tmp_path):
    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]

    async def main():
        dbl = await ZeekDouble().start()
        proc = start_serve(model, dbl.url, "--max-wait-ms", "200")
        try:
            await wait_for(lambda: dbl.clients, 90, "serve connect")
            for e in reqs:
                await dbl.publish(e.topic, zw.FLOW_REQUEST, e.args)
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            while proc.poll() is None and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, out, proc.returncode
    dbl, out, rc = asyncio.run(main())
    assert rc == 0, out[-2000:]
    # Whatever reached the detector before SIGTERM was answered.
    assert "stopped:" in out
    received = int(out.split("stopped: ", 1)[1].split(" received")[0])
    assert len(dbl.verdicts()) == received > 0


def test_workers_share_shards_and_one_scorer(model, events, tmp_path):
    """--workers 2: two decode processes (one per shard topic) feed the one model; every
    flow is answered with the same score as direct scoring; SIGTERM stops all cleanly."""
    from semiflow.detector.scoring import load_scorer

    _, evs = events
    reqs = [e for e in evs if e.kind == "request"]

    async def main():
        dbl = await ZeekDouble().start()
        proc = start_serve(model, dbl.url, "--workers", "2", "--max-batch", "16")
        try:
            await wait_for(lambda: len(dbl.clients) == 2 or proc.poll() is not None, 120,
                           "two workers connect")
            assert proc.poll() is None, proc.stdout.read()
            subs = sorted(s for c in dbl.clients.values() for s in c)
            for i, e in enumerate(reqs):
                await dbl.publish(f"{zw.DEFAULT_REQUEST_TOPIC}{i % 2}/", zw.FLOW_REQUEST,
                                  e.args)
            await wait_for(lambda: len(dbl.verdicts()) >= len(reqs), 90, "verdicts")
            await asyncio.sleep(0.3)  # nothing is answered twice
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, subs, out, proc.returncode
    dbl, subs, out, rc = asyncio.run(main())
    assert rc == 0, out[-3000:]
    assert subs == [zw.DEFAULT_REQUEST_TOPIC + "0/", zw.DEFAULT_REQUEST_TOPIC + "1/"]
    got = {v.uid: v for v in dbl.verdicts()}
    assert len(dbl.verdicts()) == len(reqs) and set(got) == {e.uid for e in reqs}
    scorer = load_scorer(model, device="cpu")
    samples = np.stack([build_flow_sample(zw.flow_request_from_args(
        zw.parse_event(e.message())[2]).frame_tuples(), SPEC).data for e in reqs])
    want = scorer.score_flows(samples, np.array([got[e.uid].packets for e in reqs]))
    assert np.allclose([got[e.uid].score for e in reqs], want, rtol=1e-5, atol=1e-6)
    assert all(got[e.uid].status == "ok" for e in reqs)
    assert out.count("stopped: ") == 3  # two workers + the scorer process
