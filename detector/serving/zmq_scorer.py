"""One scorer process, many decode processes: scoring over pyzmq (ROUTER/DEALER, ipc://).

Decoding (JSON, base64, sample building) is Python work bound to one core per process;
the model wants one owner per GPU and big batches. So `semiflow serve --workers N` runs N
decode processes, each with a `RemoteScorer` (a DEALER socket that looks like a Scorer to
its MicroBatcher) and one `ScorerServer` (a ROUTER socket) that owns the model, merges
whatever batches are waiting into one forward pass, and routes each slice of scores back
to the process that asked. Only the selected packet rows travel (uint8[n_rows, L]).

Messages (multipart): hello -> [b"hello"] / [b"hello", meta JSON];
score -> [b"score", seq u64, header JSON {m, k, l}, n_selected int64[m], rows uint8[., L]]
/ [b"scores", seq, float64[m]] or [b"error", seq, message].
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import zmq

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.serving.core import ModelInfo, score_with_model

log = logging.getLogger("semiflow.serve")


class ScorerServer:
    """The model's owner: answers RemoteScorers' batches, merging those that wait together.

    With overlap (default) the forward pass of one merged batch runs on a scoring thread
    while this thread takes in (zero-copy) the batches that arrive meanwhile: those form
    the next merged batch, so under load the merged batches grow with the load and the
    GPU is never idle waiting for the sockets (torch releases the GIL in its kernels)."""

    def __init__(self, scorer, addr: str, max_flows: int = 8192,
                 ctx: zmq.Context | None = None, overlap: bool = True):
        self.scorer = scorer
        self.max_flows = max_flows
        ctx = ctx or zmq.Context.instance()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addr)
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        # The scoring thread says "done" on an inproc pair, so this thread sleeps in one
        # poll until a batch arrives or the scores are ready (no periodic wake-ups taking
        # the GIL from the scoring thread).
        wake = f"inproc://semiflow-scored-{id(self):x}"
        self._done_rx = ctx.socket(zmq.PULL)
        self._done_rx.setsockopt(zmq.LINGER, 0)
        self._done_rx.bind(wake)
        self._done_tx = ctx.socket(zmq.PUSH)
        self._done_tx.setsockopt(zmq.LINGER, 0)
        self._done_tx.connect(wake)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._done_rx, zmq.POLLIN)
        self.batches = 0
        self.flows = 0
        self.busy_s = 0.0  # seconds spent building samples and scoring
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="semiflow-score") \
            if overlap else None
        self._todo: list = []
        self._todo_flows = 0
        self._job = None  # (future, todo) of the merged batch being scored
        spec = scorer.spec
        self._meta = json.dumps({"spec": spec.to_dict(), "threshold": float(scorer.threshold),
                                 "model_name": scorer.model_name,
                                 "model_version": scorer.model_version}).encode()

    def close(self) -> None:
        if self._job is not None:
            try:
                self._job[0].result(30)
            except Exception:  # closing anyway
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._done_tx.close(0)
        self._done_rx.close(0)
        self.sock.close(0)

    def serve_once(self, timeout: float = 0.1) -> int:
        """Wait up to timeout for work, take in everything waiting, score it (overlapped
        with taking in the next) and answer; returns flows answered."""
        if self._job is not None:
            if not self._job[0].done():  # wait for new batches or the scores
                self._poller.poll(int(timeout * 1000))
            while True:  # the "done" notes
                try:
                    self._done_rx.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        elif not self._todo and not self.sock.poll(int(timeout * 1000)):
            return 0
        self._receive()
        answered = 0
        if self._job is not None and self._job[0].done():
            answered += self._answer(*self._job)
            self._job = None
        if self._job is None and self._todo:
            todo, self._todo, self._todo_flows = self._todo, [], 0
            if self._pool is None:
                fut: Future = Future()
                try:
                    fut.set_result(self._score(todo))
                except Exception as e:
                    fut.set_exception(e)
                answered += self._answer(fut, todo)
            else:
                fut = self._pool.submit(self._score, todo)
                self._job = (fut, todo)
                # runs on the scoring thread once fut is done (or here, if it already
                # is); one job at a time, so _done_tx is never used by two threads at once
                fut.add_done_callback(self._note_done)
        return answered

    def _note_done(self, _fut) -> None:
        try:
            self._done_tx.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:  # closing, or notes piling up: serve_once polls anyway
            pass

    def _receive(self) -> None:
        while self._todo_flows < self.max_flows:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            ident, kind = parts[0].bytes, parts[1].bytes if len(parts) > 1 else b""
            if kind == b"hello":
                self.sock.send_multipart([ident, b"hello", self._meta])
            elif kind == b"score" and len(parts) == 6:
                seq = parts[2].bytes
                try:
                    nsel, rows = self._unpack(parts[3:])
                except (ValueError, KeyError, TypeError) as e:
                    self.sock.send_multipart([ident, b"error", seq, str(e).encode()])
                    continue
                self._todo.append((ident, seq, nsel, rows))
                self._todo_flows += len(nsel)
            else:
                log.warning("scorer: ignoring a malformed message (%d parts)", len(parts))

    def _unpack(self, parts) -> tuple[np.ndarray, np.ndarray]:
        head = json.loads(parts[0].bytes)
        spec = self.scorer.spec
        m = int(head["m"])
        if int(head["k"]) != spec.k or int(head["l"]) != spec.l:
            raise ValueError(f"batch K={head['k']} L={head['l']}, model K={spec.k} L={spec.l}")
        nsel = np.frombuffer(parts[1].buffer, np.int64)
        rows = np.frombuffer(parts[2].buffer, np.uint8)  # zero-copy: the message's buffer
        if len(nsel) != m or (nsel < 0).any() or (nsel > spec.k).any() \
                or rows.size != int(nsel.sum()) * spec.l:
            raise ValueError("batch arrays do not match its header")
        return nsel, rows.reshape(-1, spec.l)

    def _score(self, todo: list) -> tuple[np.ndarray, ModelInfo]:
        """On the scoring thread: one dense merged batch -> its scores and the model that
        made them (a ModelSlot may swap models between batches)."""
        t = time.perf_counter()
        spec = self.scorer.spec
        nsel = np.concatenate([t[2] for t in todo])
        samples = np.zeros((len(nsel), spec.k, spec.l), np.uint8)
        samples[np.arange(spec.k)[None, :] < nsel[:, None]] = np.concatenate(
            [t[3] for t in todo])
        try:
            scores, who = score_with_model(self.scorer, samples, nsel)
            return np.asarray(scores, np.float64), who or ModelInfo.of(self.scorer)
        finally:
            self.busy_s += time.perf_counter() - t

    def _answer(self, fut: Future, todo: list) -> int:
        try:
            scores, who = fut.result()
        except Exception as e:  # answer every asker; the decode side reports status=error
            log.error("scoring failed: %r", e)
            for ident, seq, *_ in todo:
                self.sock.send_multipart([ident, b"error", seq, repr(e).encode()])
            return 0
        self.batches += 1
        self.flows += len(scores)
        meta = json.dumps(asdict(who)).encode()  # each worker's verdicts name this model
        at = 0
        for ident, seq, n, _ in todo:
            self.sock.send_multipart([ident, b"scores", seq, scores[at:at + len(n)], meta],
                                     copy=False)
            at += len(n)
        return at


class _Ticket:
    """The scores of one batch sent by a RemoteScorer: done() without blocking, result()."""

    def __init__(self, owner: RemoteScorer, seq: bytes, m: int):
        self.owner, self.seq, self.m = owner, seq, m
        self.model: ModelInfo | None = None  # the model that scored it, once answered

    def done(self) -> bool:
        return self.owner._ready(self.seq, 0)

    def result(self, timeout: float | None = None) -> np.ndarray:
        out, self.model = self.owner._result(self.seq, self.m,
                                             self.owner.timeout if timeout is None else timeout)
        return out


class RemoteScorer:
    """A Scorer whose score_flows runs in the ScorerServer at addr (one thread uses it).
    submit() sends a batch and returns at once (MicroBatcher pipelines with it): several
    batches may be in flight; their answers are matched by sequence number."""

    def __init__(self, addr: str, timeout: float = 30.0, ctx: zmq.Context | None = None):
        self.timeout = timeout
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(addr)
        self._seq = 0
        self._waiting: set[bytes] = set()
        self._answers: dict[bytes, list] = {}
        self.sock.send_multipart([b"hello"])
        if not self.sock.poll(int(timeout * 1000)):
            self.sock.close(0)
            raise ConnectionError(f"no scorer answered at {addr} within {timeout:g}s")
        meta = json.loads(self.sock.recv_multipart()[1])
        self.spec = FlowSampleSpec.from_dict(meta["spec"])
        self.threshold = float(meta["threshold"])
        self.model_name = meta["model_name"]
        self.model_version = meta["model_version"]

    def close(self) -> None:
        self.sock.close(0)

    def submit(self, samples: np.ndarray, n_selected: np.ndarray) -> _Ticket:
        """Send the selected packet rows (zero-copy: zmq sends the numpy buffers as they
        are) and return a ticket for the scores."""
        samples = np.asarray(samples, np.uint8)
        nsel = np.ascontiguousarray(n_selected, np.int64)
        k, l = self.spec.k, self.spec.l
        if samples.ndim != 3 or samples.shape[1:] != (k, l) or len(nsel) != len(samples):
            raise ValueError(f"score_flows: expected uint8[m, {k}, {l}] and m counts")
        rows = np.ascontiguousarray(samples[np.arange(k)[None, :] < nsel[:, None]])
        self._seq += 1
        seq = self._seq.to_bytes(8, "little")
        head = json.dumps({"m": len(nsel), "k": k, "l": l}).encode()
        self.sock.send_multipart([b"score", seq, head, nsel, rows], copy=False)
        self._waiting.add(seq)
        return _Ticket(self, seq, len(nsel))

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray:
        return self.submit(samples, n_selected).result(self.timeout)

    def score_flows_with_model(self, samples: np.ndarray, n_selected: np.ndarray
                               ) -> tuple[np.ndarray, ModelInfo | None]:
        t = self.submit(samples, n_selected)
        return t.result(self.timeout), t.model

    def warm_up(self) -> None:
        """Nothing to warm here: the scorer process warms its model before serving (an
        empty sample sent from here would count as a live flow in its shadow and drift)."""

    def _ready(self, seq: bytes, timeout: float) -> bool:
        """Take in the answers that have arrived (waiting up to timeout for more) until
        seq's is among them."""
        deadline = time.monotonic() + timeout
        while seq not in self._answers:
            left = deadline - time.monotonic()
            if not self.sock.poll(max(int(left * 1000), 0)):
                return False
            parts = self.sock.recv_multipart()
            if len(parts) >= 3 and parts[1] in self._waiting:
                self._waiting.discard(parts[1])
                self._answers[parts[1]] = parts
            # else: a late answer to a batch we already gave up on
        return True

    def _result(self, seq: bytes, m: int, timeout: float
                ) -> tuple[np.ndarray, ModelInfo | None]:
        if not self._ready(seq, timeout):
            self._waiting.discard(seq)
            raise TimeoutError(f"scorer did not answer within {timeout:g}s")
        parts = self._answers.pop(seq)
        if parts[0] == b"error":
            raise RuntimeError(parts[2].decode(errors="replace"))
        out = np.frombuffer(parts[2], np.float64)
        if len(out) != m:
            raise RuntimeError("scorer returned the wrong number of scores")
        who = None
        if len(parts) > 3:  # the model that scored them (older servers send none)
            try:
                who = ModelInfo(**json.loads(parts[3]))
            except (ValueError, TypeError):
                who = None
        return out, who
