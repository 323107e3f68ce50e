"""Kitsune on captures: train on benign capture(s), score a test capture, per-flow scores.

Kitsune scores every PACKET of a capture in order (detector.baselines.kitsune), so it cannot run
on the flow store's selected payload packets; this is its entry point instead of `semiflow
evaluate`.
Packets are mapped onto the test capture's flow table (flows.parquet of `semiflow extract`) by
5-tuple and time (plugin.packet_meta), and a flow's score is the max of its packets' scores
(the mean is recorded too). Every flow with a packet is scored, payload or not.

    python -m semiflow.training.kitsune_eval --train benign.pcap --test mixed.pcap \
        [--test-flows mixed.flows] [--manifest corpus/manifest.csv] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from semiflow.detector.aggregate import aggregate_flow_scores
from semiflow.detector.baselines.kitsune import Kitsune
from semiflow.plugin.packet_meta import map_packets_to_flows, read_packet_meta


def kitsune_flow_scores(train_captures: Sequence[str | os.PathLike],
                        test_capture: str | os.PathLike, test_flows: pd.DataFrame,
                        train_flows: Sequence[pd.DataFrame | None] | None = None,
                        params: dict | None = None,
                        log: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """(per-flow frame aligned with test_flows: uid, score_max, score_mean, n_packets; run info).

    Kitsune trains on every packet of the train captures in order (one fresh AfterImage per
    capture); where train_flows[i] is given with a `label` column, packets of its flows
    labelled "anomalous" are left out of training. Flows with no packet get NaN scores."""
    det = Kitsune(**(params or {}))
    t0 = time.perf_counter()
    metas = [read_packet_meta(c) for c in train_captures]
    keep = None
    if train_flows is not None:
        keep = []
        for m, fl in zip(metas, train_flows):
            k = np.ones(len(m), bool)
            if fl is not None and "label" in fl:
                idx = map_packets_to_flows(m, fl)
                bad = (fl["label"].astype(str) == "anomalous").to_numpy()
                k &= ~((idx >= 0) & bad[np.maximum(idx, 0)])
            keep.append(k)
    n_train = sum(len(m) for m in metas) if keep is None else int(sum(k.sum() for k in keep))
    t1 = time.perf_counter()
    det.fit_packets(metas, keep)
    t2 = time.perf_counter()
    meta = read_packet_meta(test_capture)
    s = det.score_packets(meta)
    t3 = time.perf_counter()
    idx = map_packets_to_flows(meta, test_flows)
    hit = idx >= 0
    out = pd.DataFrame({
        "uid": test_flows["uid"].to_numpy() if "uid" in test_flows else np.arange(len(idx)),
        "score_max": aggregate_flow_scores(s[hit], idx[hit], len(test_flows), "max"),
        "score_mean": aggregate_flow_scores(s[hit], idx[hit], len(test_flows), "mean"),
        "n_packets": np.bincount(idx[hit], minlength=len(test_flows)),
    })
    info = {
        "train_packets": n_train, "test_packets": len(meta),
        "test_packets_in_flows": int(hit.sum()), "groups": len(det.kitnet_.groups_),
        "features": int(det.kitnet_.nv_[:-1].sum()),
        "read_train_s": round(t1 - t0, 3), "fit_s": round(t2 - t1, 3),
        "score_s": round(t3 - t2, 3),
        "fit_packets_per_s": round(n_train / max(t2 - t1, 1e-9)),
        "score_packets_per_s": round(len(meta) / max(t3 - t2, 1e-9)),
    }
    if log:
        log(f"kitsune: trained on {n_train} packets in {info['fit_s']} s, scored "
            f"{len(meta)} packets in {info['score_s']} s; {info['groups']} autoencoders")
    return out, info


def flow_table(capture: str | os.PathLike, flows_dir: str | os.PathLike | None = None,
               manifest: str | os.PathLike | None = None) -> pd.DataFrame:
    """The flow table of an extraction directory, or of a fresh extraction of the capture."""
    from semiflow.plugin.flowstore import FlowStore
    if flows_dir:
        return FlowStore.open(flows_dir).flows
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.extract import extract
    from semiflow.training.labels import Manifest
    with tempfile.TemporaryDirectory(prefix="semiflow-kitsune-") as d:
        extract([str(capture)], d, FlowSampleSpec(k=1, l=128),
                manifest=Manifest(manifest) if manifest else None)
        return FlowStore.open(d, mmap=False).flows


def labelled_metrics(flows: pd.DataFrame, scores: pd.DataFrame) -> dict:
    """flow_metrics (AUROC, AUPRC, TPR@FPR) per score column over labelled, scored flows."""
    from semiflow.training.evaluate import flow_metrics
    if "label" not in flows:
        return {}
    lab = flows["label"].astype(str).to_numpy()
    use = np.isin(lab, ["normal", "anomalous"])
    y = (lab == "anomalous").astype(int)
    out: dict = {"flows_labelled": int(use.sum())}
    for col in ("score_max", "score_mean"):
        s = scores[col].to_numpy()
        ok = use & np.isfinite(s)
        out["unscored"] = int((use & ~ok).sum())
        out[col] = flow_metrics(y[ok], s[ok])
    return out


def _finite(x):
    """NaN -> None, so the JSON is standard."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m semiflow.training.kitsune_eval",
                                description=__doc__.split("\n")[0])
    p.add_argument("--train", action="append", required=True, help="benign capture (repeat)")
    p.add_argument("--test", required=True, help="capture to score")
    p.add_argument("--test-flows", help="its extraction directory (else extracted here)")
    p.add_argument("--manifest", help="manifest.csv to label a fresh extraction")
    p.add_argument("--fm-grace", type=int, default=5000)
    p.add_argument("--max-ae", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write run info and metrics here")
    p.add_argument("--csv", help="write per-flow scores here")
    a = p.parse_args(argv)
    flows = flow_table(a.test, a.test_flows, a.manifest)
    params = {"fm_grace": a.fm_grace, "max_ae": a.max_ae, "epochs": a.epochs, "seed": a.seed}
    scores, info = kitsune_flow_scores(a.train, a.test, flows, params=params,
                                       log=lambda m: print(m, file=sys.stderr))
    res = {"train": a.train, "test": a.test, "params": params, **info,
           "metrics": labelled_metrics(flows, scores)}
    if a.csv:
        scores.to_csv(a.csv, index=False)
    text = json.dumps(_finite(res), indent=2, default=float)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
