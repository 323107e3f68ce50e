"""Flow-level evaluation: metrics, and the three benchmark constructions of the corpus README.

Metrics are on FLOW scores (packet scores aggregated per flow, max by default). Flows that
yielded no sample (scans: no payload) are counted as unscored, never scored as normal. Only
flows labelled normal/anomalous count; background/unknown flows are left out.

Splits are by capture FILE: no file's flows appear in two of train/val/test. Detectors fit on
normal training files only; anomalous files are only ever in the test part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from semiflow.detector.threshold import calibrate_threshold as _calibrate
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.dataset import cap_flows_per_file, packet_rows

BENCHMARKS = ("attacks", "vpn", "malformed")
# what each construction needs from the extraction's labels (said when it does not apply)
NEEDS = {"attacks": "flows labelled normal and anomalous flows of a family other than "
                    "malformed (extract with --manifest or --conn-labels)",
         "vpn": "nDPI corpus flows labelled normal, some of family vpn/tor (the corpus "
                "extracted with its manifest)",
         "malformed": "flows labelled normal and anomalous flows of family malformed (the "
                      "corpus extracted with its manifest)"}
FPR_POINTS = (1e-3, 1e-2)
NDPI = "ntop/nDPI"


# ---- metrics ------------------------------------------------------------------------------
def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    """Highest TPR over thresholds whose FPR <= fpr (0 FP allowed when 1/n_neg > fpr)."""
    f, t, _ = skm.roc_curve(y, s)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def calibrate_threshold(normal_scores: np.ndarray, fpr: float) -> float:
    """Score above which at most a fraction fpr of these normal flows lies (flag: s > thr).

    The same rule as the artifacts' thresholds (detector.threshold); NaN scores ignored."""
    return _calibrate(normal_scores, fpr).value


def flow_metrics(y: np.ndarray, s: np.ndarray, threshold: float | None = None) -> dict:
    """AUROC, AUPRC (average precision), TPR at FPR 1e-3/1e-2 and, given a threshold,
    precision/recall/F1/FPR of the rule score > threshold. y: 1 = anomalous."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(s, dtype=np.float64)
    out: dict = {"n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum())}
    both = out["n_normal"] > 0 and out["n_anomalous"] > 0
    out["auroc"] = float(skm.roc_auc_score(y, s)) if both else float("nan")
    out["auprc"] = float(skm.average_precision_score(y, s)) if both else float("nan")
    for p in FPR_POINTS:
        out[f"tpr@{p:g}"] = tpr_at_fpr(y, s, p) if both else float("nan")
    if threshold is not None:
        pred = (s > threshold).astype(int)
        out["threshold"] = float(threshold)
        out["precision"] = float(skm.precision_score(y, pred, zero_division=0))
        out["recall"] = float(skm.recall_score(y, pred, zero_division=0))
        out["f1"] = float(skm.f1_score(y, pred, zero_division=0))
        neg = y == 0
        out["fpr"] = float(pred[neg].mean()) if neg.any() else float("nan")
    return out


def group_metrics(frame: pd.DataFrame, by: str, threshold: float | None) -> dict:
    """Per-group results: flows, recall (anomalous) / FPR (normal) at threshold, AUROC
    where the group holds both classes. frame has columns y, score and `by`."""
    out = {}
    for key, g in frame.groupby(by, sort=True):
        y, s = g["y"].to_numpy(), g["score"].to_numpy()
        r: dict = {"flows": int(len(g)), "anomalous": int(y.sum())}
        if threshold is not None:
            flagged = s > threshold
            if y.any():
                r["recall"] = float(flagged[y == 1].mean())
            if (y == 0).any():
                r["fpr"] = float(flagged[y == 0].mean())
        if 0 < y.sum() < len(y):
            r["auroc"] = float(skm.roc_auc_score(y, s))
        out[str(key)] = r
    return out


# ---- data ---------------------------------------------------------------------------------
@dataclass
class FlowData:
    """One or more extraction directories seen as one flow table (column `_store`, `_row`)."""

    stores: list[FlowStore]
    flows: pd.DataFrame

    def packets(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X uint8[n_packets, L], flow position within idx) for flows at positions idx."""
        idx = np.asarray(idx, dtype=np.int64)
        sub = self.flows.iloc[idx]
        X_parts, pos_parts = [], []
        for k, store in enumerate(self.stores):
            mine = np.flatnonzero(sub["_store"].to_numpy() == k)
            if not len(mine):
                continue
            X, pos = packet_rows(store, sub["_row"].to_numpy()[mine])
            X_parts.append(X)
            pos_parts.append(mine[pos])
        if not X_parts:
            L = self.stores[0].samples.shape[2]
            return np.zeros((0, L), np.uint8), np.zeros(0, np.int64)
        return np.concatenate(X_parts), np.concatenate(pos_parts)


def load_flow_data(dirs: list[str | os.PathLike]) -> FlowData:
    """Open extraction directories; they must share one flow-sample spec."""
    if not dirs:
        raise ValueError("no extraction directory given")
    stores = [FlowStore.open(d) for d in dirs]
    for s in stores[1:]:
        if s.spec != stores[0].spec:
            raise ValueError(f"{s.path} was extracted with another spec than {stores[0].path}")
    frames = []
    for k, s in enumerate(stores):
        f = s.flows.copy()
        f["_store"], f["_row"] = k, np.arange(len(f))
        frames.append(f)
    flows = pd.concat(frames, ignore_index=True)
    for col in ("label", "family", "source"):
        flows[col] = flows[col].fillna("").astype(str)
    return FlowData(stores, flows)


# ---- benchmark constructions --------------------------------------------------------------
@dataclass
class Split:
    """Flow positions (into FlowData.flows) of one train/val/test construction."""

    benchmark: str
    fold: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    y_test: np.ndarray                       # 1 = anomalous, aligned with test
    notes: list[str] = field(default_factory=list)
    within_files: bool = False               # train/val split by time inside captures


def _file_parts(files: np.ndarray, fractions: tuple[float, float], seed: int
                ) -> tuple[set, set, set]:
    """Shuffle files and cut into train / val / test by the given train, val fractions."""
    files = np.array(sorted(set(files)))
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    n = len(files)
    n_tr = max(1, int(round(fractions[0] * n))) if n else 0
    n_va = max(1, int(round(fractions[1] * n))) if n - n_tr > 1 else 0
    return set(files[:n_tr]), set(files[n_tr:n_tr + n_va]), set(files[n_tr + n_va:])


def _roles(flows: pd.DataFrame, benchmark: str) -> tuple[np.ndarray, np.ndarray]:
    """(normal mask, anomalous mask) of the flows that take part in a benchmark."""
    lab, fam, src = flows["label"], flows["family"], flows["source"]
    if benchmark == "attacks":
        return (lab == "normal").to_numpy(), ((lab == "anomalous") & (fam != "malformed")
                                              ).to_numpy()
    if benchmark == "vpn":
        ndpi = src == NDPI
        tunnel = fam.isin(["vpn", "tor"])
        return (ndpi & (lab == "normal") & ~tunnel).to_numpy(), (ndpi & tunnel).to_numpy()
    if benchmark == "malformed":
        return (lab == "normal").to_numpy(), ((lab == "anomalous") & (fam == "malformed")
                                              ).to_numpy()
    raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")


class NotApplicable(ValueError):
    """The extraction lacks the flows a benchmark construction needs."""


def plan_benchmarks(flows: pd.DataFrame, benchmarks: list[str], seeds: list[int],
                    cap_per_file: int | None = 50, loso: bool = True
                    ) -> tuple[list[Split], dict[str, str]]:
    """Every split to run, built before anything is fitted, and the benchmarks that do not
    apply to these flows with the reason (so a long run never fails at its last benchmark)."""
    splits: list[Split] = []
    skipped: dict[str, str] = {}
    for bench in benchmarks:
        try:
            for seed in seeds:
                splits += make_splits(flows, bench, seed, cap_per_file, loso=loso)
        except NotApplicable as e:
            skipped[bench] = str(e)
            splits = [s for s in splits if s.benchmark != bench]
    return splits, skipped


def make_splits(flows: pd.DataFrame, benchmark: str, seed: int = 0,
                cap_per_file: int | None = 50, fractions: tuple[float, float] = (0.6, 0.1),
                loso: bool = True) -> list[Split]:
    """The benchmark's splits for one seed: a pooled split, plus (attacks) one fold per
    source holding anomalies, with that source left out of training entirely."""
    normal, anom = _roles(flows, benchmark)
    keep = cap_flows_per_file(flows, cap_per_file, seed) if cap_per_file else np.ones(
        len(flows), bool)
    normal, anom = normal & keep, anom & keep
    if not normal.any() or not anom.any():
        raise NotApplicable(f"benchmark {benchmark} needs {NEEDS[benchmark]}; found "
                            f"{int(normal.sum())} normal, {int(anom.sum())} anomalous")
    file_col = flows["source_file"].to_numpy()
    src_col = flows["source"].to_numpy()

    def build(fold: str, pool: np.ndarray, extra_test: np.ndarray, notes: list[str]) -> Split:
        tr, va, te = _file_parts(file_col[pool], fractions, seed)
        in_tr = pool & np.isin(file_col, list(tr))
        in_va = pool & np.isin(file_col, list(va))
        in_te = (pool & np.isin(file_col, list(te))) | extra_test
        test = np.flatnonzero(in_te)
        return Split(benchmark, fold, seed, np.flatnonzero(in_tr), np.flatnonzero(in_va),
                     test, anom[test].astype(int), notes)

    splits = [build("pooled", normal, anom, [
        "normal files split by file into train/val/test; all anomalous files in test"])]
    if benchmark == "attacks" and loso:
        for s in sorted(set(src_col[anom])):
            held = src_col == s
            notes = [f"source {s} held out: train/val on normal files of other sources; "
                     f"test = held-out normal files of other sources + every {s} flow"]
            splits.append(build(f"loso:{s}", normal & ~held, (normal | anom) & held, notes))
    return splits


def check_split(flows: pd.DataFrame, split: Split) -> None:
    """Assert the split's promises: no file in two parts, no anomaly in train/val."""
    files = flows["source_file"].to_numpy()
    parts = [set(files[split.train]), set(files[split.val]), set(files[split.test])]
    for i in range(3):
        for j in range(i + 1, 3):
            if split.within_files and (i, j) == (0, 1):
                continue  # a time split: train and val are earlier/later flows of one file
            both = parts[i] & parts[j]
            if both:
                raise AssertionError(f"{split.benchmark}/{split.fold}: file(s) in two parts: "
                                     f"{sorted(both)[:3]}")
    lab = flows["label"].to_numpy()
    if (lab[split.train] != "normal").any() or (lab[split.val] != "normal").any():
        raise AssertionError(f"{split.benchmark}/{split.fold}: non-normal flow in train/val")
