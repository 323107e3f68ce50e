"""`semiflow explain --uid UID --model DIR (--extract DIR | CAPTURE...)`: which bytes and
header fields drove one flow's score; prints them and writes a heat-map PNG."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("explain", help="which bytes/fields drove a flow's anomaly score",
                       description="Attribute a flow's anomaly log-odds to its packet bytes "
                                   "(integrated gradients) and name the header fields.")
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="captures holding the flow (cut with the model's spec)")
    p.add_argument("--uid", required=True, action="append", help="flow uid (repeatable)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model artifact (default: the bundled model)")
    p.add_argument("--extract", nargs="*", default=[], metavar="DIR",
                   help="extraction directories holding the flow")
    p.add_argument("--method", choices=["integrated-gradients", "grad-x-input"],
                   default="integrated-gradients")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--top", type=int, default=10, help="bytes/fields to print")
    p.add_argument("--normal", metavar="EXTRACT",
                   help="an extraction of normal traffic: show the nearest normal packets")
    p.add_argument("--png", metavar="FILE", help="heat map (default: explain-UID.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _normal_sample(path: str, cap: int = 4000, flow_level: bool = False):
    from semiflow.plugin.flowstore import FlowStore
    st = FlowStore.open(path)
    f = st.flows[(st.flows["n_selected"] > 0) & (st.flows["label"].isin(["normal", "unknown"]))]
    if flow_level:      # whole flows: (samples, n_selected, info)
        idx = f.index.to_numpy()[:cap]
        info = [{"uid": u, "source_file": Path(s).name} for u, s in
                zip(f["uid"].iloc[:cap], f["source_file"].iloc[:cap])]
        return (np.asarray(st.samples[idx]), f["n_selected"].to_numpy()[:cap]), info
    rows = f["row"].to_numpy()[:cap]
    X, pos = st.samples.packet_rows(rows)
    sub = f.iloc[pos]
    info = [{"uid": u, "source_file": Path(s).name} for u, s in
            zip(sub["uid"], sub["source_file"])]
    return X[:cap], info[:cap]


def run(args: argparse.Namespace) -> int:
    from semiflow.cli_score import default_model_dir
    from semiflow.detector.explain.packet_level import (
        explain_flow,
        nearest_normal,
        plot_explanation,
    )
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.flowstore import FlowStore

    if not args.extract and not args.captures:
        raise ValueError("give the flow's samples: --extract DIR or CAPTURE files")
    scorer = load_scorer(args.model or default_model_dir(), device="cpu")
    flow_level = scorer.flow_detector is not None
    normal = _normal_sample(args.normal, flow_level=flow_level) if args.normal else None
    wanted = set(args.uid)
    out = []
    with tempfile.TemporaryDirectory(prefix="semiflow-explain-") as tmp:
        dirs = list(args.extract)
        if args.captures:
            from semiflow.training.extract import extract
            extract(args.captures, Path(tmp) / "flows", scorer.spec)
            dirs.append(Path(tmp) / "flows")
        for d in dirs:
            st = FlowStore.open(d)
            if st.spec != scorer.spec:
                raise ValueError(f"{d}: extracted with another flow-sample spec than the "
                                 "model's; re-extract or pass the captures")
            for i in map(int, st.flows.index[st.flows["uid"].isin(wanted)]):
                uid = st.flows["uid"].iloc[i]
                n_sel = int(st.flows["n_selected"].iloc[i])
                if n_sel == 0:
                    print(f"{uid}: no selected packet (status "
                          f"{st.flows['status'].iloc[i]}): it was not scored")
                    wanted.discard(uid)
                    continue
                e = explain_flow(scorer, st.samples[i], n_sel, uid, args.method, args.steps,
                                 directions=st.pkt_dir[i])
                if normal is not None and flow_level:
                    from semiflow.detector.explain.flow_level import nearest_normal_flows
                    e.nearest = nearest_normal_flows(scorer, e, *normal[0], normal[1])
                elif normal is not None:
                    e.nearest = nearest_normal(scorer, e, normal[0], normal[1])
                png = args.png if args.png and len(args.uid) == 1 else f"explain-{uid}.png"
                plot_explanation(e, png)
                out.append((e, png))
                wanted.discard(uid)
    if wanted:
        raise ValueError(f"uid(s) not found: {', '.join(sorted(wanted))}")
    for e, png in out:
        if args.json:
            print(json.dumps({**e.to_dict(args.top), "png": png}))
            continue
        if flow_level:
            _print_flow_level(e, args, png, scorer.threshold)
            continue
        print(f"flow {e.uid}: {len(e.packet_scores)} packets; packet log-odds "
              + " ".join(f"{s:.3f}" for s in e.packet_scores)
              + f"; all-zero baseline {e.baseline_score:.3f}")
        print(f"  driving packet {e.driver + 1} ({args.method}); top fields:")
        for t in e.field_totals()[:args.top]:
            print(f"    {t['field']:<28} [{t['start']:>4},{t['end']:>4})  "
                  f"{t['attribution']:+.4f}")
        print("  top bytes:")
        for b in e.top_bytes(args.top):
            print(f"    offset {b['offset']:>4}  {b['field']:<22} 0x{b['value']:02x}  "
                  f"{b['attribution']:+.4f}")
        _print_nearest(e, args, png, "packets (encoder space)")
    return 0


def _print_nearest(e, args: argparse.Namespace, png: str, what: str) -> None:
    """The nearest normal examples (or why there are none) and where the heat map went."""
    if e.nearest:
        print(f"  nearest normal {what}:")
        for nn in e.nearest:
            print(f"    {nn['uid']} ({nn['source_file']}) distance {nn['distance']:.3f}")
    elif not args.normal:
        print("  nearest normal examples: skipped (the artifact holds no training data; "
              "pass --normal EXTRACT)")
    print(f"  heat map: {png}")


def _print_flow_level(e, args: argparse.Namespace, png: str, threshold: float) -> None:
    """Text report of a FlowLevelExplanation (detector/explain/flow_level.py)."""
    print(f"flow {e.uid}: flow-level score {e.score:.3f} (threshold {threshold:.3f}); "
          f"{e.n_selected} packets, service {e.service}; baseline ({e.baseline}) score "
          f"{e.baseline_score:.3f}")
    print("  attribution per packet slot: " + " ".join(
        f"{i + 1}{'' if i < e.n_selected else '(absent)'}:{s:+.3g}"
        for i, s in enumerate(e.packet_scores)))
    print(f"  top fields ({args.method}; meta.* = header metadata the model reads by "
          "meaning, service = protocol + lower port):")
    for t in e.field_totals()[:args.top]:
        where = "flow" if t["packet"] is None else f"pkt {t['packet'] + 1}"
        span = f"[{t['start']:>4},{t['end']:>4})" if t["start"] >= 0 else " " * 11
        name = t["field"] + (f" {t['value']}" if "value" in t else "")
        print(f"    {where:<6} {name:<28} {span}  {t['attribution']:+.4f}")
    print("  top bytes:")
    for b in e.top_bytes(args.top):
        print(f"    pkt {b['packet'] + 1} offset {b['offset']:>4}  {b['field']:<22} "
              f"0x{b['value']:02x}  {b['attribution']:+.4f}")
    _print_nearest(e, args, png, "flows (flow latent)")
