"""Alert thresholds from held-out normal scores, and why a plain quantile may not hold.

A (1 - target_fpr) quantile of n held-out normal dyad-hours is itself a noisy estimate: with
n = 300 and 1% FPR, three scores decide it. `upper` picks the smallest order statistic whose
true exceedance rate is <= target_fpr with probability `confidence` (a one-sided binomial
bound, distribution-free), so the threshold errs on the quiet side instead of on the noisy one.
It covers sampling noise only; a new day whose normal traffic differs (new ports, new hosts)
needs calibration data that looks like that day (a later time block, not a random slice).
`chain` (forward chaining) does that with all the data: split the hours into blocks, fit on the
hours before each block, score the block's normal dyad-hours, pool those out-of-time scores.
Every calibration score then comes from "a later block the detector has not seen", and there
are ~(1 - 1/blocks) of all normal dyad-hours instead of the last 20 % (3 of them on day 010).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

CALIBRATIONS = ("quantile", "upper", "chain")
FPR_UNITS = ("window", "flow")  # what target_fpr counts: dyad windows, or the flows in them


def calibrate_threshold(scores: np.ndarray, target_fpr: float, method: str = "quantile",
                        confidence: float = 0.95, weights: np.ndarray | None = None) -> float:
    """Threshold t such that 'score > t' flags about target_fpr of normal items.

    weights: items per score (a dyad window's flows): t is then the least score such that the
              windows above it hold at most target_fpr of all the weight — the rate a SOC sees
              in flows when a flagged window flags all its flows (quantile method only).

    quantile: the (1 - target_fpr) quantile (method 'higher'); `chain` scores use it too.
    upper:    the k-th smallest score with k the least such that
              P(Binomial(n, 1 - target_fpr) >= k) <= 1 - confidence; fewer scores than that
              bound needs give the maximum (nothing seen in calibration is flagged).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise ValueError("no calibration scores")
    if weights is not None:
        if method != "quantile":
            raise ValueError(f"a flow-weighted FPR needs the quantile calibration, not {method!r}")
        return weighted_threshold(np.asarray(scores, dtype=np.float64),
                                  np.asarray(weights, dtype=np.float64), target_fpr)
    if method in ("quantile", "chain"):
        return float(np.quantile(s, 1 - target_fpr, method="higher"))
    if method != "upper":
        raise ValueError(f"unknown calibration {method!r} (choose from {', '.join(CALIBRATIONS)})")
    from scipy.stats import binom

    n = len(s)
    k = np.arange(1, n + 1)
    # P(F(s_(k)) < 1 - fpr) = P(at least k of n normal scores fall below the true quantile)
    ok = binom.sf(k - 1, n, 1 - target_fpr) <= 1 - confidence
    return float(s[int(np.argmax(ok))] if ok.any() else s[-1])


def weighted_threshold(scores: np.ndarray, weights: np.ndarray, target_fpr: float) -> float:
    """Least calibration score t with weight(score > t) <= target_fpr * total weight."""
    if len(scores) != len(weights):
        raise ValueError("one weight per calibration score")
    order = np.argsort(scores, kind="stable")
    s, w = scores[order], weights[order]
    uniq, first = np.unique(s, return_index=True)
    above = w.sum() - np.cumsum(np.add.reduceat(w, first))  # weight strictly above uniq[i]
    return float(uniq[np.argmax(above <= target_fpr * w.sum())])


def rate_above(scores: np.ndarray, threshold: float) -> float:
    """Fraction of scores strictly above the threshold (the verdict rule)."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if len(s) else float("nan")


def chain_scores(seq: pd.DataFrame, fit_calib: Callable[[pd.DataFrame, np.ndarray], np.ndarray],
                 n_blocks: int = 4) -> np.ndarray | None:
    """Forward-chained out-of-time normal scores; None when there is only one time bucket.

    fit_calib(sub_seq, holdout) fits a fresh detector on sub_seq with `holdout` (per dyad-hour)
    as its calibration set and returns the held-out normal scores.
    """
    from semiflow.detector.logs.tokens import group_bounds

    bounds = group_bounds(seq)
    hours = seq["hour"].to_numpy()[bounds[:-1]]
    uniq = np.unique(hours)
    if len(uniq) < 2:
        return None
    gid = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    pooled = []
    for block in np.array_split(uniq, min(n_blocks, len(uniq)))[1:]:
        upto = hours <= block[-1]
        sub = seq[upto[gid]].reset_index(drop=True)
        sub_hours = sub["hour"].to_numpy()[group_bounds(sub)[:-1]]
        try:
            pooled.append(fit_calib(sub, np.isin(sub_hours, block)))
        except ValueError:  # a block with nothing normal before it: skip
            continue
    return np.concatenate(pooled) if pooled else None


def chained_calib_scores(det, seq: pd.DataFrame) -> np.ndarray | None:
    """Forward-chained held-out normal scores of fresh copies of det (same params, quantile
    calibration) fitted on the earlier blocks of seq; None when there is nothing to chain."""
    def fit_calib(sub: pd.DataFrame, holdout: np.ndarray) -> np.ndarray:
        twin = type(det)(**{**det.get_params(), "calibration": "quantile"})
        if hasattr(det, "device"):
            twin.device = det.device
        twin.fit_sequences(sub, holdout=holdout)
        ok = twin.calibration_source_ == "held-out normal dyad-hours"
        return twin.calib_scores_ if ok else np.empty(0)

    return chain_scores(seq, fit_calib)


def apply_calibration(det, seq: pd.DataFrame) -> None:
    """Set det.threshold_ from det.calib_scores_, or from forward-chained scores of fresh
    copies of det (same params) when det.calibration == 'chain'."""
    if det.calibration == "chain":
        pooled = chained_calib_scores(det, seq)
        if pooled is not None and len(pooled):
            det.calib_scores_ = pooled
            det.calibration_source_ = "forward-chained later-block normal dyad-hours"
    flows = getattr(det, "calib_flows_", None) if getattr(det, "fpr_unit", "window") == "flow" \
        else None
    det.threshold_ = calibrate_threshold(det.calib_scores_, det.target_fpr, det.calibration,
                                         det.confidence, weights=flows)
