"""`semiflow train`: extraction directories -> a SemiFlow model artifact.

Only NORMAL flows are fitted. They are split three ways: train (fitting), val (early stopping,
on normal vs fresh pseudo-anomalies: no labelled anomaly needed) and calib (the threshold at
the target FPR). With 3 or more capture files the split is by whole file (seeded); with fewer
(one network, one capture) it is by time: the earliest 70% of each capture's flows train, the
next 15% validate, the latest 15% calibrate. At most max_flows normal flows are used (shared
evenly between files, evenly spaced in time). Labelled anomalous flows, when the extraction has
them, are scored for the report only and never touch the fit.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.aggregate import aggregate_flow_scores
from semiflow.detector.artifact import save_artifact, sha256_file
from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_inference import auroc as _auroc
from semiflow.detector.models.semiflow_model import SemiFlowConfig
from semiflow.detector.models.train_loop import DistContext, FitOptions
from semiflow.detector.threshold import DEFAULT_TARGET_FPR, calibrate_threshold, rates_at
from semiflow.plugin.flowstore import FlowStore

from .dataset import (
    PART_NAMES,
    budget_flows,
    cap_flows_per_file,
    packet_rows,
    split_codes,
)
from .flow_table import compact_parts, open_stores
from .train_flow import train_flow

CHECKPOINT = "checkpoint.pt"


@dataclass
class Part:
    """Flows of one role (train/val/calib/anomalous), as packet rows plus their flow index."""

    X: np.ndarray
    flow_pos: np.ndarray
    flows: pd.DataFrame


def _rows(stores: list[FlowStore], flows: pd.DataFrame) -> Part:
    Xs, poss, off = [], [], 0
    for si, store in enumerate(stores):
        sub = flows[flows["_store"] == si]
        if len(sub) == 0:
            continue
        X, pos = packet_rows(store, sub["row"].to_numpy())
        Xs.append(X)
        poss.append(pos + off)
        off += len(sub)
    order = pd.concat([flows[flows["_store"] == si] for si in range(len(stores))])
    L = stores[0].samples.shape[2]
    X = np.concatenate(Xs) if Xs else np.zeros((0, L), np.uint8)
    pos = np.concatenate(poss) if poss else np.zeros(0, np.int64)
    return Part(X, pos, order.reset_index(drop=True))


LEVELS = ("flow", "packet")
DEFAULT_MAX_FLOWS = 50_000
# what training reads of each flow table (the rest stays on disk: docs/scale.md); uid only
# with --exclude-uids; labels and file names as categoricals (a few values, repeated)
TRAIN_COLUMNS = ["row", "ts", "n_selected", "label", "source_file"]
TRAIN_CATEGORICAL = ["label", "source_file"]


def split_normal(normal: pd.DataFrame, seed: int = 42, split: str = "auto",
                 log: Callable[[str], None] = print, min_calib: int = 0) -> np.ndarray:
    """'train' / 'val' / 'test' (= calib) per normal flow: by capture file when there are
    at least 3 files (split="auto"), else by time within each capture (70/15/15 by start
    time, calib the latest block; the log says so). A file split that leaves fewer than
    `min_calib` calibration flows (a small calib file: too few to resolve the target FPR) is
    replaced by the time split when that one has enough (split="auto"); otherwise the log
    warns, so a coarse threshold is never silent."""
    codes, names = pd.factorize(normal["source_file"], sort=True)
    return PART_NAMES[split_codes(codes, normal["ts"].to_numpy(dtype=np.float64),
                                  [str(n) for n in names], seed, split, log, min_calib)]


def normal_parts(extract_dirs: Sequence[str | os.PathLike], max_flows: int | None = (
                     DEFAULT_MAX_FLOWS), seed: int = 42, log: Callable[[str], None] = print,
                 max_flows_per_file: int | None = None, split: str = "auto",
                 min_calib: int = 0, exclude_uids: set[str] | None = None,
                 columns: list[str] | None = None, categorical: list[str] | None = None,
                 ) -> tuple[dict[str, pd.DataFrame], list[FlowStore]]:
    """The flow tables of train / val / calib (normal flows with a sample) and anomalous
    (all labelled anomalous flows), without packet rows. Columns _store (extraction index)
    and row (row in that store) locate each flow. Benchmarks use this to fit other
    detectors on exactly the flows `semiflow train` uses. `min_calib`: see split_normal.
    `exclude_uids`: flows an analyst confirmed (or anyone distrusts) never count as normal.
    `columns`: the flow-table columns to read (None: all; TRAIN_COLUMNS is what training
    needs, plus uid to exclude uids), `categorical` those to read as categoricals."""
    if columns is not None and exclude_uids and "uid" not in columns:
        columns = [*columns, "uid"]
    stores = open_stores(extract_dirs, columns, categorical)
    flows = pd.concat([s.flows.assign(_store=i) for i, s in enumerate(stores)],
                      ignore_index=True)
    if columns is not None:     # training: the concatenation holds them now (one copy, not two)
        for s in stores:
            s.flows = s.flows.iloc[:0]
    scored = flows["n_selected"].to_numpy() > 0
    label = flows["label"].to_numpy()
    anomalous = flows[label == "anomalous"].reset_index(drop=True)
    normal = flows[(label == "normal") & scored].reset_index(drop=True)
    del flows, label        # (at 6M flows each copy of the table is GBs: docs/scale.md)
    if exclude_uids:
        out = normal["uid"].isin(exclude_uids).to_numpy()
        log(f"excluded {int(out.sum())} normal flows whose uid is in the exclusion list "
            f"({len(exclude_uids)} uids)")
        normal = normal[~out].reset_index(drop=True)
    if len(normal) == 0:
        raise ValueError("no normal flows with a sample: extract with --manifest so files are "
                         "labelled, and train on captures of normal traffic")
    n_all = len(normal)
    if max_flows_per_file:
        normal = normal[cap_flows_per_file(normal, max_flows_per_file, seed)]
    keep = budget_flows(normal.reset_index(drop=True), max_flows)
    if not keep.all():
        normal = normal[keep]
    normal = normal.reset_index(drop=True)
    if len(normal) < n_all:
        log(f"using {len(normal)} of {n_all} normal flows (max {max_flows} in all"
            + (f", {max_flows_per_file} per capture file" if max_flows_per_file else "")
            + "; evenly spaced in time)")
    part = split_normal(normal, seed, split, log, min_calib)
    parts = {"train": normal[part == "train"], "val": normal[part == "val"],
             "calib": normal[part == "test"]}
    if len(parts["calib"]) == 0:
        parts["calib"] = parts["val"]
        log("warning: no capture file left for threshold calibration: using the val files")
    parts["anomalous"] = anomalous
    return parts, stores


def flow_parts(extract_dirs: Sequence[str | os.PathLike], max_flows: int | None = (
                   DEFAULT_MAX_FLOWS), seed: int = 42, log: Callable[[str], None] = print,
               max_flows_per_file: int | None = None, split: str = "auto", min_calib: int = 0,
               exclude_uids: set[str] | None = None
               ) -> tuple[dict[str, pd.DataFrame], list[FlowStore]]:
    """What the flow level trains on: normal_parts(columns=TRAIN_COLUMNS)'s parts, read
    and split at about 20 bytes a flow (training/flow_table.py), so RAM is bounded by the
    shards, not the flow table; one entry point, so benchmarks/shard_memory.py measures what
    `semiflow train` runs."""
    stores = open_stores(extract_dirs, columns=[])
    return compact_parts(stores, max_flows, seed, log, max_flows_per_file, split, min_calib,
                         exclude_uids), stores


def load_parts(extract_dirs: Sequence[str | os.PathLike], max_flows_per_file: int | None = None,
               seed: int = 42, log: Callable[[str], None] = print,
               max_flows: int | None = DEFAULT_MAX_FLOWS, split: str = "auto",
               min_calib: int = 0, exclude_uids: set[str] | None = None) -> tuple[dict, list]:
    """normal_parts with each part's packet rows (Part)."""
    parts, stores = normal_parts(extract_dirs, max_flows, seed, log, max_flows_per_file, split,
                                 min_calib, exclude_uids)
    return {k: _rows(stores, v) for k, v in parts.items()}, stores


def _quiet(msg: str) -> None:
    """Ranks other than 0 of a DDP job say nothing (rank 0 speaks for the job)."""


def _ts(flows: pd.DataFrame, how: str) -> float | None:
    return float(getattr(flows["ts"], how)()) if len(flows) else None


def _time_range(flows: pd.DataFrame) -> str:
    if not len(flows):
        return ""
    return f", start times {_ts(flows, 'min'):.3f} .. {_ts(flows, 'max'):.3f}"


def _file_hashes(files: Sequence[str]) -> list[dict]:
    out = []
    for f in sorted(set(files)):
        digest = sha256_file(f) if os.path.isfile(f) else None
        out.append({"file": f, "sha256": digest})
    return out


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("semiflow", "torch", "numpy", "safetensors", "pandas"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _provenance(parts: dict[str, pd.DataFrame], extract_dirs, command: str | None, seed: int,
                max_flows_per_file: int | None, max_flows: int | None, split: str) -> dict:
    """What the artifact records about its data, for either level."""
    files = {name: sorted(parts[name]["source_file"].unique().tolist())
             for name in ("train", "val", "calib")}
    return {
        "command": command or " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "extract_dirs": [str(d) for d in extract_dirs],
        "data_files": {name: _file_hashes(f) for name, f in files.items()},
        "anomalous_files_for_report_only": sorted(
            parts["anomalous"]["source_file"].unique().tolist()),
        "seed": seed, "max_flows_per_file": max_flows_per_file,
        "max_flows": max_flows, "split": split,
        "parts": {name: {"flows": int(len(parts[name])),
                         "ts_min": _ts(parts[name], "min"),
                         "ts_max": _ts(parts[name], "max")}
                  for name in ("train", "val", "calib")},
        "versions": _versions(), "git_commit": _git_commit(),
    }


def flow_scores(det: SemiFlowDetector, part: Part, how: str) -> np.ndarray:
    """Per-flow scores (NaN for flows without a sample) of one part."""
    if len(part.X) == 0:
        return np.full(len(part.flows), np.nan)
    return aggregate_flow_scores(det.anomaly_score(part.X), part.flow_pos, len(part.flows), how)


def resolve_amp(amp: str, level: str) -> str:
    """"auto": fp32 for the flow level, bf16 for the packet level. The flow level's small
    convolutions ran faster in fp32 than in bf16 at every batch measured on an H200 (batch
    64 as CUDA graphs 444k vs 367k packet rows/s, 1024 617k vs 441k, 8192 1.22M vs 0.68M;
    docs/scale.md) and trained as well."""
    if amp != "auto":
        return amp
    return "off" if level == "flow" else "bf16"


def train(extract_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
          config: str | SemiFlowConfig = "small", epochs: int | None = None,
          device: str | None = None, seed: int = 42, target_fpr: float = DEFAULT_TARGET_FPR,
          resume: bool = False, max_flows_per_file: int | None = None, aggregate: str = "max",
          amp: str = "auto", progress: bool = False, log: Callable[[str], None] = print,
          command: str | None = None, score: str = "classifier",
          max_flows: int | None = DEFAULT_MAX_FLOWS, split: str = "auto",
          level: str = "flow", exclude_uids: set[str] | None = None,
          batch_size: int | None = None, compile: bool = False, shard_flows: int | None = None,
          ddp: bool = False, flow_config: str = "default", cuda_graphs: bool = True,
          lr: float | None = None) -> dict:
    """Fit SemiFlow on the normal flows, calibrate the threshold, write the artifact.

    level "flow" (default): flow-level SemiFlow on whole flow samples (training/train_flow.py;
    config, amp, score, aggregate and resume apply to the packet level only); "packet": the
    method's packet-level model scored per packet and aggregated per flow.
    batch_size, lr, compile, shard_flows and ddp (under torchrun) apply to the flow level.
    amp "auto": see resolve_amp."""
    started = time.perf_counter()
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if level == "packet" and (ddp or shard_flows or compile or batch_size or lr):
        raise ValueError("--ddp, --shard-flows, --compile, --batch-size and --lr apply to the "
                         "flow level (the default) only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    min_calib = math.ceil(1.0 / target_fpr) if 0 < target_fpr < 1 else 0
    if level == "flow":
        with DistContext.from_env(device) if ddp else DistContext() as dist:
            if dist.rank != 0:
                log = _quiet
            parts, stores = flow_parts(extract_dirs, max_flows, seed, log, max_flows_per_file,
                                       split, min_calib, exclude_uids)
            log(f"labelled anomalous flows: {len(parts['anomalous'])} -- used ONLY for the "
                "validation report, never for fitting or early stopping")
            prov = _provenance(parts, extract_dirs, command, seed, max_flows_per_file,
                               max_flows, split)
            metrics = train_flow(parts, stores, out, epochs=epochs, device=device, seed=seed,
                                 target_fpr=target_fpr, log=log, provenance=prov,
                                 options=FitOptions(batch_size, resolve_amp(amp, "flow"),
                                                    compile, cuda_graphs, lr=lr),
                                 shard_flows=shard_flows, dist=dist, flow_config=flow_config)
        return {"out": str(out), "seconds": round(time.perf_counter() - started, 2),
                **{k: v for k, v in metrics.items() if k != "history"}}
    parts, stores = load_parts(extract_dirs, max_flows_per_file, seed, log, max_flows, split,
                               min_calib, exclude_uids)
    where = ["_store", "row"]
    calib_is_val = parts["calib"].flows[where].equals(parts["val"].flows[where])
    spec = stores[0].spec
    cfg = SemiFlowConfig.named(config) if isinstance(config, str) else config
    if cfg.length != spec.l:
        cfg = SemiFlowConfig.from_dict({**cfg.to_dict(), "length": spec.l})
    for name in ("train", "val", "calib"):
        p = parts[name]
        log(f"{name:5s}: {len(p.flows)} normal flows, {len(p.X)} packets, "
            f"{p.flows['source_file'].nunique()} capture files" + _time_range(p.flows))
    n_anom = len(parts["anomalous"].flows)
    log(f"labelled anomalous flows: {n_anom} -- used ONLY for the validation report, "
        "never for fitting or early stopping")
    if len(parts["train"].X) < 2:
        raise ValueError("fewer than 2 normal training packets: nothing to fit")
    amp = resolve_amp(amp, "packet")
    det = SemiFlowDetector(cfg, epochs=epochs, device=device, amp=amp, random_state=seed,
                           checkpoint=out / CHECKPOINT, resume=resume, progress=progress,
                           log=log, score=score)
    fit_start = time.perf_counter()
    det.fit(parts["train"].X, parts["val"].X if len(parts["val"].X) else None)
    fit_seconds = time.perf_counter() - fit_start

    val_s = flow_scores(det, parts["val"], aggregate)
    calib_s = flow_scores(det, parts["calib"], aggregate)
    threshold = calibrate_threshold(calib_s, target_fpr, aggregate)
    log(f"threshold {threshold.value:.6g} at target FPR {target_fpr:g} "
        f"(achieved {threshold.achieved_fpr:.4g} on {threshold.n_normal} held-out normal flows"
        + ("" if threshold.resolved else "; too few flows to resolve this FPR") + ")")
    metrics = {"fit_seconds": round(fit_seconds, 2), "train_packets": int(len(parts["train"].X)),
               "epochs_run": len(det.history_),
               "train_samples_per_second": round(len(parts["train"].X) * len(det.history_)
                                                 / max(fit_seconds, 1e-9), 1),
               "history": det.history_, "threshold": threshold.to_dict(),
               "val_at_threshold": rates_at(threshold.value, val_s)}
    if n_anom:
        anom_s = flow_scores(det, parts["anomalous"], aggregate)
        held = val_s if calib_is_val else np.concatenate([val_s, calib_s])
        held = held[~np.isnan(held)]
        ok = ~np.isnan(anom_s)
        y = np.r_[np.zeros(len(held)), np.ones(int(ok.sum()))]
        report = {"n_anomalous_flows": n_anom, "n_anomalous_unscored": int((~ok).sum()),
                  "auroc_flows": _auroc(y, np.r_[held, anom_s[ok]]),
                  **rates_at(threshold.value, held, anom_s)}
        metrics["anomaly_report"] = report
        log(f"report only (labelled anomalies, not used to fit): flow AUROC "
            f"{report['auroc_flows']:.4f} held-out normal vs anomalous; at the threshold "
            f"TPR {report['tpr']:.4f}, FPR {report['fpr']:.4f}; "
            f"{report['n_anomalous_unscored']} anomalous flows unscored (no payload)")
    provenance = {
        **_provenance({k: v.flows for k, v in parts.items()}, extract_dirs, command, seed,
                      max_flows_per_file, max_flows, split),
        "level": "packet", "score": score,
        "device": str(det.device_),
        "amp": amp if det.device_.type == "cuda" else "off",
        "metrics": metrics,
    }
    flow_nll = score == "flow-nll"
    save_artifact(out, det.encoder_, det.classifier_, det.config_, spec, threshold, aggregate,
                  provenance, score="flow-nll" if flow_nll else "log-odds",
                  flow=det.flow_ if flow_nll else None)
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        ckpt.unlink()   # training finished: the artifact is the result
    return {"out": str(out), "seconds": round(time.perf_counter() - started, 2),
            **{k: v for k, v in metrics.items() if k != "history"}}
