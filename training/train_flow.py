"""`semiflow train` for flow-level SemiFlow (the default since the lab measurements,
docs/model.md "Flow-level SemiFlow"): whole flow samples uint8[n, K, L] instead of packet rows.

Same data handling as the packet-level path (training/train.py: normal flows only, split by
capture file or by time, a total flow budget), same artifact directory and provenance; the
threshold is calibrated on the calib flows' flow scores.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.artifact import save_flow_artifact
from semiflow.detector.lifecycle.drift import DriftReference
from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import FlowNetConfig
from semiflow.detector.models.semiflow_inference import auroc as _auroc
from semiflow.detector.models.train_loop import DistContext, FitOptions
from semiflow.detector.threshold import calibrate_threshold, rates_at
from semiflow.plugin.flowstore import FlowStore

from .dataset import flow_matrix
from .flow_shards import ShardedFlows

VAL_FLOWS_STREAMED = 65_536   # early stopping on at most this many val flows when streaming


def _matrix(stores: list[FlowStore], part: pd.DataFrame, cfg: FlowNetConfig) -> np.ndarray:
    return flow_matrix(stores, part["_store"].to_numpy(), part["row"].to_numpy(), cfg.k,
                       cfg.length)


def _scores(det: FlowSemiFlowDetector, stores: list[FlowStore], part: pd.DataFrame,
            cfg: FlowNetConfig, chunk: int | None) -> np.ndarray:
    """Scores of a part's flows, read `chunk` flows at a time (all at once when None)."""
    if len(part) == 0:
        return np.zeros(0)
    step = chunk or len(part)
    return np.concatenate([det.anomaly_score(_matrix(stores, part.iloc[i:i + step], cfg))
                           for i in range(0, len(part), step)])


def streamed_inputs(parts: dict[str, pd.DataFrame], stores: list[FlowStore],
                    cfg: FlowNetConfig, shard_flows: int, seed: int
                    ) -> tuple[ShardedFlows, dict[str, np.ndarray]]:
    """The training flows as shards, and the val samples early stopping reads (at most
    VAL_FLOWS_STREAMED, seeded): the data side of a streamed fit, which
    benchmarks/shard_memory.py --data-path-only measures without the model."""
    train_x = ShardedFlows(stores, parts["train"]["_store"].to_numpy(),
                           parts["train"]["row"].to_numpy(), cfg.k, cfg.length, shard_flows)
    val_part = parts["val"]
    if len(val_part) > VAL_FLOWS_STREAMED:
        val_part = val_part.sample(VAL_FLOWS_STREAMED, random_state=seed).sort_index()
    return train_x, {"val": _matrix(stores, val_part, cfg)}


def train_flow(parts: dict[str, pd.DataFrame], stores: list[FlowStore], out: Path, *,
               epochs: int | None, device: str | None, seed: int, target_fpr: float,
               log: Callable[[str], None], provenance: dict,
               options: FitOptions | None = None, shard_flows: int | None = None,
               dist: DistContext | None = None, flow_config: str = "default") -> dict:
    """Fit, calibrate and save; returns the metrics (also stored in the provenance).
    shard_flows: stream the training flows from the stores in shards of this many flows
    (RAM bounded by the shard, not the data); dist: a rank of a DDP job (rank 0 writes)."""
    spec = stores[0].spec
    opts, dist = options or FitOptions(), dist or DistContext()
    if spec.selection != "all":
        log(f"note: extraction selected {spec.selection!r} packets; flow-level SemiFlow was "
            "measured with selection 'all' (extract with --select all to score every flow)")
    base = FlowNetConfig.named(flow_config)
    cfg = FlowNetConfig.named(flow_config, k=spec.k, length=min(base.length, spec.l))
    if shard_flows:
        train_x, X = streamed_inputs(parts, stores, cfg, shard_flows, seed)
        log(f"streaming the training flows in shards of {shard_flows} "
            f"({train_x.shard_bytes / 2**20:.0f} MiB each); early stopping on {len(X['val'])} "
            "val flows")
    else:
        X = {name: _matrix(stores, parts[name], cfg)
             for name in ("train", "val", "calib", "anomalous")}
        train_x = X["train"]
    for name in ("train", "val", "calib"):
        log(f"{name:5s}: {len(parts[name])} normal flows (flow-level samples {cfg.k} x "
            f"{cfg.length} bytes)")
    if len(parts["train"]) < 2:
        raise ValueError("fewer than 2 normal training flows: nothing to fit")
    det = FlowSemiFlowDetector(cfg, epochs=epochs, device=device, random_state=seed, log=log)
    t0 = time.perf_counter()
    det.fit(train_x, X["val"] if len(X["val"]) else None, options=opts, dist=dist)
    fit_seconds = time.perf_counter() - t0
    flows_trained = sum(h["flows"] for h in det.history_)
    speed = {"fit_seconds": round(fit_seconds, 2), "train_flows": int(len(parts["train"])),
             "epochs_run": len(det.history_),
             "train_samples_per_second": round(flows_trained / max(fit_seconds, 1e-9), 1),
             "train_packet_rows_per_second": round(flows_trained * cfg.k
                                                   / max(fit_seconds, 1e-9), 1),
             "batch_size": opts.batch_size or cfg.batch_size, "amp": opts.amp,
             "compile": opts.compile, "cuda_graphs": opts.cuda_graphs,
             "norm_group": opts.norm_group,
             "world_size": dist.world,
             "shard_flows": shard_flows}
    if dist.rank != 0:
        return speed                       # rank 0 calibrates and writes the artifact

    def scores(name: str) -> np.ndarray:
        """A part's scores: from the samples already in memory, else read in shards."""
        if name in X and len(X[name]) == len(parts[name]):
            return det.anomaly_score(X[name]) if len(X[name]) else np.zeros(0)
        return _scores(det, stores, parts[name], cfg, shard_flows)

    val_s = scores("val")
    calib_s = scores("calib") if len(parts["calib"]) else val_s
    threshold = calibrate_threshold(calib_s, target_fpr, "flow")
    log(f"threshold {threshold.value:.6g} at target FPR {target_fpr:g} "
        f"(achieved {threshold.achieved_fpr:.4g} on {threshold.n_normal} held-out normal flows"
        + ("" if threshold.resolved else "; too few flows to resolve this FPR") + ")")
    metrics = {**speed, "history": det.history_, "threshold": threshold.to_dict(),
               "val_at_threshold": rates_at(threshold.value, val_s)}
    if len(parts["anomalous"]):
        anom_s = scores("anomalous")
        held = np.concatenate([val_s, calib_s])
        y = np.r_[np.zeros(len(held)), np.ones(len(anom_s))]
        report = {"n_anomalous_flows": int(len(anom_s)), "n_anomalous_unscored": 0,
                  "auroc_flows": _auroc(y, np.r_[held, anom_s]),
                  **rates_at(threshold.value, held, anom_s)}
        metrics["anomaly_report"] = report
        log(f"report only (labelled anomalies, not used to fit): flow AUROC "
            f"{report['auroc_flows']:.4f} held-out normal vs anomalous; at the threshold "
            f"TPR {report['tpr']:.4f}, FPR {report['fpr']:.4f}")
    provenance = {**provenance, "level": "flow", "device": str(det.device_),
                  "metrics": metrics, "command": provenance.get("command") or " ".join(sys.argv)}
    save_flow_artifact(out, det, spec, threshold, provenance)
    held = [n for n in ("val", "calib") if n in X and len(X[n]) == len(parts[n])]
    if held and sum(len(X[n]) for n in held) >= 10:
        ref = DriftReference.build(   # (streamed: the val flows only, when all are in memory)
            np.concatenate([X[n] for n in held]),
            np.concatenate([parts[n]["n_selected"].to_numpy() for n in held]),
            np.concatenate([val_s if n == "val" else calib_s for n in held]))
        ref.save(out)
        log(f"drift reference: {ref.flows} held-out normal flows, services {ref.services}")
    return metrics
