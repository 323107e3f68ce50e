"""Alert thresholds calibrated on held-out NORMAL flow scores at a target false-positive rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_TARGET_FPR = 1e-3


@dataclass(frozen=True)
class Threshold:
    """A flow is anomalous when its score is strictly above `value`.

    target_fpr is what it was calibrated for; achieved_fpr what it gives on the calibration
    scores (never above the target); n_normal how many normal flows that rests on. With fewer
    than 1/target_fpr flows the FPR cannot be resolved: `resolved` says so.
    """

    value: float
    target_fpr: float
    achieved_fpr: float
    n_normal: int
    aggregate: str = "max"

    @property
    def resolved(self) -> bool:
        return self.n_normal * self.target_fpr >= 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved}

    @classmethod
    def from_dict(cls, d: dict) -> Threshold:
        try:
            return cls(value=float(d["value"]), target_fpr=float(d["target_fpr"]),
                       achieved_fpr=float(d["achieved_fpr"]), n_normal=int(d["n_normal"]),
                       aggregate=str(d.get("aggregate", "max")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"threshold: malformed record {d!r} ({e})") from e


def calibrate_threshold(normal_scores: np.ndarray, target_fpr: float = DEFAULT_TARGET_FPR,
                        aggregate: str = "max") -> Threshold:
    """The lowest threshold whose false-positive rate on these normal scores is <= target.

    NaN scores (unscored flows) are ignored: they are neither normal nor anomalous.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    s = np.asarray(normal_scores, dtype=np.float64)
    s = np.sort(s[~np.isnan(s)])
    n = len(s)
    if n == 0:
        raise ValueError("cannot calibrate a threshold: no scored normal flows")
    allowed = int(np.floor(target_fpr * n))      # false positives we may keep
    value = float(s[n - allowed - 1])             # at most `allowed` scores lie above it
    achieved = float(np.mean(s > value))
    return Threshold(value=value, target_fpr=float(target_fpr), achieved_fpr=achieved,
                     n_normal=n, aggregate=aggregate)


def rates_at(threshold: float, normal_scores: np.ndarray,
             anomalous_scores: np.ndarray | None = None) -> dict:
    """FPR on normal and TPR on anomalous scores at a threshold (NaN scores left out)."""
    out = {}
    n = np.asarray(normal_scores, dtype=np.float64)
    n = n[~np.isnan(n)]
    out["fpr"] = float(np.mean(n > threshold)) if len(n) else float("nan")
    out["n_normal"] = int(len(n))
    if anomalous_scores is not None:
        a = np.asarray(anomalous_scores, dtype=np.float64)
        a = a[~np.isnan(a)]
        out["tpr"] = float(np.mean(a > threshold)) if len(a) else float("nan")
        out["n_anomalous"] = int(len(a))
    return out
