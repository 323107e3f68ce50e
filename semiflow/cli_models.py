"""`semiflow models`: the versioned model store a sensor serves from.

    semiflow models add STORE MODEL_DIR [--reason ...]      copy an artifact in (read-only)
    semiflow models list STORE                              versions, the current one marked
    semiflow models show STORE [VERSION]                    config, threshold, provenance, history
    semiflow models promote STORE VERSION --reason ...      make it current (serve follows)
    semiflow models rollback STORE --reason ... [--to V]    back to the one it replaced
    semiflow models diff STORE A B --data EXTRACT [--json]  both scored on the same flows
    semiflow models reference MODEL_DIR --data EXTRACT...   drift reference for an artifact

`semiflow serve --models STORE` serves the current version and follows promotions.
"""

from __future__ import annotations

import argparse
import json
import time

from semiflow.cli import UsageError


def register(sub) -> None:
    p = sub.add_parser("models", help="versioned model store: list, promote, rollback, diff",
                       description="Keep model versions immutable, promote one to serve, roll "
                                   "back in one command, compare two on the same flows.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    a = msub.add_parser("add", help="copy a model artifact into the store as a new version")
    a.add_argument("store", metavar="STORE")
    a.add_argument("model", metavar="MODEL_DIR")
    a.add_argument("--reason", default="", help="recorded in the history")
    a.add_argument("--promote", action="store_true", help="also make it current")
    a.set_defaults(func=run_add)
    ls = msub.add_parser("list", help="versions, oldest first; * marks the current one")
    ls.add_argument("store", metavar="STORE")
    ls.set_defaults(func=run_list)
    sh = msub.add_parser("show", help="one version: config, threshold, provenance, history")
    sh.add_argument("store", metavar="STORE")
    sh.add_argument("version", nargs="?", default="current", metavar="VERSION")
    sh.set_defaults(func=run_show)
    pr = msub.add_parser("promote", help="make a version current")
    pr.add_argument("store", metavar="STORE")
    pr.add_argument("version", metavar="VERSION")
    pr.add_argument("--reason", required=True, help="why (recorded with who and when)")
    pr.add_argument("--who", default=None, help="who decided (default: the login name)")
    pr.set_defaults(func=run_promote)
    rb = msub.add_parser("rollback", help="back to the version the current one replaced")
    rb.add_argument("store", metavar="STORE")
    rb.add_argument("--reason", required=True)
    rb.add_argument("--to", default=None, metavar="VERSION", help="a named version instead")
    rb.add_argument("--who", default=None)
    rb.set_defaults(func=run_rollback)
    d = msub.add_parser("diff", help="two versions scored on the same held-out flows")
    d.add_argument("store", metavar="STORE")
    d.add_argument("a", metavar="A", help="a version (or 'current')")
    d.add_argument("b", metavar="B")
    d.add_argument("--data", required=True, metavar="EXTRACT",
                   help="a `semiflow extract` directory with the models' flow-sample spec")
    d.add_argument("--max-flows", type=int, default=0, metavar="N",
                   help="score the first N flows only (default: all)")
    d.add_argument("--bucket", type=float, default=3600.0, metavar="SECONDS",
                   help="flags per time bucket (default 3600: per hour)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", action="store_true", help="print the comparison as JSON")
    d.set_defaults(func=run_diff)
    r = msub.add_parser("reference", help="write an artifact's drift reference (reference.json) "
                                          "from the held-out normal flows of its training data")
    r.add_argument("model", metavar="MODEL_DIR", help="an artifact directory (not in a store: "
                                                      "store versions are read-only)")
    r.add_argument("--data", nargs="+", required=True, metavar="EXTRACT",
                   help="the extraction(s) it was trained on; their held-out normal part "
                        "(the val and calib split `semiflow train` makes) is the reference")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=run_reference)


def _store(path: str, create: bool = False):
    from semiflow.model_store import ModelStore

    return ModelStore.open_or_create(path) if create else ModelStore(path)


def _resolve(store, version: str) -> str:
    if version == "current":
        cur = store.current()
        if cur is None:
            raise UsageError(f"{store.root}: no current version")
        return cur
    store.path(version)  # a clear error for an unknown name
    return version


def run_add(args: argparse.Namespace) -> int:
    store = _store(args.store, create=True)
    name = store.add(args.model, reason=args.reason)
    print(f"added {name} -> {store.path(name)}")
    if args.promote:
        prev = store.promote(name, reason=args.reason or "added with --promote")
        print(f"current: {name} (was {prev or 'none'})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _store(args.store)
    cur = store.current()
    vs = store.versions()
    if not vs:
        print(f"{store.root}: no versions yet")
        return 0
    print(f"{'':2s}{'version':28s} {'added (UTC)':20s} {'level':6s} {'threshold':>10s}  trained on")
    for v in vs:
        added = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.added))
        thr = f"{v.threshold:.4g}" if v.threshold is not None else "-"
        data = v.provenance.get("inputs") or v.provenance.get("data") or "-"
        if isinstance(data, list):
            data = f"{len(data)} input(s)"
        print(f"{'*' if v.name == cur else ' ':2s}{v.name:28s} {added:20s} {v.level:6s} "
              f"{thr:>10s}  {data}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = _store(args.store)
    name = _resolve(store, args.version)
    store.verify(name)
    d = store.path(name)
    meta = json.loads((d / "semiflow-model.json").read_text())
    prov = json.loads((d / "provenance.json").read_text()) \
        if (d / "provenance.json").is_file() else {}
    hist = [h for h in store.history() if h["version"] == name]
    print(json.dumps({"version": name, "current": name == store.current(), "path": str(d),
                      "level": meta.get("level", "packet"), "score": meta.get("score"),
                      "threshold": meta.get("threshold"), "spec": meta.get("spec"),
                      "provenance": prov, "history": hist}, indent=2, default=str))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    store = _store(args.store)
    prev = store.promote(_resolve(store, args.version), args.reason, who=args.who)
    print(f"current: {args.version} (was {prev or 'none'})")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    store = _store(args.store)
    cur = store.current()
    to = store.rollback(args.reason, who=args.who, to=args.to)
    print(f"current: {to} (rolled back from {cur})")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    import numpy as np

    from semiflow.detector.lifecycle.compare import compare_scores
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.evaluate_lab import score_store_rows

    store = _store(args.store)
    names = [_resolve(store, args.a), _resolve(store, args.b)]
    data = FlowStore.open(args.data)
    rows = np.arange(len(data.flows) if args.max_flows <= 0
                     else min(args.max_flows, len(data.flows)))
    scores, thresholds = [], []
    for name in names:
        store.verify(name)
        scorer = load_scorer(store.path(name), device=args.device)
        if scorer.spec != data.spec:
            raise UsageError(f"{args.data} was extracted with another flow-sample spec than "
                             f"{name} (model: {scorer.spec.to_dict()}); extract it with the "
                             f"model's spec (`semiflow extract --select/-k/-l/--mask`)")
        scores.append(score_store_rows(scorer, data, rows))
        thresholds.append(scorer.threshold)
    ts = data.flows["ts"].to_numpy()[rows]
    out = {"a": names[0], "b": names[1], "data": str(args.data),
           **compare_scores(scores[0], scores[1], thresholds[0], thresholds[1], ts,
                            args.bucket)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"A = {names[0]}, B = {names[1]}: {out['flows']} flows of {args.data} "
          f"({out['unscored']} unscored)")
    print(f"threshold      A {out['threshold_a']:.4g}   B {out['threshold_b']:.4g}")
    for q, x, y in zip(out["quantiles"], out["score_quantiles_a"], out["score_quantiles_b"],
                       strict=False):
        print(f"score q{q:<7g} A {x:10.4g}   B {y:10.4g}")
    print(f"flagged        A {out['flagged_a']}   B {out['flagged_b']}   both "
          f"{out['flagged_both']}   only A {out['only_a']}   only B {out['only_b']}   "
          f"Jaccard {out['jaccard']:.3f}   Spearman {out['spearman']:.3f}")
    for b in out.get("per_bucket", []):
        t = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["start"]))
        print(f"  {t}  flows {b['flows']:7d}  flagged A {b['flagged_a']:5d}  "
              f"B {b['flagged_b']:5d}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from semiflow.detector.lifecycle.drift import DriftReference
    from semiflow.detector.scoring import load_scorer
    from semiflow.training.dataset import flow_matrix
    from semiflow.training.evaluate_lab import score_store_rows
    from semiflow.training.train import normal_parts

    scorer = load_scorer(args.model, device=args.device)
    parts, stores = normal_parts(args.data, log=lambda m: None)
    if any(s.spec != scorer.spec for s in stores):
        raise UsageError(f"{args.data[0]}: extracted with another flow-sample spec than the "
                         f"model's ({scorer.spec.to_dict()})")
    held = pd.concat([parts["val"], parts["calib"]])
    if len(held) < 10:
        raise UsageError("fewer than 10 held-out normal flows: no reference")
    idx, rows = held["_store"].to_numpy(), held["row"].to_numpy()
    samples = flow_matrix(stores, idx, rows, scorer.spec.k, scorer.spec.l)
    scores = np.empty(len(rows))
    for i in np.unique(idx):
        scores[idx == i] = score_store_rows(scorer, stores[i], rows[idx == i])
    ref = DriftReference.build(samples, held["n_selected"].to_numpy(), scores)
    print(f"drift reference from {ref.flows} held-out normal flows -> {ref.save(args.model)}")
    return 0
