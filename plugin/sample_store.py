"""What the sensor saw, kept for the next model: a rolling store of scored flow samples.

`semiflow serve --sample-store DIR` hands every scored micro-batch here (a copy, from the
scoring thread); a writer thread appends it to the open shard, an extraction directory
in the format `semiflow extract` writes (plugin/flowstore.py), so `semiflow train DIR/shard-*`
reads it like any capture's extraction. Flows the served model flagged are labelled
"anomalous" and every other scored flow "normal": training takes the normal ones only, so
what the detector flagged never becomes "normal" by retraining. Analysts' verdicts come on
top (`semiflow train --exclude-uids`).

    DIR/shard-<UTC start>-<pid>-<n>/   closed shards (extract.json written last, renamed)
    DIR/.open-<...>/                   a shard being written (never read)

Several decode workers (`serve --workers N`) may share DIR: shard names carry the pid, and
each bounds the whole directory.

Bounded on disk: when the closed shards pass `max_bytes`, the oldest are deleted. A batch
that finds the writer's queue full is dropped and counted, never blocking the scorer.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.sample.spec import STATUS_CODES, FlowSampleSpec

from .flowstore import FlowStoreWriter

log = logging.getLogger("semiflow.samples")


@dataclass
class _Rows:
    """The part of a FlowBatch that FlowStoreWriter.write reads."""

    packed: np.ndarray
    offsets: np.ndarray
    extent: np.ndarray
    direction: np.ndarray
    pkt_ts: np.ndarray
    pkt_len: np.ndarray


def pack_rows(data: np.ndarray, n_selected: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Dense uint8[m, K, L] -> (packed bytes, offsets int64[m, K] (-1: empty slot),
    extents int32[m, K]): each selected row cut after its last non-zero byte, as on disk."""
    m, k, l = data.shape
    used = np.arange(k)[None, :] < np.asarray(n_selected)[:, None]
    nz = data != 0
    last = l - np.argmax(nz[..., ::-1], axis=-1)
    extent = np.where(used & nz.any(-1), last, 0).astype(np.int32)
    flat_ext = extent.ravel()
    starts = np.concatenate([[0], np.cumsum(flat_ext)[:-1]]).astype(np.int64)
    offsets = np.where(used.ravel(), starts, -1).reshape(m, k)
    keep = np.arange(l)[None, :] < flat_ext[:, None]
    packed = data.reshape(m * k, l)[keep]
    return packed, offsets, extent


def _port(p) -> int:
    """Zeek's "80/tcp" (or a number) -> 80; -1 when unknown."""
    try:
        return int(str(p).partition("/")[0])
    except ValueError:
        return -1


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


class SensorSampleStore:
    """Rolling, size-bounded store of the flows `serve` scored (see the module doc)."""

    def __init__(self, root: str | os.PathLike, spec: FlowSampleSpec,
                 max_bytes: int = 1 << 30, shard_flows: int = 50_000,
                 shard_seconds: float = 3600.0, queue_batches: int = 256):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".open-*"):  # left half written by a killed serve
            if not _alive(stale.name.split("-")[2]):
                shutil.rmtree(stale, ignore_errors=True)
        self.spec, self.max_bytes = spec, max_bytes
        self.shard_flows, self.shard_seconds = shard_flows, shard_seconds
        self.written = self.dropped = self.deleted_shards = 0
        self._q: queue.Queue = queue.Queue(queue_batches)
        self._writer: FlowStoreWriter | None = None
        self._open: Path | None = None
        self._opened = 0.0
        self._seq = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="semiflow-samples")
        self._thread.start()

    # ---- from the scoring thread --------------------------------------------------------
    def observe(self, uids: list[str], ids: list, samples, rows: np.ndarray,
                scores: np.ndarray, threshold: float, model_version: str) -> None:
        """One scored micro-batch: samples is the FlowSampleBatch, rows the flows of it that
        were scored (scores in that order). Copies what it keeps; never blocks."""
        rows = np.asarray(rows)
        if not len(rows):
            return
        item = (time.time(), [uids[i] for i in rows],
                [ids[i] if i < len(ids) else None for i in rows],
                samples.data[rows].copy(), samples.direction[rows].copy(),
                samples.ts[rows].copy(), samples.wire_len[rows].copy(),
                samples.n_selected[rows].copy(), samples.status[rows].copy(),
                np.asarray(scores, np.float64).copy(), float(threshold), str(model_version))
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += len(rows)

    # ---- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            try:
                self._write(*item)
            except Exception as e:  # a full disk must not stop scoring
                log.error("sample store %s: %r (batch of %d flows dropped)", self.root, e,
                          len(item[1]))
                self.dropped += len(item[1])
        self._close_shard()

    def _write(self, now, uids, ids, data, direction, ts, wire_len, n_sel, status, scores,
               threshold, version) -> None:
        if self._writer is not None and (self._writer.rows >= self.shard_flows
                                         or now - self._opened >= self.shard_seconds):
            self._close_shard()
        if self._writer is None:
            self._seq += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            self._open = self.root / f".open-{stamp}-{os.getpid()}-{self._seq}"
            self._writer = FlowStoreWriter(self._open, self.spec)
            self._opened = now
        packed, offsets, extent = pack_rows(data, n_sel)
        flagged = np.isfinite(scores) & (scores > threshold)
        none = (None, "", None, "")
        conn = [i if i is not None else none for i in ids]
        table = pd.DataFrame({
            "uid": uids, "ts": ts[:, 0].astype(np.float64),
            "orig_h": [c[0] for c in conn], "orig_p": [_port(c[1]) for c in conn],
            "resp_h": [c[2] for c in conn], "resp_p": [_port(c[3]) for c in conn],
            "proto": [str(c[3]).partition("/")[2] for c in conn],
            "n_selected": n_sel.astype(np.int16),
            "status": [STATUS_CODES[int(s)] for s in status],
            "source_file": f"sensor:{self._open.name[len('.open-'):]}",
            "label": np.where(flagged, "anomalous", "normal"),
            "family": np.where(flagged, "flagged", ""), "source": "sensor",
            "score": scores, "threshold": threshold, "model_version": version})
        self._writer.write(_Rows(packed, offsets, extent, direction.astype(np.int8),
                                 ts.astype(np.float64), wire_len.astype(np.int32)), table)
        self.written += len(uids)

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close({"source": "semiflow serve --sample-store",
                            "opened": self._opened, "closed": time.time()})
        final = self.root / ("shard-" + self._open.name[len(".open-"):])
        os.replace(self._open, final)
        self._writer = self._open = None
        self._bound()

    def _bound(self) -> None:
        shards = sorted(self.root.glob("shard-*"), key=lambda p: p.stat().st_mtime)
        sizes = [dir_bytes(p) for p in shards]
        total = sum(sizes)
        for p, size in zip(shards[:-1], sizes[:-1], strict=True):  # keep the newest
            if total <= self.max_bytes:
                break
            shutil.rmtree(p, ignore_errors=True)
            total -= size
            self.deleted_shards += 1

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and close the open shard."""
        self._q.put(None)
        self._thread.join(timeout)
