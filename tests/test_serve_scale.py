"""The scaling pieces of the live path: MicroBatcher's scoring pipeline, the RemoteScorer
with several batches in flight against the overlapping ScorerServer, `--zeek URL,URL`,
and the histogram's batch observe. No timing assertions."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.serving.core import MicroBatcher
from semiflow.detector.serving.stats import Histogram
from semiflow.plugin.zeek_decode import decode_flow_requests

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import TrivialScorer, corpus_requests  # noqa: E402
from zeek_double import zeek_json  # noqa: E402

SPEC = FlowSampleSpec(k=4, l=256)


@pytest.fixture(scope="module")
def texts(corpus_dir):
    return [zeek_json(e.message()) for e in corpus_requests(corpus_dir)]


class SlowSubmitScorer(TrivialScorer):
    """A scorer with submit(): answers each batch from a thread after a delay, so the
    batcher has several batches in flight; batch number `fail_at` fails."""

    def __init__(self, spec, fail_at: int = -1):
        super().__init__(spec)
        self.submitted = 0
        self.max_inflight = 0
        self._inflight = 0
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def submit(self, samples, n_selected):
        fut: Future = Future()
        with self.lock:
            i = self.submitted
            self.submitted += 1
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
        samples, n_selected = np.array(samples), np.array(n_selected)

        def answer():
            time.sleep(0.05)
            with self.lock:
                self._inflight -= 1
            if i == self.fail_at:
                fut.set_exception(RuntimeError("GPU fell over"))
            else:
                fut.set_result(self.score_flows(samples, n_selected))
        threading.Thread(target=answer, daemon=True).start()
        return fut


def _run_batcher(scorer, texts, pipeline: int, max_batch: int = 8) -> list:
    results: list = []
    done = threading.Event()
    want = len(texts)

    def on_results(rs):
        results.extend(rs)
        if len(results) >= want:
            done.set()
    mb = MicroBatcher(scorer, decode_flow_requests, on_results, max_batch=max_batch,
                      max_wait=0.001, pipeline=pipeline)
    try:
        for t in texts:
            assert mb.submit(t)
        assert done.wait(60)
    finally:
        assert mb.close(30)
    return results


def test_pipelined_batcher_answers_like_the_in_line_one(texts):
    """Several micro-batches in flight give the same verdicts as scoring in line."""
    texts = texts[:60]
    inline = {r.key: r for r in _run_batcher(TrivialScorer(SPEC), texts, pipeline=1)}
    sc = SlowSubmitScorer(SPEC)
    piped = {r.key: r for r in _run_batcher(sc, texts, pipeline=3)}
    assert piped.keys() == inline.keys()
    for k, r in inline.items():
        p = piped[k]
        assert (p.status, p.packets, p.anomalous) == (r.status, r.packets, r.anomalous)
        assert p.score == pytest.approx(r.score)
    assert sc.submitted >= 2
    assert 1 <= sc.max_inflight <= 3


def test_scorer_without_submit_runs_on_a_thread_in_the_pipeline(texts):
    results = _run_batcher(TrivialScorer(SPEC), texts[:30], pipeline=2)
    assert len(results) == 30 and any(r.status == "ok" for r in results)


def test_a_failed_batch_in_flight_answers_its_flows_with_error(texts):
    """The failing batch's scored flows get status error; the other batches are fine."""
    sc = SlowSubmitScorer(SPEC, fail_at=1)
    results = _run_batcher(sc, texts[:40], pipeline=2)
    assert len(results) == 40
    errs = [r for r in results if r.status == "error"]
    assert errs and all("GPU fell over" in r.detail for r in errs)
    assert any(r.status == "ok" for r in results)


def test_remote_scorer_pipelines_batches_through_the_overlapping_server(tmp_path):
    from semiflow.detector.serving.zmq_scorer import RemoteScorer, ScorerServer

    local = TrivialScorer(SPEC)
    for overlap in (True, False):
        server = ScorerServer(local, f"ipc://{tmp_path}/s{overlap}", overlap=overlap)
        stop = threading.Event()

        def loop(server=server, stop=stop):
            while not stop.is_set():
                server.serve_once(0.02)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            rs = RemoteScorer(server.addr, timeout=20)
            rng = np.random.default_rng(2)
            batches = []
            for i in range(6):
                x = rng.integers(0, 256, (5 + i, 4, 256), dtype=np.uint8)
                nsel = np.arange(5 + i) % 5
                x[np.arange(4)[None, :] >= nsel[:, None]] = 0
                batches.append((x, nsel, rs.submit(x, nsel)))
            # answers are matched by sequence number, whatever order they are asked for
            for x, nsel, ticket in reversed(batches):
                assert np.allclose(ticket.result(20), local.score_flows(x, nsel),
                                   equal_nan=True)
            assert server.flows == sum(len(b[1]) for b in batches)
            rs.close()
        finally:
            stop.set()
            t.join(10)
            server.close()


def test_zeek_endpoints_are_dealt_to_workers():
    from semiflow.serve_pool import worker_command, zeek_urls

    assert zeek_urls("ws://a:1") == ["ws://a:1"]
    assert zeek_urls("ws://a:1, ws://b:2") == ["ws://a:1", "ws://b:2"]
    with pytest.raises(ValueError):
        zeek_urls(" , ")
    args = argparse.Namespace(zeek="ws://a:1,ws://b:2", model="m", topic_prefix="t/",
                              max_batch=8, max_wait_ms=1.0, queue=10, tls_ca=None,
                              tls_cert=None, tls_key=None, threads=None, allowlist=None,
                              app_name="semiflow", tls_no_verify=False, metrics_port=None)
    got = [worker_command(args, "ipc://x", f"{i}/3", i) for i in range(3)]
    urls = [c[c.index("--zeek") + 1] for c in got]
    assert urls == ["ws://a:1", "ws://b:2", "ws://a:1"]
    assert all(c.count("--zeek") == 1 for c in got)


def test_more_endpoints_than_workers_is_refused(tmp_path):
    from semiflow import cli_serve

    ap = argparse.ArgumentParser()
    cli_serve.register(ap.add_subparsers())
    args = ap.parse_args(["serve", "--model", str(tmp_path), "--zeek", "ws://a:1,ws://b:2"])
    with pytest.raises(ValueError, match="--workers must be at least 2"):
        cli_serve.run(args, scorer=TrivialScorer(SPEC))


def test_histogram_batch_observe_equals_one_by_one():
    vals = [0.0, 0.001, 0.0011, 0.07, 0.1, 3.0, 99.0]
    a, b = Histogram((0.001, 0.01, 0.1, 1.0)), Histogram((0.001, 0.01, 0.1, 1.0))
    for v in vals:
        a.observe(v)
    b.observe_many(vals)
    b.observe_many([])
    assert a.counts == b.counts and a.n == b.n and a.sum == pytest.approx(b.sum)


def test_verdict_batch_text_written_as_text_equals_the_message():
    """The text-built verdict_batch (cli_serve answers with it) parses to exactly the
    dict-built message, for awkward strings, non-finite scores and empty batches."""
    import json

    from semiflow.plugin import zeek_wire as zw
    from semiflow.plugin.zeek_batch import (
        verdict_batch_columns_text,
        verdict_batch_message,
        verdict_batch_text,
    )
    vs = [zw.Verdict("C1", "ok", 0.25, 0.5, False, 4, "m", "v"),
          zw.Verdict("C2", "error", float("nan"), 0.5, True, 0, "m", "v",
                     'bad "frame", caf\u00e9 \x1b \\ x'),
          zw.Verdict("C3", "shed", 1e-5, 0.5, False, 0, "m", "v", "queue, full"),
          zw.Verdict("C4", "ok", float("inf"), 0.5, False, 7, "m", "v", ""),
          zw.Verdict("C\u00e95", "ok", -3.0, 0.5, False, 2**40, "m", "v", "")]
    for sub in (vs, [], vs[:1], vs[2:]):
        for thr, model in ((0.5, "m"), (float("nan"), 'mo"d\\el')):
            t = verdict_batch_text("t/", sub, thr, model, "v1")
            assert t.isascii() and "\\u" not in t
            want = json.loads(json.dumps(verdict_batch_message("t/", sub, thr, model, "v1")))
            assert json.loads(t) == want
            cols = verdict_batch_columns_text(
                "t/", [v.uid for v in sub], [v.status for v in sub],
                np.array([v.score for v in sub]), thr, [v.anomalous for v in sub],
                np.array([v.packets for v in sub], np.int64), model, "v1",
                [v.detail for v in sub])
            assert cols == t
    with pytest.raises(zw.WireError):
        verdict_batch_columns_text("t/", ["x"], ["ok"], [0.0], 0.5, [False], [-1], "m",
                                   "v", [""])


def test_flow_level_scoring_zeroes_unselected_slots_and_keeps_the_input():
    """score_flow_samples zeroes only the slots past n_selected (was a full np.where pass)
    and leaves the caller's array as it was."""
    from semiflow.detector.models.semiflow_flowartifact import score_flow_samples
    from semiflow.detector.scoring import load_scorer

    model = Path(__file__).resolve().parent.parent / "semiflow" / "data" / "model"
    det = load_scorer(model, device="cpu").flow_detector
    k, l = det.config_.k, det.config_.length
    seen = []
    det.anomaly_score = lambda x: seen.append(x.copy()) or np.arange(len(x), dtype=float)
    rng = np.random.default_rng(3)
    nsel = np.array([0, 1, k, 3, 0, 2])
    x = rng.integers(1, 256, (len(nsel), k, l), dtype=np.uint8)  # junk in every slot
    before = x.copy()
    out = score_flow_samples(det, x, nsel)
    assert (x == before).all()
    ok = nsel > 0
    keep = np.arange(k)[None, :] < nsel[ok][:, None]
    assert (seen[0] == np.where(keep[:, :, None], x[ok], 0)).all()
    assert np.isnan(out[~ok]).all() and (out[ok] == np.arange(ok.sum())).all()
