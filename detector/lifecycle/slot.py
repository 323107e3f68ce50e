"""A running model that can be replaced, shadowed and watched for drift without a restart.

ModelSlot stands where the serving loop expects a scorer (spec, threshold, model_name,
model_version, score_flows). A replacement is loaded and warmed on a background thread and
swapped in at the start of the next score_flows call: between two micro-batches, so no flow
is dropped or scored twice, and the threshold and version the loop reads after a call are
those of the model that scored it. A candidate that fails to load, or whose flow-sample spec
differs from the served one, is refused with a log line and the old model keeps serving.

Shadow scoring runs a candidate on the same samples after the served model; its verdicts go
nowhere, only into agreement counters. Drift judges each finished window of live flows
against the served model's reference (detector/lifecycle/drift.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from semiflow.detector.lifecycle.drift import DriftMonitor, DriftReference, DriftReport
from semiflow.detector.serving.core import ModelInfo

log = logging.getLogger("semiflow.lifecycle")


@dataclass
class ShadowStats:
    """Running agreement of the served model (a) and a shadow candidate (b)."""

    version: str
    flows: int = 0
    flagged_a: int = 0
    flagged_b: int = 0
    flagged_both: int = 0
    _sums: list = field(default_factory=lambda: [0.0] * 5)  # x, y, xx, yy, xy

    def update(self, a: np.ndarray, b: np.ndarray, thr_a: float, thr_b: float) -> None:
        ok = np.isfinite(a) & np.isfinite(b)
        x, y = a[ok].astype(np.float64), b[ok].astype(np.float64)
        fa, fb = x > thr_a, y > thr_b
        self.flows += int(ok.sum())
        self.flagged_a += int(fa.sum())
        self.flagged_b += int(fb.sum())
        self.flagged_both += int((fa & fb).sum())
        for i, v in enumerate((x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())):
            self._sums[i] += float(v)

    @property
    def pearson(self) -> float:
        n = self.flows
        if n < 2:
            return math.nan
        sx, sy, sxx, syy, sxy = self._sums
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        return (sxy - sx * sy / n) / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan

    def to_dict(self) -> dict:
        either = self.flagged_a + self.flagged_b - self.flagged_both
        return {"shadow_version": self.version, "flows": self.flows,
                "flagged_served": self.flagged_a, "flagged_shadow": self.flagged_b,
                "flagged_both": self.flagged_both,
                "jaccard": self.flagged_both / either if either else 1.0,
                "pearson": self.pearson}


class ModelSlot:
    """The served model, swappable between micro-batches; optional shadow and drift.

    `load(source)` returns a ready scorer: load_scorer has scored one sample of the model's
    own spec (warm, and refused there if it cannot score it)."""

    def __init__(self, scorer, load: Callable[[str], object],
                 reference: Callable[[str], DriftReference | None] | None = None,
                 drift_window_s: float = 3600.0, drift_threshold: float = 0.25,
                 drift_min_flows: int = 500,
                 on_drift: Callable[[DriftReport, str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self._current = scorer
        self._load, self._reference = load, reference
        self._pending = None
        self._lock = threading.Lock()
        self.shadow = None
        self.shadow_stats: ShadowStats | None = None
        self.swaps: list[dict] = []          # version, requested, swapped (clock seconds)
        self.refused: list[tuple[str, str]] = []
        self._requested: dict[str, float] = {}
        self.drift_window_s, self.drift_threshold = drift_window_s, drift_threshold
        self.drift_min_flows, self.on_drift, self.clock = drift_min_flows, on_drift, clock
        self.drift_reports: list[DriftReport] = []
        self.drift: DriftMonitor | None = None

    # ---- what the serving loop reads --------------------------------------------------------
    @property
    def spec(self):
        return self._current.spec

    @property
    def threshold(self) -> float:
        return self._current.threshold

    @property
    def model_name(self) -> str:
        return self._current.model_name

    @property
    def model_version(self) -> str:
        return self._current.model_version

    def warm_up(self) -> None:
        """Nothing to do: every model here comes from `load` (load_scorer), which has run
        one sample of its spec through it already; an empty sample sent through the slot
        would count as a live flow in the shadow and drift counters."""

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray:
        return self.score_flows_with_model(samples, n_selected)[0]

    def score_flows_with_model(self, samples: np.ndarray, n_selected: np.ndarray
                               ) -> tuple[np.ndarray, ModelInfo]:
        """The scores and the model that made them (a swap may follow before the caller
        reads the slot's attributes: the serving loop takes these)."""
        self._swap_if_pending()
        cur = self._current
        scores = cur.score_flows(samples, n_selected)
        who = ModelInfo.of(cur)
        shadow = self.shadow
        if shadow is not None:
            try:
                self.shadow_stats.update(np.asarray(scores, np.float64),
                                         np.asarray(shadow.score_flows(samples, n_selected),
                                                    np.float64),
                                         float(cur.threshold), float(shadow.threshold))
            except Exception as e:  # a broken candidate must not stop the served model
                log.error("shadow %s failed, dropped: %r", self.shadow_stats.version, e)
                self.shadow = None
        if self.drift is not None:
            for rep in self.drift.update(self.clock(), samples, n_selected, scores):
                self._report(rep)
        return scores, who

    # ---- swapping -----------------------------------------------------------------------
    def attach_source(self, source: str) -> None:
        """Where the served model came from (its artifact dir): drift reads its reference."""
        self._reset_drift(source)

    def request(self, source: str, version: str | None = None) -> threading.Thread:
        """Load `source` in the background and swap it in at the next micro-batch."""
        self._requested[source] = self.clock()
        t = threading.Thread(target=self._prepare, args=(source, version), daemon=True,
                             name="semiflow-model-load")
        t.start()
        return t

    def _prepare(self, source: str, version: str | None) -> None:
        try:
            new = self._load(source)
            if new.spec != self._current.spec:
                raise ValueError(f"its flow-sample spec {new.spec.to_dict()} differs from the "
                                 f"sensor's {self._current.spec.to_dict()}")
        except Exception as e:
            why = str(e) or repr(e)
            log.error("model %s refused, %s keeps serving: %s", version or source,
                      self._current.model_version, why)
            self.refused.append((version or source, why))
            return
        with self._lock:
            self._pending = (new, source)
        log.info("model %s loaded and warmed: swapping in at the next batch",
                 new.model_version)

    def _swap_if_pending(self) -> None:
        if self._pending is None:
            return
        with self._lock:
            (new, source), self._pending = self._pending, None
        old = self._current.model_version
        self._current = new
        now = self.clock()
        self.swaps.append({"version": new.model_version, "previous": old,
                           "requested": self._requested.pop(source, now), "swapped": now})
        log.info("now serving %s (was %s)", new.model_version, old)
        if self.drift is not None:  # the old model's window is judged against its reference
            rep = self.drift.flush(end=now)
            if rep is not None:
                self._report(rep)
        self._reset_drift(source)

    # ---- shadow and drift ---------------------------------------------------------------
    def set_shadow(self, scorer) -> None:
        if scorer.spec != self._current.spec:
            raise ValueError(f"shadow {scorer.model_version}: its flow-sample spec differs "
                             "from the served model's")
        self.shadow, self.shadow_stats = scorer, ShadowStats(scorer.model_version)

    def _reset_drift(self, source: str) -> None:
        ref = self._reference(source) if self._reference and source else None
        if ref is None:
            if source:
                log.warning("model %s has no drift reference: drift is not watched",
                            self._current.model_version)
            self.drift = None
            return
        self.drift = DriftMonitor(ref, self.drift_window_s, self.drift_threshold,
                                  self.drift_min_flows)

    def _report(self, rep: DriftReport) -> None:
        self.drift_reports.append(rep)
        if rep.drifted:
            log.warning("drift against %s's training reference: %s", self.model_version,
                        ", ".join(f"{k} PSI {rep.psi[k]:.3f}" for k in rep.drifted))
        if self.on_drift is not None:
            self.on_drift(rep, self.model_version)

    def close(self) -> None:
        """Judge the open drift window (at shutdown)."""
        if self.drift is not None:
            rep = self.drift.flush(end=self.clock())
            if rep is not None:
                self._report(rep)
