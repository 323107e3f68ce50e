"""`semiflow serve --models STORE [--shadow VERSION]`: follow a model store while serving.

The store's CURRENT pointer is polled (every --follow-s seconds; SIGHUP checks at once): a
promotion or rollback loads the new version in the background and swaps it in between
micro-batches (detector/lifecycle/slot.py). Shadow agreement and drift reports are written as
JSON lines (Zeek's JSON log convention) to semiflow_shadow.log and semiflow_drift.log in
--lifecycle-dir, exported to Prometheus, and a drifted signal is sent to Zeek as
SemiFlow::model_drift, which raises the notice SemiFlow::Model_Drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from semiflow.detector.lifecycle.drift import DriftReference
from semiflow.detector.lifecycle.slot import ModelSlot

log = logging.getLogger("semiflow.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", metavar="STORE",
                   help="serve the store's current version and follow promotions and "
                        "rollbacks (semiflow models); instead of --model")
    p.add_argument("--shadow", metavar="VERSION",
                   help="also score every flow with this store version; its verdicts go "
                        "only to semiflow_shadow.log and the metrics")
    p.add_argument("--follow-s", type=float, default=2.0,
                   help="how often the store's CURRENT is checked, seconds (2; SIGHUP: now)")
    p.add_argument("--drift-window", type=float, default=3600.0, metavar="SECONDS",
                   help="drift is judged per window of this length (3600)")
    p.add_argument("--drift-threshold", type=float, default=0.25,
                   help="PSI above which a signal has drifted (0.25)")
    p.add_argument("--drift-min-flows", type=int, default=500,
                   help="windows with fewer flows are not judged (500)")
    p.add_argument("--lifecycle-dir", default=".", metavar="DIR",
                   help="where semiflow_shadow.log and semiflow_drift.log go (.)")


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Lifecycle:
    """The slot, the store follower and the logs of one serving process."""

    def __init__(self, args: argparse.Namespace, load: Callable[[str], object]):
        from semiflow.model_store import ModelStore

        self.store = ModelStore(args.models) if args.models else None
        source = str(self.store.current_path()) if self.store else args.model
        self.dir = Path(args.lifecycle_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.publish_drift: Callable[[dict], None] | None = None
        self.slot = ModelSlot(load(source), load, reference=DriftReference.load,
                              drift_window_s=args.drift_window,
                              drift_threshold=args.drift_threshold,
                              drift_min_flows=args.drift_min_flows, on_drift=self._on_drift)
        self.slot.attach_source(source)
        self._following = self.store.current() if self.store else None
        if args.shadow:
            if self.store is None:
                raise ValueError("--shadow names a store version: it needs --models STORE")
            self.store.verify(args.shadow)
            self.slot.set_shadow(load(str(self.store.path(args.shadow))))
        self.follow_s = args.follow_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- following the store ------------------------------------------------------------
    def check(self) -> None:
        """Swap when CURRENT names another version (a promote or a rollback)."""
        if self.store is None:
            return
        cur = self.store.current()
        if cur is None or cur == self._following:
            return
        self._following = cur
        if cur == self.slot.model_version:  # back to what serves (after a refused version)
            return
        try:
            self.store.verify(cur)
        except ValueError as e:
            log.error("model %s refused, %s keeps serving: %s", cur, self.slot.model_version, e)
            self.slot.refused.append((cur, str(e)))
            return
        log.info("store %s: current is now %s; loading", self.store.root, cur)
        self.slot.request(str(self.store.path(cur)), cur)

    def wake(self) -> None:
        """SIGHUP: check the store now."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="semiflow-follow")
        self._thread.start()

    def _run(self) -> None:
        last_shadow = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.follow_s)
            self._wake.clear()
            try:
                self.check()
            except Exception as e:  # never let the follower die silently
                log.error("following the model store failed: %r", e)
            if self.slot.shadow_stats is not None and time.monotonic() - last_shadow >= 60:
                self.write_shadow()
                last_shadow = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.slot.close()
        if self.slot.shadow_stats is not None:
            self.write_shadow()

    # ---- logs and metrics ---------------------------------------------------------------
    def _append(self, name: str, rec: dict) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in rec.items()}) + "\n")

    def write_shadow(self) -> None:
        self._append("semiflow_shadow.log", {"ts": time.time(),
                                             "served_version": self.slot.model_version,
                                             **self.slot.shadow_stats.to_dict()})

    def _on_drift(self, rep, version: str) -> None:
        self._append("semiflow_drift.log", {"ts": time.time(), "model_version": version,
                                            **rep.to_dict()})
        if self.publish_drift is not None:
            for signal in rep.drifted:
                self.publish_drift({"model_version": version, "signal": signal,
                                    "psi": rep.psi[signal], "threshold": rep.threshold,
                                    "flows": rep.flows, "window_start": rep.start,
                                    "window_end": rep.end})

    def metrics(self) -> dict[str, float]:
        m = {"semiflow_model_swaps_total": float(len(self.slot.swaps)),
             "semiflow_model_refused_total": float(len(self.slot.refused)),
             "semiflow_drift_windows_total": float(len(self.slot.drift_reports)),
             "semiflow_drift_windows_drifted_total": float(
                 sum(bool(r.drifted) for r in self.slot.drift_reports))}
        if self.slot.drift_reports:
            for k, v in self.slot.drift_reports[-1].psi.items():
                if math.isfinite(v):
                    m[f'semiflow_drift_psi{{signal="{k}"}}'] = v
        st = self.slot.shadow_stats
        if st is not None:
            d = st.to_dict()
            m.update({"semiflow_shadow_flows_total": float(d["flows"]),
                      "semiflow_shadow_flagged_served_total": float(d["flagged_served"]),
                      "semiflow_shadow_flagged_shadow_total": float(d["flagged_shadow"]),
                      "semiflow_shadow_flagged_both_total": float(d["flagged_both"]),
                      "semiflow_shadow_jaccard": float(d["jaccard"])})
            if math.isfinite(d["pearson"]):
                m["semiflow_shadow_pearson"] = float(d["pearson"])
        return m
