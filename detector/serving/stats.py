"""The serving loop's counters and histograms, as the metrics endpoint exposes them."""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("semiflow.serve")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.buckets, v)
        self.counts[i] += 1
        self.sum += v
        self.n += 1

    def observe_many(self, vs) -> None:
        """observe() for every value, in one pass."""
        v = np.asarray(vs, np.float64)
        if not len(v):
            return
        for i, c in enumerate(np.bincount(np.searchsorted(self.buckets, v, side="left"),
                                          minlength=len(self.counts))):
            self.counts[i] += int(c)
        self.sum += float(v.sum())
        self.n += len(v)


@dataclass
class ServingStats:
    """Counters the metrics endpoint exposes; updated under `lock`."""

    received: int = 0
    scored: int = 0
    shed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    batches: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _logged: set = field(default_factory=set)

    def error(self, kind: str, message: str) -> None:
        """Count an error; log the first of each kind only (a flood must not flood logs)."""
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            log.warning("malformed request (%s): %s [further '%s' errors are counted, "
                        "not logged]", kind, message, kind)
