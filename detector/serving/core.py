"""The serving core: micro-batches of flow requests -> samples -> scores, off the event loop.

Transport-agnostic: a connector (plugin/zeek_ws.py + semiflow/cli_serve.py) hands raw
requests to `MicroBatcher.submit` from its event loop and receives `FlowResult`s through a
callback. Decoding a whole micro-batch at once (the injected `decode`: raw texts -> one
RequestBatch), sample building (spec.build_flow_samples, the same kernels the offline path
uses) and inference all run on the batcher's worker thread, so the loop keeps answering
pings. The queue is bounded in flows (a raw item may carry several, e.g. a Zeek flow_batch):
`submit` returns False when it is full and the connector reports those flows as shed
instead of growing memory.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from semiflow.detector.sample.spec import STATUS_CODES, FlowSampleSpec, build_flow_samples
from semiflow.detector.serving.requests import RequestBatch, RequestError
from semiflow.detector.serving.stats import ServingStats

log = logging.getLogger("semiflow.serve")

STATUS_ERROR = "error"
STATUS_SHED = "shed"
STATUS_ALLOWLISTED = "allowlisted"  # an analyst marked it benign: not scored, not noticed

# Histogram buckets (seconds / flows) for the metrics endpoint.


class Scorer(Protocol):
    """What the serving loop needs of a model (detector.scoring.FlowScorer has it)."""

    spec: FlowSampleSpec
    threshold: float
    model_name: str
    model_version: str

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInfo:
    """The model that scored a batch: with hot swaps (detector/lifecycle/slot.py) the served one
    may change between a batch's scoring and its verdicts, so its identity travels with
    the scores."""

    threshold: float
    model_name: str
    model_version: str

    @classmethod
    def of(cls, scorer) -> ModelInfo:
        return cls(float(scorer.threshold), scorer.model_name, scorer.model_version)


def warm_up(scorer) -> None:
    """Run the model once before the first real batch (else the first requests wait for
    torch's first forward). A scorer with its own warm_up (a ModelSlot, whose models
    load_scorer already ran once; a RemoteScorer, whose model lives elsewhere) decides
    itself, so no empty sample is counted as a live flow."""
    own = getattr(scorer, "warm_up", None)
    if own is not None:
        own()
        return
    spec = scorer.spec
    scorer.score_flows(np.zeros((1, spec.k, spec.l), np.uint8), np.ones(1, np.int64))


def score_with_model(scorer, samples: np.ndarray, n_selected: np.ndarray
                     ) -> tuple[np.ndarray, ModelInfo | None]:
    """(scores, the model that made them); None for scorers that never change."""
    fn = getattr(scorer, "score_flows_with_model", None)
    if fn is not None:
        return fn(samples, n_selected)
    return scorer.score_flows(samples, n_selected), None


@dataclass
class FlowResult:
    key: str
    reply: Any
    status: str
    score: float = 0.0
    anomalous: bool = False
    packets: int = 0
    detail: str = ""
    latency: float = 0.0
    model: ModelInfo | None = None  # who scored it (None: the scorer's current attributes)


@dataclass
class _Pending:
    """A micro-batch between sample building and its scores (MicroBatcher's pipeline)."""

    items: list
    batch: RequestBatch
    samples: Any
    allowed: np.ndarray
    idx: np.ndarray
    results: list
    ticket: Any = None  # .done() / .result(timeout) of the scores in flight
    model: ModelInfo | None = None  # the model that scored it, once scored

    def done(self) -> bool:
        return self.ticket is None or self.ticket.done()


class MicroBatcher:
    """Bounded queue + one worker thread doing decode and sample building; scoring is
    pipelined: while the scorer (a RemoteScorer's process, or a thread for an in-process
    model) scores micro-batch i, the worker thread decodes and builds i+1 (up to
    `pipeline` batches in flight)."""

    def __init__(self, scorer: Scorer, decode: Callable[[list], RequestBatch],
                 on_results: Callable[[list[FlowResult]], None], max_batch: int = 256,
                 max_wait: float = 0.005, queue_size: int = 8192,
                 stats: ServingStats | None = None,
                 allow: Callable[[RequestBatch], np.ndarray] | None = None,
                 pipeline: int = 2, score_timeout: float | None = None,
                 observe: Callable | None = None, warm_input: list | None = None):
        """allow(batch) -> bool[m]: flows an analyst allow-listed, answered without scoring.
        pipeline: micro-batches whose scores may be awaited at once (1 = score in line).
        score_timeout: how long to wait for a batch's scores (None: the scorer's own limit,
        e.g. RemoteScorer.timeout; an in-process model is waited for, as when in line).
        A scorer with submit(samples, n_selected) -> handle (.done(), .result(timeout))
        is used as is; any other scorer runs on one extra thread.
        observe(uids, ids, samples, rows, scores, threshold, model_version): every scored
        micro-batch (the sensor's sample store); must not block.
        warm_input: raw items decoded and built (never scored nor counted) before the first
        real batch, so the decode path's compiled kernels are loaded at start."""
        if max_batch < 1 or queue_size < 1 or max_wait < 0:
            raise ValueError("max_batch and queue_size must be >= 1, max_wait >= 0")
        self.scorer = scorer
        self.spec = scorer.spec
        self.decode = decode
        self.on_results = on_results
        self.allow = allow
        self.observe = observe
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.pipeline = max(int(pipeline), 1)
        self.score_timeout = score_timeout
        self.stats = stats or ServingStats()
        self.queue_size = queue_size
        self._q: queue.Queue = queue.Queue()  # bounded by _queued (flows), see submit
        self._queued = 0
        self._qlock = threading.Lock()
        self._stop = threading.Event()
        self._accepting = True
        self._pool: ThreadPoolExecutor | None = None
        self._warm_up(warm_input)
        self._thread = threading.Thread(target=self._run, name="semiflow-batcher", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Flows waiting in the queue."""
        return self._queued

    def submit(self, raw, flows: int = 1) -> bool:
        """Enqueue one raw item carrying `flows` flows without blocking; False = shed (the
        queue would pass queue_size flows, or closing). An item larger than the whole
        queue is still taken when the queue is empty."""
        flows = max(int(flows), 1)
        with self.stats.lock:
            self.stats.received += flows
        if self._accepting:
            with self._qlock:
                fits = self._queued == 0 or self._queued + flows <= self.queue_size
                if fits:
                    self._queued += flows
            if fits:
                self._q.put_nowait((raw, time.perf_counter(), flows))
                return True
        with self.stats.lock:
            self.stats.shed += flows
        return False

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, finish what is queued and in flight; True if done in time."""
        self._accepting = False
        self._stop.set()
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        return not self._thread.is_alive()

    # ---- worker thread ------------------------------------------------------------------
    def _take(self) -> list:
        """Items for one micro-batch: up to max_batch flows (at least one item), waiting at
        most max_wait after the first."""
        try:
            first = self._q.get(timeout=0.05)
        except queue.Empty:
            return []
        items = [first]
        flows = first[2]
        deadline = time.perf_counter() + self.max_wait
        while flows < self.max_batch:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    it = self._q.get(timeout=left)
                except queue.Empty:
                    break
            items.append(it)
            flows += it[2]
        with self._qlock:
            self._queued -= flows
        return items

    def _warm_up(self, warm_input: list | None) -> None:
        """Load the compiled kernels and run the model once before the first real batch
        (else the first requests wait for numba's cache and torch's first forward)."""
        try:
            b = self.decode(warm_input) if warm_input else RequestBatch.empty()
            if b.errors:
                log.warning("warm-up: %d warm-up item(s) did not decode: %r", len(b.errors),
                            b.errors[0][1])
            build_flow_samples(b.blob, b.frame_off, b.frame_len, b.linktype, b.ts,
                               b.wire_len, b.is_orig, b.flow_start, self.spec, b.ids)
            warm_up(self.scorer)
        except Exception as e:  # the real batches will report it
            log.warning("warm-up failed: %r", e)

    def _emit(self, results: list[FlowResult]) -> None:
        if results:
            self.on_results(results)

    def _run(self) -> None:
        inflight: collections.deque[_Pending] = collections.deque()
        while True:
            if inflight and (len(inflight) >= self.pipeline or self._q.empty()
                             or inflight[0].done()):
                p = inflight.popleft()
                self._emit(self._guard(self._finish, p, *self._wait(p)))
                continue
            items = self._take()
            if not items:
                if self._stop.is_set() and self._q.empty() and not inflight:
                    return
                continue
            p = self._guard(self._prepare, items)
            if not isinstance(p, _Pending):
                self._emit(p)  # the batch failed: [] (counted as internal)
                continue
            if len(p.idx) and self.pipeline > 1:
                try:
                    p.ticket = self._submit(p)
                    inflight.append(p)
                    continue
                except Exception as e:  # scorer gone: answer now
                    res: tuple = (None, self._fail(e))
            else:
                res = self._score_now(p)
            self._emit(self._guard(self._finish, p, *res))

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # never let the worker die: answer every flow
            log.exception("batch failed")
            self.stats.error("internal", repr(e))
            return []

    def process(self, items: list) -> list[FlowResult]:
        """Decode, build samples and score one batch (in line); one result per answerable
        request."""
        p = self._prepare(items)
        return self._finish(p, *self._score_now(p))

    def _rows(self, p: _Pending) -> tuple[np.ndarray, np.ndarray]:
        s = p.samples
        data = s.data if len(p.idx) == len(s.data) else s.data[p.idx]
        return data, s.n_selected[p.idx]

    def _submit(self, p: _Pending):
        data, nsel = self._rows(p)
        sub = getattr(self.scorer, "submit", None)
        if sub is not None:
            return sub(data, nsel)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="semiflow-score")
        return self._pool.submit(score_with_model, self.scorer, data, nsel)

    def _fail(self, e: Exception) -> str:
        log.error("scoring failed: %r", e)
        self.stats.error("scorer", repr(e))
        return f"scorer failed: {e}"

    def _wait(self, p: _Pending) -> tuple[np.ndarray | None, str]:
        try:
            got = p.ticket.result(self.score_timeout)
            if isinstance(got, tuple):  # a thread's score_with_model
                got, p.model = got
            else:  # a RemoteScorer's ticket knows which model answered
                p.model = getattr(p.ticket, "model", None)
            return np.asarray(got, np.float64), ""
        except Exception as e:  # scorer gone or broken: answer, never go silent
            return None, self._fail(e)

    def _score_now(self, p: _Pending) -> tuple[np.ndarray | None, str]:
        if not len(p.idx):
            return None, ""
        try:
            scores, p.model = score_with_model(self.scorer, *self._rows(p))
            return np.asarray(scores, np.float64), ""
        except Exception as e:  # scorer gone or broken: answer, never go silent
            return None, self._fail(e)

    def _prepare(self, items: list) -> _Pending:
        """Decode and build the samples of one micro-batch; errors answered at once."""
        spec = self.spec
        results: list[FlowResult] = []
        batch = self.decode([it[0] for it in items])
        for i, e in batch.errors:
            if isinstance(e, RequestError):
                self.stats.error(e.kind, str(e))
                if e.key is not None:
                    results.append(FlowResult(e.key, e.reply, STATUS_ERROR, detail=str(e),
                                              latency=time.perf_counter() - items[i][1]))
            else:  # a decoder bug must not take the service down
                self.stats.error("decode", repr(e))
        s = build_flow_samples(batch.blob, batch.frame_off, batch.frame_len, batch.linktype,
                               batch.ts, batch.wire_len, batch.is_orig, batch.flow_start, spec,
                               batch.ids)
        ok = (s.status == 0) & ((batch.ks < 0) | (batch.ks == spec.k))
        allowed = np.zeros(len(batch.keys), bool)
        if self.allow is not None and len(batch.keys):
            try:
                allowed = np.asarray(self.allow(batch), bool)
            except Exception as e:  # a bad allow-list must not stop scoring
                self.stats.error("allowlist", repr(e))
            ok &= ~allowed
        return _Pending(items, batch, s, allowed, np.flatnonzero(ok), results)

    def _finish(self, p: _Pending, scores: np.ndarray | None, fail: str) -> list[FlowResult]:
        """One result per flow of a prepared micro-batch, given its scores."""
        spec, batch, s, items, results = self.spec, p.batch, p.samples, p.items, p.results
        thr = float(p.model.threshold if p.model is not None else self.scorer.threshold)
        if scores is None and len(p.idx) and not fail:
            fail = "scorer failed"
        if scores is not None and len(scores) != len(p.idx):
            scores, fail = None, self._fail(ValueError("scorer returned the wrong number "
                                                       "of scores"))
        now = time.perf_counter()
        pos = np.full(len(batch.keys), -1, np.int64)
        pos[p.idx] = np.arange(len(p.idx))
        # Python lists, not numpy scalars, in the per-flow loop (it runs ~50,000 times/s)
        pos_l, ks_l, nsel_l = pos.tolist(), batch.ks.tolist(), s.n_selected.tolist()
        allowed_l = p.allowed.tolist()
        sc_l = scores.tolist() if scores is not None else None
        t_l = [now - it[1] for it in items]
        has_thr = thr == thr
        ok_status = STATUS_CODES[0]
        m = 0
        for f, (key, reply, k, i) in enumerate(zip(batch.keys, batch.replies, ks_l,
                                                     batch.items)):
            lat = t_l[i]
            if k >= 0 and k != spec.k:
                msg = f"request collected k={k} packets but the model's K is {spec.k}"
                self.stats.error("k_mismatch", msg)
                results.append(FlowResult(key, reply, STATUS_ERROR, detail=msg, latency=lat))
                continue
            n = nsel_l[f]
            if allowed_l[f]:
                results.append(FlowResult(key, reply, STATUS_ALLOWLISTED, packets=n,
                                          latency=lat))
                continue
            j = pos_l[f]
            if j < 0:
                detail = "; ".join(f"{a}: {b}" for a, b in s.skipped_dict(f).items())
                results.append(FlowResult(key, reply, STATUS_CODES[s.status[f]], packets=n,
                                          detail=detail, latency=lat))
                continue
            if sc_l is None:
                results.append(FlowResult(key, reply, STATUS_ERROR, packets=n, detail=fail,
                                          latency=lat))
                continue
            sc = sc_l[j]
            if sc != sc:  # NaN
                results.append(FlowResult(key, reply, STATUS_ERROR, packets=n,
                                          detail="model returned NaN", latency=lat))
                continue
            results.append(FlowResult(key, reply, ok_status, sc, has_thr and sc > thr, n,
                                      latency=lat))
            m += 1
        if p.model is not None:
            for r in results:
                r.model = p.model
        if self.observe is not None and sc_l is not None and len(p.idx):
            version = p.model.model_version if p.model is not None else \
                self.scorer.model_version
            try:  # the sensor's sample store: a failure there must not cost a verdict
                self.observe(batch.keys, batch.ids, s, p.idx, scores, thr, version)
            except Exception as e:
                self.stats.error("sample_store", repr(e))
        statuses: dict[str, int] = {}
        for r in results:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        with self.stats.lock:
            self.stats.batches.observe(sum(it[2] for it in items))
            self.stats.scored += m
            for st, c in statuses.items():
                self.stats.statuses[st] = self.stats.statuses.get(st, 0) + c
            self.stats.latency.observe_many([r.latency for r in results])
        return results
