"""Train detectors on benchmark splits and score them: the engine behind `semiflow evaluate`.

For every split: fit each detector on the normal TRAINING flows' packets, calibrate the flag
threshold on the normal VALIDATION flows at a target FPR (or take a stored one), score the
test flows (packet scores -> flow scores) and compute the metrics of training.evaluate.
Flow-level detectors (class attribute level = "flow", e.g. knn) fit and score flow samples
X[n_flows, K, L] instead; flows without a selected packet stay unscored for them too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from semiflow.detector.aggregate import aggregate_flow_scores
from semiflow.detector.registry import EMBEDDERS, detector_class, make_detector

from .dataset import flow_matrix
from .evaluate import (
    FlowData,
    Split,
    calibrate_threshold,
    check_split,
    flow_metrics,
    group_metrics,
)

SUMMARY_METRICS = ("auroc", "auprc", "tpr@0.001", "tpr@0.01", "f1")


def is_flow_level(detector: Any) -> bool:
    """True for detectors (classes or instances) that score flow samples, not packet rows."""
    return getattr(detector, "level", "packet") == "flow"


def flow_samples(data: FlowData, idx: np.ndarray, k: int | None = None, l: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8[len(idx), k, l] samples of the flows at positions idx, bool mask of flows with a
    selected packet, packets among their first k). Read in chunks, cut to k x l as they come,
    so memory is len(idx) * k * l bytes, not the full K x L."""
    idx = np.asarray(idx, dtype=np.int64)
    K, L = data.stores[0].samples.shape[1:]
    k, l = min(k or K, K), min(l or L, L)
    sub = data.flows.iloc[idx]
    X = flow_matrix(data.stores, sub["_store"].to_numpy(), sub["_row"].to_numpy(), k, l)
    has = np.zeros(len(idx), bool)
    n_pk = 0
    for s, store in enumerate(data.stores):
        mine = np.flatnonzero(sub["_store"].to_numpy() == s)
        rows = sub["_row"].to_numpy()[mine]
        filled = np.asarray(store.samples.offs[rows, :k]) >= 0
        has[mine] = filled.any(1)
        n_pk += int(filled.sum())
    return X, has, n_pk


def _flow_level_scores(detector: Any, data: FlowData, idx: np.ndarray,
                       n_bytes: int | None) -> tuple[np.ndarray, int]:
    l = min(v for v in (n_bytes, getattr(detector, "n_bytes", None), 1 << 30) if v)
    X, has, n_pk = flow_samples(data, idx, getattr(detector, "n_packets", None), l)
    out = np.full(len(idx), np.nan)
    if has.any():
        out[has] = detector.anomaly_score(X[has])
    return out, n_pk


def flow_scores(detector: Any, data: FlowData, idx: np.ndarray, how: str = "max",
                n_bytes: int | None = None) -> tuple[np.ndarray, int]:
    """(score per flow at positions idx, NaN = unscored; packets scored)."""
    if is_flow_level(detector):
        return _flow_level_scores(detector, data, idx, n_bytes)
    X, pos = data.packets(idx)
    if n_bytes:
        X = np.ascontiguousarray(X[:, :n_bytes])
    s = detector.anomaly_score(X) if len(X) else np.zeros(0)
    return aggregate_flow_scores(s, pos, len(idx), how), len(X)


def order_for_embedding(names: list[str]) -> list[str]:
    """Encoder-bearing detectors first, so KDE can borrow a frozen encoder of the same split."""
    return sorted(names, key=lambda n: (n not in EMBEDDERS, names.index(n)))


def fit_detector(name: str, data: FlowData, train: np.ndarray, val: np.ndarray,
                 params: dict | None = None, seed: int = 0, n_bytes: int | None = None,
                 done: dict[str, Any] | None = None,
                 rows: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[Any, float, int, dict]:
    """(fitted detector, fit seconds, training packets, parameters used) for the normal flows
    at positions train (val: early stopping where the detector uses it). done holds detectors
    already fitted on the same flows (KDE borrows an encoder from them); rows are the packet
    rows (X_tr, X_va) when the caller has them already (only packet-level detectors)."""
    p = dict(params or {})
    done = done or {}
    t0 = time.perf_counter()
    if name == "kde" and p.get("features", "encoder") == "encoder":
        emb_name = next((e for e in EMBEDDERS if e in done), None)
        p["features"] = "encoder" if emb_name else "raw"
        p["embedder"] = done.get(emb_name)
    det = make_detector(name, seed=seed, **p)
    if is_flow_level(det):
        l = min(v for v in (n_bytes, getattr(det, "n_bytes", None), 1 << 30) if v)
        k = getattr(det, "n_packets", None)
        F_tr, has_tr, n_pk = flow_samples(data, train, k, l)
        F_va, has_va, _ = flow_samples(data, val, k, l)
        if not has_tr.any():
            raise ValueError(f"{name}: no training flows")
        det.fit(F_tr[has_tr], F_va[has_va])
    else:
        X_tr, X_va = rows if rows is not None else packet_inputs(data, train, val, n_bytes)
        if len(X_tr) == 0:
            raise ValueError(f"{name}: no training packets")
        det.fit(X_tr, X_va)
        n_pk = len(X_tr)
    return det, time.perf_counter() - t0, int(n_pk), p


def packet_inputs(data: FlowData, train: np.ndarray, val: np.ndarray,
                  n_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Packet rows of the train and val flows, cut to n_bytes."""
    X_tr, _ = data.packets(train)
    X_va, _ = data.packets(val)
    if n_bytes:
        X_tr = np.ascontiguousarray(X_tr[:, :n_bytes])
        X_va = np.ascontiguousarray(X_va[:, :n_bytes])
    return X_tr, X_va


def embedder_name(embedder: Any, done: dict[str, Any]) -> str | None:
    """Which fitted detector KDE borrowed its encoder from (None: raw bytes)."""
    return next((n for n, d in done.items() if embedder is not None and d is embedder), None)


def evaluate_split(data: FlowData, split: Split, names: list[str],
                   params: dict[str, dict] | None = None, target_fpr: float = 1e-3,
                   how: str = "max", n_bytes: int | None = None,
                   fitted: dict[str, Any] | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict]:
    """One result record per detector. `fitted` gives ready detectors (evaluated as-is: no
    fit, their own threshold_ if they carry one)."""
    check_split(data.flows, split)
    params = params or {}
    fitted = fitted or {}
    rows = None
    if any(n not in fitted and not is_flow_level(detector_class(n)) for n in names):
        rows = packet_inputs(data, split.train, split.val, n_bytes)
        if len(rows[0]) == 0:
            raise ValueError(f"{split.benchmark}/{split.fold}: no training packets")
    flows = data.flows
    test_meta = flows.iloc[split.test][["family", "source", "source_file"]].reset_index(
        drop=True)
    done: dict[str, Any] = {}
    out = []
    for name in order_for_embedding(names):
        p = dict(params.get(name, {}))
        tr_pk = 0 if rows is None else len(rows[0])
        if name in fitted:
            det, fit_s = fitted[name], 0.0
        else:
            det, fit_s, tr_pk, p = fit_detector(name, data, split.train, split.val, p,
                                                split.seed, n_bytes, done, rows)
        done[name] = det
        t1 = time.perf_counter()
        s_test, n_pk = flow_scores(det, data, split.test, how, n_bytes)
        score_s = time.perf_counter() - t1
        thr_from = "stored"
        thr = getattr(det, "threshold_", None)
        if thr is None and len(split.val):
            s_val, _ = flow_scores(det, data, split.val, how, n_bytes)
            if np.isfinite(s_val).any():
                thr = calibrate_threshold(s_val, target_fpr)
                thr_from = f"validation normal flows at FPR {target_fpr:g}"
        ok = np.isfinite(s_test)
        y = split.y_test
        frame = test_meta.assign(y=y, score=s_test)[ok]
        rec = {
            "benchmark": split.benchmark, "fold": split.fold, "seed": split.seed,
            "detector": name, "params": {k: v for k, v in p.items() if k != "embedder"},
            "train_flows": int(len(split.train)), "val_flows": int(len(split.val)),
            "test_flows": int(len(split.test)),
            "train_packets": int(tr_pk),
            "fit_seconds": round(fit_s, 3), "score_seconds": round(score_s, 3),
            "test_packets": n_pk,
            "unscored": {"normal": int((~ok & (y == 0)).sum()),
                         "anomalous": int((~ok & (y == 1)).sum())},
            "threshold_from": thr_from if thr is not None else "none",
            "metrics": flow_metrics(y[ok], s_test[ok], thr),
            "per_family": group_metrics(frame, "family", thr),
            "per_source": group_metrics(frame, "source", thr),
            "notes": list(split.notes),
            "_scores": {"y": y[ok], "score": s_test[ok]},
        }
        if name == "kde" and name not in fitted:
            rec["params"]["embedder"] = embedder_name(p.get("embedder"), done)
        if log:
            m = rec["metrics"]
            log(f"{split.benchmark}/{split.fold} seed {split.seed} {name}: "
                f"AUROC {m['auroc']:.3f} AUPRC {m['auprc']:.3f} "
                f"TPR@1e-3 {m['tpr@0.001']:.3f} fit {fit_s:.1f}s")
        out.append(rec)
    return out


def summarize(records: list[dict]) -> pd.DataFrame:
    """Mean and std over seeds per benchmark, fold group (pooled / loso) and detector.

    LOSO folds are averaged within a seed first, so each seed contributes one number."""
    rows = []
    for r in records:
        group = "loso" if r["fold"].startswith("loso:") else r["fold"]
        row = {"benchmark": r["benchmark"], "fold": group, "seed": r["seed"],
               "detector": r["detector"], "fit_seconds": r["fit_seconds"],
               "train_packets": r["train_packets"]}
        row.update({k: r["metrics"].get(k, np.nan) for k in SUMMARY_METRICS})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    keys = ["benchmark", "fold", "detector"]
    per_seed = df.groupby(keys + ["seed"], sort=False).mean(numeric_only=True).reset_index()
    agg = per_seed.groupby(keys, sort=False).agg(
        **{f"{m}_{f}": (m, f) for m in SUMMARY_METRICS + ("fit_seconds",)
           for f in ("mean", "std")},
        seeds=("seed", "nunique"), train_packets=("train_packets", "mean"))
    return agg.reset_index()


def markdown_table(summary: pd.DataFrame,
                   metrics: tuple[str, ...] = ("auroc", "auprc", "tpr@0.001")) -> str:
    """benchmark | fold | detector | metric mean ± std ... ; best mean per column in bold.

    With one seed there is no spread: plain values, no "± 0.000". Bold marks the best of
    several detectors; a lone detector has nothing to beat."""
    head = ["benchmark", "split", "detector"] + [m.upper().replace("TPR@0.001", "TPR@1e-3")
                                                 for m in metrics] + ["fit s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if summary.empty:
        return "\n".join(lines)
    one_seed = bool((summary["seeds"] <= 1).all())
    for (_, _), g in summary.groupby(["benchmark", "fold"], sort=False):
        best = {m: g[f"{m}_mean"].max() for m in metrics}
        for _, r in g.iterrows():
            cells = [r["benchmark"], r["fold"], r["detector"]]
            for m in metrics:
                mu, sd = r[f"{m}_mean"], r[f"{m}_std"]
                txt = f"{mu:.3f}" if one_seed else f"{mu:.3f} ± {0.0 if np.isnan(sd) else sd:.3f}"
                cells.append(f"**{txt}**" if mu == best[m] and len(g) > 1 else txt)
            cells.append(f"{r['fit_seconds_mean']:.1f}")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def public(records: list[dict]) -> list[dict]:
    """Records without the raw score arrays (for JSON)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
