"""Flow score from packet scores: a flow is as anomalous as its most anomalous packet (default)."""

from __future__ import annotations

import numpy as np

AGGREGATES = ("max", "mean", "median")


def aggregate_flow_scores(packet_scores: np.ndarray, flow_index: np.ndarray, n_flows: int,
                          how: str = "max") -> np.ndarray:
    """Reduce per-packet scores to per-flow scores; flows without packets get NaN (unscored).

    flow_index[i] is the flow of packet i (0 <= flow_index < n_flows).
    """
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose one of {AGGREGATES}")
    scores = np.asarray(packet_scores, dtype=np.float64)
    idx = np.asarray(flow_index, dtype=np.int64)
    out = np.full(n_flows, np.nan)
    if scores.size == 0:
        return out
    if how == "max":
        np.fmax.at(out, idx, scores)
        return out
    order = np.argsort(idx, kind="stable")
    idx, scores = idx[order], scores[order]
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    groups = np.split(scores, starts[1:])
    fn = np.mean if how == "mean" else np.median
    out[idx[starts]] = [fn(g) for g in groups]
    return out
