"""`python -m semiflow.demo`: score the shipped lab sample with the bundled model and show
what was detected, per attack family, against the sample's ground-truth labels.

Works offline from a fresh install: the capture, its labelled conn.log and the model live in
the package (semiflow/data/). Scoring goes through the product path (`semiflow score`:
Zeek-format semiflow.log and notice.log in ./demo-out/); verdicts are then joined to the
labels by uid (a labelled extraction of the same capture gives the same uids). The threshold
is the model's calibrated one: nothing is tuned on the demo capture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.cli_score import default_model_dir, score_captures


def lab_sample() -> tuple[Path, Path]:
    """(capture, labelled conn.log) of the shipped lab sample."""
    root = Path(str(resources.files("semiflow") / "data" / "lab-sample"))
    return root / "capture.pcap.gz", root / "labels.conn.log.gz"


def labelled_flows(capture: Path, labels: Path, spec, tmp: Path):
    """The capture's flows (uid, label, family) and its FlowStore, cut with the model's spec."""
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels

    extract([str(capture)], tmp / "labelled", spec, conn_labels=ConnLogLabels([labels]))
    store = FlowStore.open(tmp / "labelled")
    return store.flows, store


def family_table(joined: pd.DataFrame) -> pd.DataFrame:
    """Per family: flows, flagged, recall (attack families) / FP rate (benign), unscored."""
    rows = []
    attack = joined[joined["label"] == "anomalous"]
    for fam, g in sorted(attack.groupby("family"), key=lambda t: t[0]):
        rows.append({"family": fam, "flows": len(g), "flagged": int(g["flagged"].sum()),
                     "unscored": int(g["unscored"].sum()), "rate": g["flagged"].mean()})
    a = attack
    rows.append({"family": "all attacks", "flows": len(a), "flagged": int(a["flagged"].sum()),
                 "unscored": int(a["unscored"].sum()),
                 "rate": a["flagged"].mean() if len(a) else float("nan")})
    b = joined[joined["label"] == "normal"]
    rows.append({"family": "benign (false positives)", "flows": len(b),
                 "flagged": int(b["flagged"].sum()), "unscored": int(b["unscored"].sum()),
                 "rate": b["flagged"].mean() if len(b) else float("nan")})
    return pd.DataFrame(rows)


def print_table(table: pd.DataFrame, threshold: float, file=None) -> None:
    file = file if file is not None else sys.stdout
    print(f"\ndetection at the model's calibrated threshold {threshold:.4g} "
          "(not tuned on this capture):", file=file)
    print(f"  {'family':<26} {'flows':>6} {'flagged':>8} {'unscored':>9} {'rate':>8}",
          file=file)
    for r in table.itertuples(index=False):
        if r.family == "all attacks" or r.family.startswith("benign"):
            print("  " + "-" * 61, file=file)
        what = "FP rate" if r.family.startswith("benign") else "recall"
        print(f"  {r.family:<26} {r.flows:>6} {r.flagged:>8} {r.unscored:>9} "
              f"{r.rate:>8.3f}  {what}", file=file)
    b = table.iloc[-1]
    print(f"  benign: {b.flagged} false positives of {b.flows} flows "
          f"(FP rate {b.rate:.4f})", file=file)


def top_flagged(joined: pd.DataFrame, store, scorer, n: int, file=None) -> None:
    """The highest-scoring flagged flow of each family (benign false positives included),
    then the next highest, up to n, with its label and a one-line explanation."""
    from semiflow.detector.explain.packet_level import explain_flow

    file = file if file is not None else sys.stdout
    fl = joined[joined["flagged"]].sort_values("score", ascending=False)
    rank = fl.groupby(fl["family"].where(fl["label"] == "anomalous", "benign")).cumcount()
    top = fl.assign(rank=rank.to_numpy()).sort_values(["rank", "score"],
                                                       ascending=[True, False]).head(n)
    print(f"\ntop flagged flows, highest of each family first ({len(top)}; score, truth, "
          "explanation):", file=file)
    for r in top.itertuples(index=False):
        truth = r.family if r.label == "anomalous" else r.label
        try:
            why = explain_flow(scorer, store.samples[int(r.idx)], int(r.n_selected),
                               r.uid, steps=16).summary()
        except (ValueError, RuntimeError) as e:      # explanation is a bonus, never fatal
            why = f"(no explanation: {e})"
        print(f"  {r.uid} {r.proto} {r.orig_h}:{r.orig_p} -> {r.resp_h}:{r.resp_p} "
              f"score {r.score:.4g} [{truth}]\n      {why}", file=file)


def main(argv: list[str] | None = None) -> int:
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.zeeklog import read_zeek_log

    ap = argparse.ArgumentParser(prog="python -m semiflow.demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="demo-out", help="output directory (default demo-out)")
    ap.add_argument("--json", action="store_true", help="Zeek JSON logs instead of TSV")
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)   # tests, experiments
    ap.add_argument("--top", type=int, default=8, help="flagged flows to explain (default 8)")
    args = ap.parse_args(argv)
    model = Path(args.model) if args.model else default_model_dir()
    capture, labels = lab_sample()
    for p in (model, capture, labels):
        if not p.exists():
            print(f"semiflow demo: bundled file missing: {p} (reinstall semiflow)",
                  file=sys.stderr)
            return 2
    scorer = load_scorer(model, device="cpu")
    print(f"scoring {capture.name} (a lab-made capture: benign services plus 8 attack "
          f"families, first 10 packets of each flow) with {scorer.model_name} "
          f"{scorer.model_version} ({scorer.artifact.level}-level)")
    res = score_captures([str(capture)], model, args.out, json=args.json, device="cpu")
    unscored = ", ".join(f"{n} {k}" for k, n in sorted(res.unscored.items())) or "none"
    print(f"{res.flows} flows: {res.scored} scored, {len(res.flagged)} flagged; unscored: "
          f"{unscored}; wrote {res.out_dir / 'semiflow.log'} and {res.out_dir / 'notice.log'}")
    log = read_zeek_log(Path(args.out) / "semiflow.log")
    with tempfile.TemporaryDirectory(prefix="semiflow-demo-") as tmp:
        flows, store = labelled_flows(capture, labels, scorer.spec, Path(tmp))
        flows = flows.assign(idx=np.arange(len(flows)))
        joined = flows.merge(log[["uid", "score", "verdict", "status"]], on="uid",
                             how="left", suffixes=("", "_log"))
        missing = int(joined["verdict"].isna().sum() - (joined["status_log"] != "scored").sum())
        if missing > 0:
            print(f"note: {missing} labelled flows have no scored verdict in semiflow.log")
        joined["flagged"] = joined["verdict"] == "anomalous"
        joined["unscored"] = joined["status_log"] != "scored"
        unlabelled = int((~joined["label"].isin(["normal", "anomalous"])).sum())
        if unlabelled:
            print(f"note: {unlabelled} flows carry no benign/malicious label (left out)")
        print_table(family_table(joined), scorer.threshold)
        top_flagged(joined, store, scorer, args.top)
    print(f"\nZeek logs: {Path(args.out) / 'semiflow.log'}, {Path(args.out) / 'notice.log'} "
          "(explain one flow: semiflow explain --uid UID "
          f"{capture})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
