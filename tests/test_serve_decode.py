"""The batch decode path: build_flow_samples, decode_flow_requests, verdict_text, shards,
and the zmq scorer (in-process, loopback ipc). Bounded, no network beyond a local socket."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import (
    STATUS_CODES,
    FlowSampleSpec,
    build_flow_sample,
    build_flow_samples,
    empty_flow_arrays,
)
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_decode import (
    _thorough,
    decode_flow_requests,
    verdict_text,
    warm_up_messages,
)

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import TrivialScorer, corpus_requests  # noqa: E402
from zeek_double import zeek_json  # noqa: E402

SPEC = FlowSampleSpec(k=4, l=256)


@pytest.fixture(scope="module")
def requests(corpus_dir):
    return corpus_requests(corpus_dir)


def _frames(e) -> list:
    r = zw.flow_request_from_args(zw.parse_event(e.message())[2])
    return r.frame_tuples()


def _reference(frames, spec):
    """The per-flow loop the batch kernel replaced, written against the frame kernels."""
    data, direction, ts, wlen = (a[0] for a in empty_flow_arrays(spec))
    info = np.zeros(fr.NFIELDS, np.int64)
    n = parsed = 0
    skipped: dict[str, int] = {}
    for raw, lt, t, w, o in frames:
        buf = np.frombuffer(raw, np.uint8)
        reason = fr.parse_frame(buf, 0, len(buf), lt, info)
        if reason:
            skipped[fr.SKIP_REASONS[reason]] = skipped.get(fr.SKIP_REASONS[reason], 0) + 1
            continue
        parsed += 1
        if n >= spec.k or not spec.selects(int(info[fr.F_PAYLEN])):
            continue
        fr.write_sample_row(buf, info, data[n], spec.mask_bits)
        direction[n], ts[n], wlen[n] = (0 if o else 1), t, w
        n += 1
    return data, direction, ts, wlen, n, ("ok" if n else "no_payload" if parsed
                                          else "unparsed"), skipped


@pytest.mark.parametrize("selection", ["payload", "all"])
def test_batch_kernel_equals_per_flow_and_reference(requests, selection):
    spec = FlowSampleSpec(k=4, l=256, selection=selection)
    flows = [_frames(e) for e in requests]
    # Add flows with unparseable frames, a mix, and an empty one.
    junk = (b"\x00\x01\x02", 1, 1.5, 3, True)
    flows += [[junk], [junk] + flows[0], []]
    frames = [f for fl in flows for f in fl]
    lens = np.array([len(f[0]) for f in frames])
    off = np.concatenate([[0], np.cumsum(lens)[:-1]])
    start = np.concatenate([[0], np.cumsum([len(fl) for fl in flows])])
    col = list(zip(*frames))
    b = build_flow_samples(np.frombuffer(b"".join(col[0]), np.uint8), off, lens, col[1],
                           col[2], col[3], col[4], start, spec)
    assert set(b.status) >= {0, 2}
    for i, fl in enumerate(flows):
        one = build_flow_sample(fl, spec)
        data, direction, ts, wlen, n, status, skipped = _reference(fl, spec)
        for got in (one, b.flow(i)):
            assert np.array_equal(got.data, data) and np.array_equal(got.direction, direction)
            assert np.array_equal(got.ts, ts) and np.array_equal(got.wire_len, wlen)
            assert (got.n_selected, got.status, got.skipped) == (n, status, skipped)
        assert STATUS_CODES[b.status[i]] == status


def test_batch_kernel_rejects_bad_offsets():
    z = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="outside the blob"):
        build_flow_samples(np.zeros(4, np.uint8), z, z + 9, z + 1, np.zeros(1), z,
                           np.ones(1, bool), np.array([0, 1]), SPEC)
    with pytest.raises(ValueError, match="flow_start"):
        build_flow_samples(np.zeros(4, np.uint8), z, z, z, np.zeros(1), z,
                           np.ones(1, bool), np.array([1, 0]), SPEC)


def test_fast_decode_equals_thorough(requests):
    texts = [zeek_json(e.message()) for e in requests]
    b = decode_flow_requests(texts)
    assert not b.errors and b.items == list(range(len(texts)))
    for i, t in enumerate(texts):
        uid, reply, lt, k, frames, ts, wl, orig, conn_id = _thorough(t)
        s, e = b.flow_start[i], b.flow_start[i + 1]
        assert (b.keys[i], b.replies[i], b.ks[i], b.ids[i]) == (uid, reply, k, conn_id)
        assert [bytes(b.blob[o:o + n]) for o, n in zip(b.frame_off[s:e], b.frame_len[s:e])] \
            == frames
        assert list(b.ts[s:e]) == ts and list(b.wire_len[s:e]) == wl
        assert list(b.is_orig[s:e]) == orig and set(b.linktype[s:e]) <= {lt}


def test_malformed_items_keep_their_place_and_errors(requests):
    good = [zeek_json(e.message()) for e in requests[:3]]
    bad_b64 = requests[0].message()
    bad_b64["data"][2]["data"][1]["data"][9]["data"][0]["data"] = "***"
    bad_type = requests[1].message()
    bad_type["data"][2]["data"][1]["data"][10]["data"][0] = {"@data-type": "count",
                                                              "data": 1}
    int_ts = requests[2].message()  # an integer where a real is due: accepted, as a float
    int_ts["data"][2]["data"][1]["data"][10]["data"][0]["data"] = 7
    huge = requests[2].message()
    huge["data"][2]["data"][1]["data"][11]["data"][0]["data"] = 2 ** 70
    raws = [good[0], "{not json", json.dumps(bad_b64), good[1], json.dumps(bad_type),
            json.dumps(int_ts), json.dumps(huge), good[2]]
    b = decode_flow_requests(raws)
    assert b.items == [0, 3, 5, 7]
    assert b.keys == [requests[0].uid, requests[1].uid, requests[2].uid, requests[2].uid]
    errs = {i: e for i, e in b.errors}
    assert set(errs) == {1, 2, 4, 6}
    assert errs[1].kind == "json" and errs[1].key is None
    assert errs[2].kind == "base64" and errs[2].key == requests[0].uid
    assert errs[4].kind == "type" and errs[4].key == requests[1].uid
    assert errs[6].kind == "value" and errs[6].key == requests[2].uid
    s = b.flow_start[2]
    assert b.ts[s] == 7.0


@pytest.mark.parametrize("v", [
    zw.Verdict("CAbc1", "ok", 0.25, 0.5, False, 4, "semiflow", "v1"),
    zw.Verdict("C2", "error", float("nan"), float("inf"), True, 0, "m", "",
               'bad "frame"\\ \n caf\u00e9'),
    zw.Verdict("C3", "ok", 1e-7, 3.0, True, 8, "x", "y", ""),
])
def test_verdict_text_is_the_json_message(v):
    topic = zw.DEFAULT_VERDICT_TOPIC
    assert verdict_text(topic, v) == json.dumps(v.message(topic), separators=(",", ":"))
    assert zw.Verdict.from_args(zw.parse_event(json.loads(verdict_text(topic, v)))[2]) \
        .uid == v.uid


def test_shard_specs():
    from semiflow.cli_serve import parse_shards, topics_for, worker_shards

    assert parse_shards("2/4") == ([2], 4)
    assert parse_shards("0-2,5/8") == ([0, 1, 2, 5], 8)
    for bad in ("4/4", "x/2", "1/0", "/3", "1-/3"):
        with pytest.raises(ValueError):
            parse_shards(bad)
    assert worker_shards(None, 1) == [None]
    assert worker_shards(None, 3) == ["0/3", "1/3", "2/3"]
    assert worker_shards("0-3/8", 2) == ["0,2/8", "1,3/8"]
    with pytest.raises(ValueError, match="needs at least"):
        worker_shards("1/4", 2)
    assert topics_for("t", "0,2/8") == ["t/0/", "t/2/"]
    assert topics_for("t/", None) == ["t/"]


def test_zmq_scorer_merges_batches_and_answers_each(tmp_path):
    import zmq

    from semiflow.detector.serving.zmq_scorer import RemoteScorer, ScorerServer

    local = TrivialScorer(SPEC)
    server = ScorerServer(local, f"ipc://{tmp_path}/s")
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            server.serve_once(0.02)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    rng = np.random.default_rng(1)
    results = {}

    def client(i):
        rs = RemoteScorer(server.addr, timeout=20)
        assert (rs.spec, rs.model_name) == (SPEC, "trivial")
        for j in range(5):
            x = rng.integers(0, 256, (7 + i, 4, 256), dtype=np.uint8)
            nsel = np.arange(7 + i) % 5
            x[np.arange(4)[None, :] >= nsel[:, None]] = 0  # unselected slots are zero
            results[(i, j)] = (rs.score_flows(x, nsel), local.score_flows(x, nsel))
        rs.close()
    try:
        cs = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for c in cs:
            c.start()
        for c in cs:
            c.join(60)
        assert len(results) == 15
        for got, want in results.values():
            assert np.allclose(got, want, equal_nan=True)
        # A batch with the wrong L is answered with an error, not a crash.
        d = zmq.Context.instance().socket(zmq.DEALER)
        d.connect(server.addr)
        d.send_multipart([b"score", b"1", b'{"m":1,"k":4,"l":9}', np.ones(1, np.int64),
                          np.zeros(9, np.uint8)])
        assert d.poll(20000)
        assert d.recv_multipart()[0] == b"error"
        d.close(0)
    finally:
        stop.set()
        t.join(10)
        server.close()


def test_allowlisted_flows_are_answered_without_scoring(requests, tmp_path):
    from semiflow.cli_serve import _allow_hook
    from semiflow.detector.serving.core import STATUS_ALLOWLISTED, MicroBatcher
    from semiflow.plugin.allowlist import AllowRule, add_rules

    texts = [zeek_json(e.message()) for e in requests[:40]]
    batch = decode_flow_requests(texts)
    assert len(batch.ids) == len(batch.keys) and batch.ids[0][0]
    uid0 = batch.keys[0]
    host = batch.ids[1][2]  # a responder of another flow
    path = tmp_path / "allow.tsv"
    add_rules(path, [AllowRule(uid=uid0, reason="test"), AllowRule(host=host, reason="test")])
    scorer = TrivialScorer(SPEC)
    calls = []
    real = scorer.score_flows
    scorer.score_flows = lambda s, n: calls.append(len(n)) or real(s, n)
    results = []
    mb = MicroBatcher(scorer, decode_flow_requests, results.extend, max_batch=64,
                      allow=_allow_hook(str(path)))
    calls.clear()  # the batcher's warm-up call
    try:
        out = mb.process([(t, 0.0, 1) for t in texts])
    finally:
        mb.close()
    by = {r.key: r for r in out}
    assert by[uid0].status == STATUS_ALLOWLISTED and not by[uid0].anomalous
    hits = {k for k, i in zip(batch.keys, batch.ids) if host in (i[0], i[2])}
    assert all(by[k].status == STATUS_ALLOWLISTED for k in hits)
    assert sum(r.status == STATUS_ALLOWLISTED for r in out) == len(hits | {uid0})
    assert sum(calls) == sum(r.status == "ok" for r in out)  # only the others were scored


def test_warm_up_messages_exercise_the_live_decode_path():
    """What a detector decodes before it connects (numba kernels loaded at start, not on the
    first real batches): valid Zeek messages, every flow built into a sample, both the
    flow_batch and the flow_request paths; the warm-up is neither scored nor counted."""
    from semiflow.detector.serving.core import MicroBatcher

    texts = warm_up_messages(SPEC.k, SPEC.l + 64)
    batch = decode_flow_requests(texts)
    assert not batch.errors
    assert sorted(batch.keys) == ["Cwarm1", "Cwarm1", "Cwarm2", "Cwarm3"]
    assert zw.parse_event(json.loads(texts[0]))[1] == zw.FLOW_BATCH
    assert _thorough(texts[1])               # the thorough (authoritative) parser agrees
    s = build_flow_samples(batch.blob, batch.frame_off, batch.frame_len, batch.linktype,
                           batch.ts, batch.wire_len, batch.is_orig, batch.flow_start, SPEC,
                           batch.ids)
    assert (s.status == 0).all() and (s.n_selected > 0).all()
    results = []
    scorer = TrivialScorer(SPEC)
    mb = MicroBatcher(scorer, decode_flow_requests, results.extend, warm_input=texts)
    mb.close()
    assert results == [] and mb.stats.received == 0 and mb.stats.errors == {}
