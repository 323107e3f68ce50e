"""Packet/flow model + conn-log model on the same lab test run: which families each catches,
and the combined verdict (flagged by either) at the same total false-positive budget.

    python benchmarks/lab_combined.py --model semiflow/data/model \
        --train-flows lab-out/detection-flow/train-benign-all-k8-l256.flows \
        --test-flows lab-out/detection-flow/test-mixed-all-k8-l256.flows \
        --test-run lab-out/test-mixed --connlog lab-out/connlog/connlog_verdicts.csv

SemiFlow's thresholds come from the benign run's calibration flows (the split `semiflow train`
makes), one at the whole budget and one at half of it; the conn-log detectors' verdicts come
from benchmarks/lab_connlog.py: `D_flag` at its own calibrated 1% of dyad windows, and
`D_flag_flowhalf` at half of the flow budget counted in benign FLOWS of the benign run's
held-out windows (a flagged window flags all its flows, so a window-level rate says little
about the flows a SOC sees), and `D_flag_own`: a flow flagged by its own surprise (not its
window's maximum), at half the flow budget of the held-out benign flows. Combined = SemiFlow
at half the budget OR the conn-log detector at the other half, both thresholds from the benign
run alone: the budget the combination is entitled to, whose realised rate on the test run's
benign flows is in the first row.
Conn-log rows are joined to flows on the 5-tuple and start time, as `semiflow extract
--conn-labels` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.scoring import load_scorer
from semiflow.detector.threshold import calibrate_threshold
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.training.evaluate_lab import score_store_rows
from semiflow.training.train import normal_parts

# lab_connlog.py's verdict columns: window at 1% of windows, window at half the flow budget
# counted in benign flows, a flow's own score at half the flow budget
FLAGS = ("flag", "flag_flowhalf", "flag_own")


def connlog_flags(csv: Path, labels: Path, flows: pd.DataFrame, det: str) -> pd.DataFrame:
    """The conn-log detector's per-flow flags, aligned with `flows` (0 where unmatched)."""
    v = pd.read_csv(csv)
    lab = read_zeek_log(labels)[["uid", "id.orig_p", "id.resp_p", "proto"]]
    v = v.merge(lab, on="uid", how="left").rename(
        columns={"id.orig_p": "orig_p", "id.resp_p": "resp_p"})
    keys = ["orig_h", "orig_p", "resp_h", "resp_p", "proto"]
    f = flows[["ts", *keys]].copy()
    f["_i"] = np.arange(len(f))
    for c in ("orig_p", "resp_p"):
        f[c] = f[c].astype("int64")
        v[c] = v[c].astype("int64")
    cols = [f"{det}_{c}" for c in FLAGS]
    m = pd.merge_asof(f.sort_values("ts"), v[["ts", *keys, *cols]].sort_values("ts"),
                      on="ts", by=keys, tolerance=1.0, direction="nearest")
    m = m.sort_values("_i")
    out = pd.DataFrame({c: m[f"{det}_{c}"].fillna(0).to_numpy().astype(bool) for c in FLAGS})
    out["matched"] = m[cols[0]].notna().to_numpy()
    return out


def table(flows: pd.DataFrame, verdicts: dict[str, np.ndarray]) -> pd.DataFrame:
    benign = (flows["label"] == "normal").to_numpy()
    rows = {f"benign ({benign.sum()}; FPR)": {k: v[benign].mean() for k, v in verdicts.items()}}
    fam = flows["family"].to_numpy()
    for name in sorted(set(fam[~benign])):
        sel = ~benign & (fam == name)
        rows[f"{name} ({sel.sum()})"] = {k: v[sel].mean() for k, v in verdicts.items()}
    att = ~benign
    rows[f"all attack flows ({att.sum()})"] = {k: v[att].mean() for k, v in verdicts.items()}
    return pd.DataFrame(rows).T


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("semiflow/data/model"))
    ap.add_argument("--train-flows", type=Path, required=True)
    ap.add_argument("--test-flows", type=Path, required=True)
    ap.add_argument("--test-run", type=Path, required=True)
    ap.add_argument("--connlog", type=Path, required=True)
    ap.add_argument("--connlog-detector", nargs="+", default=["lm_port_5m", "lm_protobytes_5m"],
                    help="conn-log detectors (lab_connlog.py names) each combined with SemiFlow")
    ap.add_argument("--budget", type=float, default=1e-3,
                    help="total false-positive budget of SemiFlow alone (default 1e-3)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    scorer = load_scorer(a.model, device="cpu")
    parts, stores = normal_parts([a.train_flows], log=lambda m: None)
    calib = score_store_rows(scorer, stores[0], parts["calib"]["row"].to_numpy())
    full = calibrate_threshold(calib, a.budget, "flow").value
    half = calibrate_threshold(calib, a.budget / 2, "flow").value
    test = FlowStore.open(a.test_flows)
    flows = test.flows.reset_index(drop=True)
    keep = flows["label"].isin(["normal", "anomalous"]).to_numpy()
    flows = flows[keep].reset_index(drop=True)
    s = score_store_rows(scorer, test, np.flatnonzero(keep))
    verdicts = {"semiflow@budget": s > full, "semiflow@half": s > half}
    matched = []
    for det in a.connlog_detector:
        cl = connlog_flags(a.connlog, a.test_run / "labels.conn.log", flows, det)
        verdicts[f"{det} windows@1%"] = cl["flag"].to_numpy()
        verdicts[f"{det} windows@half"] = cl["flag_flowhalf"].to_numpy()
        verdicts[f"{det} own@half"] = cl["flag_own"].to_numpy()
        verdicts[f"semiflow or {det} windows"] = (s > half) | cl["flag_flowhalf"].to_numpy()
        verdicts[f"semiflow or {det} own"] = (s > half) | cl["flag_own"].to_numpy()
        matched.append(int(cl["matched"].sum()))
    t = table(flows, verdicts)
    print(f"SemiFlow thresholds from {len(calib)} benign calibration flows: {full:.4g} "
          f"(FPR {a.budget:g}), {half:.4g} ({a.budget / 2:g}); conn-log rows matched to "
          f"{min(matched)} of {len(flows)} flows")
    print("| | " + " | ".join(t.columns) + " |")
    print("|---|" + "---|" * len(t.columns))
    for name, row in t.iterrows():
        fmt = "{:.4f}" if name.startswith("benign") else "{:.3f}"  # an FPR needs the digits
        print(f"| {name} | " + " | ".join(fmt.format(v) for v in row) + " |")
    if a.json:
        a.json.write_text(json.dumps({"table": t.to_dict(), "threshold_full": full,
                                      "threshold_half": half}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
