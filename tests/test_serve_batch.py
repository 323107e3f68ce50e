"""Batched messages: flow_batch decoding (one parse, one base64 pass), its errors, the
verdict_batch encoding, and the Zeek double's fidelity to Zeek's WebSocket server (review
S7). In-process or loopback only."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_samples
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_batch import (
    BatchReply,
    b64decode_many,
    batch_head,
    is_batch,
    verdict_batch_text,
)
from semiflow.plugin.zeek_decode import decode_flow_requests

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import corpus_requests  # noqa: E402
from zeek_double import ZeekDouble, event_metadata, zeek_json  # noqa: E402

SPEC = FlowSampleSpec(k=4, l=256)


@pytest.fixture(scope="module")
def requests(corpus_dir):
    return corpus_requests(corpus_dir)


def batch_message(reqs, topic: str = zw.DEFAULT_REQUEST_TOPIC + "0/") -> dict:
    return zw.event_message(topic, zw.FLOW_BATCH, zw.flow_batch_args([e.args for e in reqs]))


def _bytes(b, i):
    s, e = b.flow_start[i], b.flow_start[i + 1]
    return [bytes(b.blob[o:o + n]) for o, n in zip(b.frame_off[s:e], b.frame_len[s:e])]


def test_one_pass_base64_equals_binascii():
    rng = np.random.default_rng(0)
    frames = [base64.b64encode(rng.integers(0, 256, n, dtype=np.uint8).tobytes()).decode()
              for n in (0, 1, 2, 3, 4, 5, 60, 61, 62, 1500)]
    bad = ["A", "AB=C", "QQ==QUI=", "QQ=A", "****", "QUJD\n", "QUJDé===", "QQ==", "QUI="]
    blob, off, ln, ok = b64decode_many(frames + bad)
    for j, f in enumerate(frames + bad):
        try:
            want = binascii.a2b_base64(f.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            want = None
        assert bool(ok[j]) == (want is not None), f
        if want is not None:
            assert bytes(blob[off[j]:off[j] + ln[j]]) == want, f
    assert ok[:len(frames)].all() and not ok[len(frames):-2].any()


def test_batch_decodes_to_the_same_flows_as_single_requests(requests):
    reqs = requests[:23]
    singles = decode_flow_requests([zeek_json(e.message()) for e in reqs])
    batches = [batch_message(reqs[i:i + 7]) for i in range(0, len(reqs), 7)]
    texts = [zeek_json(m) for m in batches]
    assert all(is_batch(t) for t in texts) and not is_batch(zeek_json(reqs[0].message()))
    b = decode_flow_requests(texts)
    assert not b.errors and b.keys == singles.keys == [e.uid for e in reqs]
    assert b.items == [i // 7 for i in range(len(reqs))]
    assert b.replies == [BatchReply(zw.DEFAULT_VERDICT_TOPIC)] * len(reqs)
    assert b.ids == singles.ids and list(b.ks) == list(singles.ks)
    for i in range(len(reqs)):
        assert _bytes(b, i) == _bytes(singles, i)
        for a in ("ts", "wire_len", "is_orig", "linktype"):
            s1, s2 = slice(b.flow_start[i], b.flow_start[i + 1]), \
                slice(singles.flow_start[i], singles.flow_start[i + 1])
            assert list(getattr(b, a)[s1]) == list(getattr(singles, a)[s2]), a
    # Same samples from one build_flow_samples call per micro-batch.
    x = build_flow_samples(b.blob, b.frame_off, b.frame_len, b.linktype, b.ts, b.wire_len,
                           b.is_orig, b.flow_start, SPEC)
    y = build_flow_samples(singles.blob, singles.frame_off, singles.frame_len,
                           singles.linktype, singles.ts, singles.wire_len, singles.is_orig,
                           singles.flow_start, SPEC)
    assert np.array_equal(x.data, y.data) and np.array_equal(x.n_selected, y.n_selected)


def test_mixed_micro_batch_keeps_positions(requests):
    one, two, three = requests[:1], requests[1:4], requests[4:5]
    texts = [zeek_json(one[0].message()), zeek_json(batch_message(two)), "{bad",
             zeek_json(three[0].message())]
    b = decode_flow_requests(texts)
    assert b.keys == [e.uid for e in one + three + two]
    assert b.items == [0, 3, 1, 1, 1]
    assert [i for i, _ in b.errors] == [2]
    assert isinstance(b.replies[-1], BatchReply) and b.replies[0] == zw.DEFAULT_VERDICT_TOPIC


def test_batch_errors_answer_the_flows_they_concern(requests):
    reqs = requests[:5]
    # One flow's frame is not base64: that flow is an error, the others decode.
    m = batch_message(reqs)
    args = m["data"][2]["data"][1]["data"]
    n0 = len(reqs[0].args[9])
    args[10]["data"][n0]["data"] = "***"  # the second flow's first frame
    b = decode_flow_requests([json.dumps(m)])
    assert b.keys == [e.uid for e in reqs if e is not reqs[1]]
    assert [(e.kind, e.key) for _, e in b.errors] == [("base64", reqs[1].uid)]
    assert isinstance(b.errors[0][1].reply, BatchReply)
    want = decode_flow_requests([zeek_json(e.message()) for e in reqs])
    assert _bytes(b, 1) == _bytes(want, 2)
    # Vectors that disagree: every uid of the batch gets the error (thorough path).
    m = batch_message(reqs)
    m["data"][2]["data"][1]["data"][12]["data"].pop()
    b = decode_flow_requests([json.dumps(m)])
    assert not b.keys and sorted(e.key for _, e in b.errors) == sorted(e.uid for e in reqs)
    assert {e.kind for _, e in b.errors} == {"value"}
    # A count sent as an integer tag: the declaration decides (thorough path, type error).
    m = batch_message(reqs)
    m["data"][2]["data"][1]["data"][9]["data"][0] = {"@data-type": "integer", "data": 1}
    b = decode_flow_requests([json.dumps(m)])
    assert {e.kind for _, e in b.errors} == {"type"} and len(b.errors) == len(reqs)
    # An integral real printed as an integer (Zeek 6/7 do) is accepted.
    m = batch_message(reqs)
    m["data"][2]["data"][1]["data"][11]["data"][0]["data"] = 7
    b = decode_flow_requests([json.dumps(m)])
    assert not b.errors and b.ts[0] == 7.0


def test_batch_head_reads_reply_topic_and_uids(requests):
    m = batch_message(requests[:9])
    for text in (zeek_json(m), json.dumps(m, indent=1)):
        assert batch_head(text) == (zw.DEFAULT_VERDICT_TOPIC, [e.uid for e in requests[:9]])
    assert batch_head(zeek_json(requests[0].message())) is None


@pytest.mark.parametrize("meta", ["8", "7", "none"])
def test_events_with_and_without_metadata_decode(requests, meta):
    """Zeek 8 appends an empty metadata vector, Zeek 6/7 [[1, timestamp]] (review S5/S7)."""
    for m in (requests[0].message(), batch_message(requests[:3])):
        m["data"][2]["data"] += event_metadata(meta)
        b = decode_flow_requests([zeek_json(m)])
        assert not b.errors and b.keys


def test_verdict_batch_text_is_the_json_message():
    vs = [zw.Verdict("C1", "ok", 0.25, 0.5, False, 4, "m", "v"),
          zw.Verdict("C2", "error", float("nan"), 0.5, False, 0, "m", "v",
                     'bad "frame" caf\u00e9 \x1b'),
          zw.Verdict("C3", "shed", 0.0, 0.5, False, 0, "m", "v", "detector queue full")]
    topic = zw.DEFAULT_VERDICT_TOPIC
    text = verdict_batch_text(topic, vs, 0.5, "m", "v")
    want = zw.event_message(topic, zw.VERDICT_BATCH, [
        [v.uid for v in vs], [v.status for v in vs], [0.25, 0.0, 0.0], 0.5,
        [False] * 3, [4, 0, 0], "m", "v", [v.detail for v in vs]])
    assert json.loads(text) == want
    assert text.isascii() and "\\u" not in text and '"data":0.0' in text
    got = zw.verdicts_from_batch_args(zw.parse_event(json.loads(text))[2])
    assert [(v.uid, v.status, v.packets) for v in got] == [(v.uid, v.status, v.packets)
                                                           for v in vs]
    assert got[1].detail == 'bad "frame" caf? ?'
    with pytest.raises(zw.WireError):
        verdict_batch_text(topic, [zw.Verdict("x", "ok", packets=-1)], 0.5, "m", "v")


def test_double_answers_as_zeek_does():
    """S7: application names, bad subscriptions (no ack, socket stays open), JSON-level
    vs declaration-level errors, and 3-element events."""
    import websockets

    async def main():
        dbl = await ZeekDouble(metadata="8").start()
        try:
            url = dbl.url + "/v1/messages/json"
            async with websockets.connect(url, additional_headers={
                    "X-Application-Name": "bad name!"}) as ws:
                err = json.loads(await ws.recv())
                assert err["code"] == "invalid_application_name"
                with pytest.raises(websockets.ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1008
            async with websockets.connect(url) as ws:
                await ws.send('{"not": "an array"}')
                assert json.loads(await ws.recv())["context"] == "subscriptions not an array"
                await ws.send("[]")  # queued forever: no ack, no answer, still open
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.5)
                assert ws.state.name == "OPEN"
            async with websockets.connect(url, additional_headers={
                    "X-Application-Name": "semiflow-w0"}) as ws:
                await ws.send(json.dumps([zw.DEFAULT_REQUEST_TOPIC]))
                assert json.loads(await ws.recv())["type"] == "ack"
                assert dbl.app_names == ["semiflow-w0"]
                good = zw.event_message(zw.DEFAULT_VERDICT_TOPIC, zw.VERDICT,
                                        zw.Verdict("u", "ok", 1.0, 0.5).args())
                for path, value, context in (
                        ((2,), {"@data-type": "real", "data": 1}, "decode"),  # real as int
                        ((5,), {"@data-type": "count", "data": -1}, "decode"),
                        ((5,), {"@data-type": "integer", "data": 1}, "create"),
                        ((0,), {"@data-type": "address", "data": "10.0.0.1"}, "create")):
                    m = json.loads(json.dumps(good))
                    m["data"][2]["data"][1]["data"][path[0]] = value
                    await ws.send(json.dumps(m))
                    got = json.loads(await ws.recv())["context"]
                    assert got == {"decode": "failed to decode JSON object",
                                   "create": "failed to create Zeek event"}[context]
                bad_addr = zw.event_message(zw.DEFAULT_REQUEST_TOPIC, zw.FLOW_BATCH,
                                            zw.flow_batch_args([[
                                                "C1", "t/", "10.0.0.1", "1/tcp", "10.0.0.2",
                                                "80/tcp", 1, 8, 0, ["AA=="], [1.0], [60],
                                                [True]]]))
                bad_addr["data"][2]["data"][1]["data"][5]["data"][0]["data"] = "10.0.0.999"
                await ws.send(json.dumps(bad_addr))
                assert json.loads(await ws.recv())["context"] == "failed to decode JSON object"
                await ws.send(json.dumps(good))  # dispatched: nothing comes back
                await asyncio.sleep(0.2)
                assert [n for _, n, _ in dbl.received] == [zw.VERDICT]
                # Events the double publishes have Zeek 8's third (metadata) element.
                await dbl.publish(zw.DEFAULT_REQUEST_TOPIC + "0/", zw.VERDICT,
                                  zw.Verdict("v", "ok").args())
                ev = json.loads(await ws.recv())["data"][2]["data"]
                assert len(ev) == 3 and ev[2] == {"@data-type": "vector", "data": []}
        finally:
            await dbl.stop()
    asyncio.run(main())


def test_queue_is_bounded_in_flows_and_shed_batches_are_answered(requests):
    """The batcher's bound counts flows, not messages; a batch that does not fit is
    answered at once with one verdict_batch of status shed for each of its flows."""
    import threading

    from serve_helpers import TrivialScorer

    from semiflow.cli_serve import ServeApp

    gate = threading.Event()
    app = ServeApp(TrivialScorer(SPEC), "ws://127.0.0.1:9", ["t/"], queue_size=8,
                   max_wait=0.0, max_batch=64)
    results = []
    app.batcher.decode = lambda raws: (gate.wait(30), decode_flow_requests(raws))[1]
    app.batcher.on_results = results.extend
    a, b, c = (zeek_json(batch_message(requests[i:i + 5])) for i in (0, 5, 10))
    try:
        app._on_message(a)  # taken by the worker, which waits at the gate
        for _ in range(200):
            if app.batcher.queue_depth == 0:
                break
            gate.wait(0.01)
        app._on_message(b)  # 5 flows queued: fits in 8
        assert app.batcher.queue_depth == 5 and not app.client.out
        app._on_message(c)  # 5 more would make 10 > 8: shed, answered now
        assert app.stats.shed == 5 and app.stats.received == 15
        assert len(app.client.out) == 1
        vs = zw.verdicts_from_batch_args(zw.parse_event(json.loads(app.client.out[0]))[2])
        assert [(v.uid, v.status) for v in vs] == [(e.uid, "shed") for e in requests[10:15]]
    finally:
        gate.set()
        app.batcher.close(30)
    assert sorted(r.key for r in results) == sorted(e.uid for e in requests[:10])
    assert all(isinstance(r.reply, BatchReply) for r in results)
