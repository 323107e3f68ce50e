"""Two models' verdicts on the same flows, side by side: what an operator reads before
promoting a candidate (`semiflow models diff`) and what shadow scoring accumulates live.

Pure numpy: scores and thresholds in, a JSON-ready dict out. A flow either model left unscored
(NaN: nothing selected) counts in `unscored` and in neither model's flags.
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else float("nan")


def agreement(flag_a: np.ndarray, flag_b: np.ndarray) -> dict:
    """Flags by each, by both, by one only, and the Jaccard overlap of the flagged sets."""
    a, b = np.asarray(flag_a, bool), np.asarray(flag_b, bool)
    both, either = int((a & b).sum()), int((a | b).sum())
    return {"flagged_a": int(a.sum()), "flagged_b": int(b.sum()), "flagged_both": both,
            "only_a": int((a & ~b).sum()), "only_b": int((~a & b).sum()),
            "jaccard": both / either if either else 1.0}


def compare_scores(a: np.ndarray, b: np.ndarray, threshold_a: float, threshold_b: float,
                   ts: np.ndarray | None = None, bucket_s: float = 3600.0) -> dict:
    """Score distributions, thresholds, flag agreement, rank correlation and flags per
    time bucket (when ts is given) of model A and model B on the same flows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError("both models must score the same flows")
    ok = np.isfinite(a) & np.isfinite(b)
    fa, fb = ok & (a > threshold_a), ok & (b > threshold_b)
    out = {"flows": int(len(a)), "unscored": int((~ok).sum()),
           "threshold_a": float(threshold_a), "threshold_b": float(threshold_b),
           "quantiles": [float(q) for q in QUANTILES],
           "score_quantiles_a": [float(x) for x in np.quantile(a[ok], QUANTILES)]
           if ok.any() else [],
           "score_quantiles_b": [float(x) for x in np.quantile(b[ok], QUANTILES)]
           if ok.any() else [],
           "spearman": _spearman(a[ok], b[ok]), **agreement(fa, fb)}
    if ts is not None and len(a):
        t = np.asarray(ts, np.float64)
        start = np.floor(t.min() / bucket_s) * bucket_s
        idx = ((t - start) // bucket_s).astype(np.int64)
        n = int(idx.max()) + 1
        out["bucket_s"] = bucket_s
        out["per_bucket"] = [
            {"start": float(start + i * bucket_s), "flows": int(c),
             "flagged_a": int(x), "flagged_b": int(y)}
            for i, (c, x, y) in enumerate(zip(np.bincount(idx, minlength=n),
                                              np.bincount(idx, weights=fa, minlength=n),
                                              np.bincount(idx, weights=fb, minlength=n),
                                              strict=True)) if c]
    return out
