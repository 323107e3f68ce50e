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

import numpy as np
import zmq

from .spec import FlowSampleSpec

log = logging.getLogger("semiflow.serve")


class ScorerServer:
    """The model's owner: answers RemoteScorers' batches, merging those that wait together."""

    def __init__(self, scorer, addr: str, max_flows: int = 8192,
                 ctx: zmq.Context | None = None):
        self.scorer = scorer
        self.max_flows = max_flows
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addr)
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.batches = 0
        self.flows = 0
        spec = scorer.spec
        self._meta = json.dumps({"spec": spec.to_dict(), "threshold": float(scorer.threshold),
                                 "model_name": scorer.model_name,
                                 "model_version": scorer.model_version}).encode()

    def close(self) -> None:
        self.sock.close(0)

    def serve_once(self, timeout: float = 0.1) -> int:
        """Wait up to timeout for work, then answer everything waiting; returns flows scored."""
        if not self.sock.poll(int(timeout * 1000)):
            return 0
        todo = []
        total = 0
        while total < self.max_flows:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            ident, kind = parts[0], parts[1] if len(parts) > 1 else b""
            if kind == b"hello":
                self.sock.send_multipart([ident, b"hello", self._meta])
            elif kind == b"score" and len(parts) == 6:
                try:
                    todo.append((ident, parts[2], *self._unpack(parts[3:])))
                    total += len(todo[-1][2])
                except (ValueError, KeyError, TypeError) as e:
                    self.sock.send_multipart([ident, b"error", parts[2], str(e).encode()])
            else:
                log.warning("scorer: ignoring a malformed message (%d parts)", len(parts))
        if todo:
            self._score(todo)
        return total

    def _unpack(self, parts) -> tuple[np.ndarray, np.ndarray]:
        head = json.loads(parts[0])
        spec = self.scorer.spec
        m = int(head["m"])
        if int(head["k"]) != spec.k or int(head["l"]) != spec.l:
            raise ValueError(f"batch K={head['k']} L={head['l']}, model K={spec.k} L={spec.l}")
        nsel = np.frombuffer(parts[1], np.int64)
        rows = np.frombuffer(parts[2], np.uint8)
        if len(nsel) != m or (nsel < 0).any() or (nsel > spec.k).any() \
                or rows.size != int(nsel.sum()) * spec.l:
            raise ValueError("batch arrays do not match its header")
        return nsel, rows.reshape(-1, spec.l)

    def _score(self, todo: list) -> None:
        spec = self.scorer.spec
        nsel = np.concatenate([t[2] for t in todo])
        samples = np.zeros((len(nsel), spec.k, spec.l), np.uint8)
        samples[np.arange(spec.k)[None, :] < nsel[:, None]] = np.concatenate(
            [t[3] for t in todo])
        try:
            scores = np.asarray(self.scorer.score_flows(samples, nsel), np.float64)
        except Exception as e:  # answer every asker; the decode side reports status=error
            log.exception("scoring failed")
            for ident, seq, *_ in todo:
                self.sock.send_multipart([ident, b"error", seq, repr(e).encode()])
            return
        # the model that scored this batch (a ModelSlot may have swapped in another one):
        # each decode worker's verdicts name it and use its threshold
        who = json.dumps({"threshold": float(self.scorer.threshold),
                          "model_name": self.scorer.model_name,
                          "model_version": self.scorer.model_version}).encode()
        at = 0
        for ident, seq, n, _ in todo:
            self.sock.send_multipart([ident, b"scores", seq, scores[at:at + len(n)].tobytes(),
                                      who])
            at += len(n)
        self.batches += 1
        self.flows += len(nsel)


class RemoteScorer:
    """A Scorer whose score_flows runs in the ScorerServer at addr (one thread uses it)."""

    def __init__(self, addr: str, timeout: float = 30.0, ctx: zmq.Context | None = None):
        self.timeout = timeout
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(addr)
        self._seq = 0
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

    def warm_up(self) -> None:
        """Nothing to warm here: the scorer process warms its model before serving (an
        empty sample sent from here would count as a live flow in its shadow and drift)."""

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray:
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
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"scorer did not answer within {self.timeout:g}s")
            parts = self.sock.recv_multipart()
            if len(parts) < 3 or parts[1] != seq:
                continue  # a late answer to a batch we already gave up on
            if parts[0] == b"error":
                raise RuntimeError(parts[2].decode(errors="replace"))
            out = np.frombuffer(parts[2], np.float64)
            if len(out) != len(nsel):
                raise RuntimeError("scorer returned the wrong number of scores")
            if len(parts) > 3:  # threshold and version of the model that scored them
                who = json.loads(parts[3])
                self.threshold = float(who["threshold"])
                self.model_name, self.model_version = who["model_name"], who["model_version"]
            return out
