"""Metrics of the traffic-lab setting: train on a benign run, test on a different mixed run.

Every labelled test flow counts. A flow the detector did not score (no selected packet) gets
a score below every scored flow, so it ranks as the most normal and is never flagged: AUROC
"all flows" charges a detector for what it cannot see. The threshold comes from the benign
run's calibration block only; its TPR and the FPR it really gives are read on the test run.
The helpers of training.evaluate (flow_metrics, group_metrics) do the counting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluate import flow_metrics, group_metrics

HEADLINE = ("auroc_all", "auroc_payload", "tpr_at_thr", "fpr_at_thr", "fit_seconds")


def score_store_rows(scorer, store, rows: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Flow scores of the given rows of a flow store, batch by batch, through the scorer's
    score_flows (what `semiflow score` runs)."""
    n_sel = store.flows["n_selected"].to_numpy().astype(np.int64)
    out = np.full(len(rows), np.nan)
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        out[i:i + batch] = scorer.score_flows(np.asarray(store.samples.rows(r)), n_sel[r])
    return out


def fill_unscored(s: np.ndarray) -> np.ndarray:
    """NaN (unscored) -> one value below every scored flow (ties among the unscored)."""
    s = np.asarray(s, dtype=np.float64)
    ok = np.isfinite(s)
    low = (s[ok].min() - 1.0 - abs(s[ok].min())) if ok.any() else 0.0
    return np.where(ok, s, low)


def lab_metrics(flows: pd.DataFrame, scores: np.ndarray, threshold: float | None) -> dict:
    """flows: the labelled test flows (label normal/anomalous, family, orig_bytes, resp_bytes);
    scores aligned with them, NaN = unscored. Flagged = score > threshold."""
    y = (flows["label"].astype(str) == "anomalous").to_numpy().astype(int)
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    filled = fill_unscored(s)
    payload = (flows["orig_bytes"].fillna(0).to_numpy() + flows["resp_bytes"].fillna(0)
               .to_numpy()) > 0
    thr = float(threshold) if threshold is not None and np.isfinite(threshold) else None
    all_m = flow_metrics(y, filled, thr)
    pay_m = flow_metrics(y[payload], filled[payload])
    scored_m = flow_metrics(y[ok], s[ok])
    out = {
        "n_flows": int(len(y)), "n_scored": int(ok.sum()),
        "n_normal": int((y == 0).sum()), "n_anomalous": int(y.sum()),
        "n_payload": int(payload.sum()),
        "auroc_all": all_m["auroc"], "auprc_all": all_m["auprc"],
        "auroc_payload": pay_m["auroc"], "auroc_scored": scored_m["auroc"],
        "oracle_tpr@0.001": all_m["tpr@0.001"],   # threshold read off the test set itself
        "threshold": thr,
        "tpr_at_thr": all_m.get("recall", float("nan")),
        "fpr_at_thr": all_m.get("fpr", float("nan")),
        "precision_at_thr": all_m.get("precision", float("nan")),
    }
    frame = pd.DataFrame({"y": y, "score": filled,
                          "family": flows["family"].fillna("").astype(str).to_numpy()})
    frame.loc[frame["y"] == 0, "family"] = "(benign)"
    out["per_family"] = group_metrics(frame, "family", thr)
    return out


def summarize_lab(records: list[dict]) -> pd.DataFrame:
    """Mean and std over seeds per detector of the headline metrics."""
    rows = [{"detector": r["detector"], "seed": r["seed"], "n_scored": r["n_scored"],
             "n_flows": r["n_flows"], **{m: r.get(m, np.nan) for m in HEADLINE}}
            for r in records]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    agg = df.groupby("detector", sort=False).agg(
        **{f"{m}_{f}": (m, f) for m in HEADLINE for f in ("mean", "std")},
        seeds=("seed", "nunique"), n_scored=("n_scored", "mean"), n_flows=("n_flows", "max"))
    return agg.reset_index()


def family_recall(records: list[dict]) -> pd.DataFrame:
    """detector x family: mean recall over seeds at the calibrated threshold (benign: FPR)."""
    rows = []
    for r in records:
        for fam, g in r["per_family"].items():
            v = g.get("fpr") if fam == "(benign)" else g.get("recall")
            rows.append({"detector": r["detector"], "seed": r["seed"], "family": fam,
                         "value": np.nan if v is None else v, "flows": g["flows"]})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    return df.pivot_table(index="detector", columns="family", values="value", aggfunc="mean",
                          sort=False)


def _pm(mu: float, sd: float, digits: int = 3) -> str:
    if mu != mu:
        return "n/a"
    return f"{mu:.{digits}f} ± {0.0 if sd != sd else sd:.{digits}f}"


def markdown_lab(summary: pd.DataFrame, families: pd.DataFrame,
                 family_sizes: dict[str, int] | None = None) -> str:
    """The headline table, then recall per attack family at the calibrated threshold."""
    head = ["detector", "AUROC all flows", "AUROC payload flows", "scored / flows",
            "TPR @ calib thr (1e-3)", "test FPR at that thr", "fit s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        lines.append("| " + " | ".join([
            str(r["detector"]), _pm(r["auroc_all_mean"], r["auroc_all_std"]),
            _pm(r["auroc_payload_mean"], r["auroc_payload_std"]),
            f"{r['n_scored']:.0f} / {r['n_flows']:.0f}",
            _pm(r["tpr_at_thr_mean"], r["tpr_at_thr_std"]),
            _pm(r["fpr_at_thr_mean"], r["fpr_at_thr_std"], 4),
            f"{r['fit_seconds_mean']:.1f}"]) + " |")
    if families is not None and not families.empty:
        cols = [c for c in families.columns if c != "(benign)"]
        sizes = family_sizes or {}
        lines += ["", "Recall per attack family at the calibrated threshold (mean over seeds; "
                  "flows in the test run in brackets):", "",
                  "| detector | " + " | ".join(f"{c} ({sizes.get(c, '?')})" for c in cols)
                  + " |", "|---|" + "---|" * len(cols)]
        for det, r in families.iterrows():
            lines.append(f"| {det} | " + " | ".join(
                "n/a" if r[c] != r[c] else f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)
