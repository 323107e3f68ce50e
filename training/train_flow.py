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
from semiflow.detector.drift import DriftReference
from semiflow.detector.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.semiflow_flownet import FlowNetConfig
from semiflow.detector.semiflow_inference import auroc as _auroc
from semiflow.detector.threshold import calibrate_threshold, rates_at
from semiflow.plugin.flowstore import FlowStore

from .dataset import flow_matrix


def train_flow(parts: dict[str, pd.DataFrame], stores: list[FlowStore], out: Path, *,
               epochs: int | None, device: str | None, seed: int, target_fpr: float,
               log: Callable[[str], None], provenance: dict) -> dict:
    """Fit, calibrate and save; returns the metrics (also stored in the provenance)."""
    spec = stores[0].spec
    if spec.selection != "all":
        log(f"note: extraction selected {spec.selection!r} packets; flow-level SemiFlow was "
            "measured with selection 'all' (extract with --select all to score every flow)")
    cfg = FlowNetConfig(k=spec.k, length=min(FlowNetConfig().length, spec.l))
    X = {name: flow_matrix(stores, parts[name]["_store"].to_numpy(),
                           parts[name]["row"].to_numpy(), cfg.k, cfg.length)
         for name in ("train", "val", "calib", "anomalous")}
    for name in ("train", "val", "calib"):
        log(f"{name:5s}: {len(X[name])} normal flows (flow-level samples {cfg.k} x "
            f"{cfg.length} bytes)")
    if len(X["train"]) < 2:
        raise ValueError("fewer than 2 normal training flows: nothing to fit")
    det = FlowSemiFlowDetector(cfg, epochs=epochs, device=device, random_state=seed, log=log)
    t0 = time.perf_counter()
    det.fit(X["train"], X["val"] if len(X["val"]) else None)
    fit_seconds = time.perf_counter() - t0
    val_s = det.anomaly_score(X["val"]) if len(X["val"]) else np.zeros(0)
    calib_s = det.anomaly_score(X["calib"]) if len(X["calib"]) else val_s
    threshold = calibrate_threshold(calib_s, target_fpr, "flow")
    log(f"threshold {threshold.value:.6g} at target FPR {target_fpr:g} "
        f"(achieved {threshold.achieved_fpr:.4g} on {threshold.n_normal} held-out normal flows"
        + ("" if threshold.resolved else "; too few flows to resolve this FPR") + ")")
    metrics = {"fit_seconds": round(fit_seconds, 2), "train_flows": int(len(X["train"])),
               "epochs_run": len(det.history_),
               "train_samples_per_second": round(len(X["train"]) * len(det.history_)
                                                 / max(fit_seconds, 1e-9), 1),
               "history": det.history_, "threshold": threshold.to_dict(),
               "val_at_threshold": rates_at(threshold.value, val_s)}
    if len(X["anomalous"]):
        anom_s = det.anomaly_score(X["anomalous"])
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
    held = [n for n in ("val", "calib") if len(X[n])]
    if held and sum(len(X[n]) for n in held) >= 10:
        ref = DriftReference.build(
            np.concatenate([X[n] for n in held]),
            np.concatenate([parts[n]["n_selected"].to_numpy() for n in held]),
            np.concatenate([val_s if n == "val" else calib_s for n in held]))
        ref.save(out)
        log(f"drift reference: {ref.flows} held-out normal flows, services {ref.services}")
    return metrics
