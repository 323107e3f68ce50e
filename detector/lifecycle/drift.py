"""Has the traffic moved away from what the model was trained on? Population stability of a
few signals, live against a reference the trainer stores in the artifact (reference.json).

Signals, all read from the flow samples and scores (so the live and offline paths agree):
  score          the model's score, in the reference's decile bins
  service        share of flows per service (the reference's top services + "other")
  unscored       share of flows with nothing selected
  payload_bytes  high nibble of the non-zero payload bytes (zero padding is not payload)
  size:<svc>     log2 IP length of the packets of each of the reference's top services

PSI = sum (live - ref) * ln(live / ref) over bins, both smoothed by EPS: < 0.1 "no change",
0.1-0.25 "moderate", > 0.25 "significant" (the credit-scoring convention it comes from). A
window with fewer than `min_flows` flows is not judged: PSI of a handful is noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semiflow.detector.models.semiflow_flownet import service_keys

REFERENCE_FILE = "reference.json"
EPS = 1e-4
SIZE_BINS = 17           # floor(log2(ip_len + 1)) for ip_len < 65536
TOP_SERVICES = 8
PAYLOAD_OFFSET = 120     # layout ip60-transport60-payload (docs/flow-sample-spec.md)
PAYLOAD_FLOWS = 128      # payload bytes are counted on about this many flows per batch


def psi(ref: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of two count (or share) vectors over the same bins."""
    r = np.asarray(ref, np.float64)
    x = np.asarray(live, np.float64)
    if r.sum() <= 0 or x.sum() <= 0:
        return float("nan")
    r = (r / r.sum() + EPS) / (1 + EPS * len(r))
    x = (x / x.sum() + EPS) / (1 + EPS * len(x))
    return float(np.sum((x - r) * np.log(x / r)))


def _present(samples: np.ndarray) -> np.ndarray:
    ver = samples[..., 0] >> 4
    return (ver == 4) | (ver == 6)


def _ip_len(samples: np.ndarray) -> np.ndarray:
    s = samples[..., :6].astype(np.int64)  # the IP header's first bytes only
    v4 = s[..., 2] * 256 + s[..., 3]
    v6 = s[..., 4] * 256 + s[..., 5] + 40
    return np.where((s[..., 0] >> 4) == 6, v6, v4)


def signal_counts(samples: np.ndarray, n_selected: np.ndarray, scores: np.ndarray,
                  score_edges: np.ndarray, services: list[int],
                  payload_flows: int | None = None) -> dict[str, np.ndarray]:
    """Per-signal bin counts of one batch of flows (uint8[n, K, L] samples). payload_flows:
    count payload bytes on an even subsample of about this many flows (the live monitor's
    batches; None, the reference: every flow)."""
    samples = np.asarray(samples)
    n = len(samples)
    out: dict[str, np.ndarray] = {}
    sc = np.asarray(scores, np.float64)
    ok = np.isfinite(sc)
    out["score"] = np.bincount(np.searchsorted(score_edges, sc[ok], side="right"),
                               minlength=len(score_edges) + 1).astype(np.float64)
    unscored = np.asarray(n_selected) == 0
    out["unscored"] = np.array([(~unscored).sum(), unscored.sum()], np.float64)
    keys = service_keys(samples).numpy() if n else np.zeros(0, np.int64)
    idx = np.full(n, len(services), np.int64)
    for i, s in enumerate(services):
        idx[keys == s] = i
    out["service"] = np.bincount(idx, minlength=len(services) + 1).astype(np.float64)
    pres = _present(samples)
    if samples.shape[-1] > PAYLOAD_OFFSET:
        # a share per nibble: an even subsample of the flows estimates it as well
        step = max(1, n // payload_flows) if payload_flows else 1
        pay = samples[::step, :, PAYLOAD_OFFSET:][pres[::step]]
        nz = pay[pay != 0]
        out["payload_bytes"] = np.bincount(nz >> 4, minlength=16).astype(np.float64)
    bins = np.floor(np.log2(_ip_len(samples) + 1.0)).astype(np.int64).clip(0, SIZE_BINS - 1)
    for i, s in enumerate(services):
        sel = (idx == i)[:, None] & pres
        out[f"size:{s}"] = np.bincount(bins[sel], minlength=SIZE_BINS).astype(np.float64)
    return out


@dataclass
class DriftReference:
    """What the model was trained on, in the bins the live side counts."""

    score_edges: np.ndarray
    services: list[int]
    counts: dict[str, np.ndarray]
    flows: int

    @classmethod
    def build(cls, samples: np.ndarray, n_selected: np.ndarray, scores: np.ndarray,
              top_services: int = TOP_SERVICES) -> DriftReference:
        sc = np.asarray(scores, np.float64)
        ok = np.isfinite(sc)
        if ok.sum() < 10:
            raise ValueError("a drift reference needs at least 10 scored flows")
        edges = np.unique(np.quantile(sc[ok], np.linspace(0.1, 0.9, 9)))
        keys = service_keys(np.asarray(samples)).numpy()
        vals, cnt = np.unique(keys, return_counts=True)
        services = [int(v) for v in vals[np.argsort(-cnt, kind="stable")][:top_services]]
        return cls(edges, services, signal_counts(samples, n_selected, sc, edges, services),
                   len(sc))

    def to_dict(self) -> dict:
        return {"format": "semiflow-drift-reference/1", "flows": self.flows,
                "score_edges": self.score_edges.tolist(), "services": self.services,
                "counts": {k: v.tolist() for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> DriftReference:
        try:
            if d.get("format") != "semiflow-drift-reference/1":
                raise ValueError(f"format {d.get('format')!r}")
            return cls(np.asarray(d["score_edges"], np.float64),
                       [int(s) for s in d["services"]],
                       {str(k): np.asarray(v, np.float64) for k, v in d["counts"].items()},
                       int(d["flows"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"drift reference: malformed ({e})") from None

    def save(self, artifact_dir: str | Path) -> Path:
        p = Path(artifact_dir) / REFERENCE_FILE
        p.write_text(json.dumps(self.to_dict()) + "\n")
        return p

    @classmethod
    def load(cls, artifact_dir: str | Path) -> DriftReference | None:
        """The artifact's reference, or None for an artifact trained before references."""
        p = Path(artifact_dir) / REFERENCE_FILE
        if not p.is_file():
            return None
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"drift reference {p}: {e}") from None


@dataclass
class DriftReport:
    start: float
    end: float
    flows: int
    psi: dict[str, float]
    threshold: float

    @property
    def drifted(self) -> list[str]:
        """Signals past the threshold, worst first."""
        bad = [(v, k) for k, v in self.psi.items() if np.isfinite(v) and v > self.threshold]
        return [k for _, k in sorted(bad, reverse=True)]

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "flows": self.flows,
                "psi": {k: round(v, 5) for k, v in self.psi.items()},
                "threshold": self.threshold, "drifted": self.drifted}


@dataclass
class DriftMonitor:
    """Counts live flows per window and judges each finished window against the reference.

    update() takes one scored batch and returns the reports of the windows that the batch's
    time closed (usually none); flush() judges the open window (at shutdown).
    """

    reference: DriftReference
    window_s: float = 3600.0
    threshold: float = 0.25
    min_flows: int = 500
    _start: float | None = None
    _counts: dict[str, np.ndarray] = field(default_factory=dict)
    _flows: int = 0

    def update(self, now: float, samples: np.ndarray, n_selected: np.ndarray,
               scores: np.ndarray) -> list[DriftReport]:
        reports = []
        if self._start is None:
            self._start = now
        elif now >= self._start + self.window_s:
            r = self.flush(end=now)
            reports += [r] if r else []
            self._start = now
        if len(samples):
            c = signal_counts(samples, n_selected, scores, self.reference.score_edges,
                              self.reference.services, PAYLOAD_FLOWS)
            for k, v in c.items():
                self._counts[k] = self._counts.get(k, 0) + v
            self._flows += len(samples)
        return reports

    def flush(self, end: float | None = None) -> DriftReport | None:
        """The open window's report (None when too few flows to judge); starts a new one."""
        start, flows, counts = self._start, self._flows, self._counts
        self._counts, self._flows = {}, 0
        if start is None or flows < self.min_flows:
            return None
        ps = {k: psi(self.reference.counts[k], v) for k, v in counts.items()
              if k in self.reference.counts}
        return DriftReport(start, end if end is not None else start + self.window_s, flows,
                           ps, self.threshold)
