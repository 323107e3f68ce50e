"""Drift detection on the traffic lab: no alarm on another day of the same mix, an alarm soon
after the benign mix changes.

    python benchmarks/drift_lab.py --model semiflow/data/model \\
        --unchanged lab-out/test-mixed --changed lab-out/drift-mix [--window 60 300]

The model (the bundled one was trained on the benign run lab-out/train-benign, seed 1) and
the drift reference stored in it. Scenario "unchanged": the benign flows of another run with
the same mix (test-mixed, seed 2; its attack flows left out) replayed in time order through
the serving path's DriftMonitor (detector/lifecycle/drift.py), the flows' own timestamps as
the clock.
Scenario "changed": the first half of that replay, then a run made with another benign mix
(`python -m lab.run --scenario train-benign --mix ...`, e.g. no DNS clients, triple redis),
shifted to follow without a gap: the minutes from the change to the end of the first window
judged drifted (when serve would raise SemiFlow::Model_Drift) and which signals drifted.
Each run's capture is extracted with the model's flow-sample spec (cached in --work).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semiflow.detector.lifecycle.drift import DriftMonitor, DriftReference  # noqa: E402
from semiflow.detector.scoring import load_scorer  # noqa: E402
from semiflow.plugin.flowstore import FlowStore  # noqa: E402
from semiflow.training.evaluate_lab import score_store_rows  # noqa: E402
from semiflow.training.extract import extract  # noqa: E402
from semiflow.training.labels import ConnLogLabels  # noqa: E402


def flows_of(run: Path, spec, work: Path) -> FlowStore:
    out = work / f"{run.name}-{spec.selection}-k{spec.k}-l{spec.l}.flows"
    if not (out / "flows.parquet").exists():
        labels = run / "labels.conn.log"
        extract([str(run / "capture.pcap")], out, spec,
                conn_labels=ConnLogLabels([labels]) if labels.exists() else None)
    return FlowStore.open(out)


def benign_stream(store: FlowStore, scorer) -> dict[str, np.ndarray]:
    f = store.flows
    rows = np.flatnonzero((f["label"] != "anomalous").to_numpy())
    rows = rows[np.argsort(f["ts"].to_numpy()[rows], kind="stable")]
    k, l = scorer.spec.k, scorer.spec.l
    return {"ts": f["ts"].to_numpy()[rows].astype(np.float64),
            "x": np.asarray(store.samples.rows(rows))[:, :k, :l],
            "n": f["n_selected"].to_numpy()[rows], "s": score_store_rows(scorer, store, rows)}


def replay(ref: DriftReference, parts: list[dict], window: float, threshold: float,
           min_flows: int, batch: int = 256) -> list:
    m = DriftMonitor(ref, window, threshold, min_flows)
    reports = []
    for p in parts:
        for i in range(0, len(p["ts"]), batch):
            j = slice(i, i + batch)
            reports += m.update(float(p["ts"][i]), p["x"][j], p["n"][j], p["s"][j])
    last = m.flush(end=float(parts[-1]["ts"][-1]))
    return reports + ([last] if last else [])


def cut(p: dict, sel) -> dict:
    return {k: v[sel] for k, v in p.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("semiflow/data/model"))
    ap.add_argument("--unchanged", type=Path, default=Path("lab-out/test-mixed"))
    ap.add_argument("--changed", type=Path, default=Path("lab-out/drift-mix"))
    ap.add_argument("--work", type=Path, default=Path("lab-out/drift-work"))
    ap.add_argument("--window", type=float, nargs="+", default=[60.0, 300.0])
    ap.add_argument("--threshold", type=float, default=0.25)
    ap.add_argument("--min-flows", type=int, default=500)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    scorer = load_scorer(a.model, device="cpu")
    ref = DriftReference.load(a.model)
    if ref is None:
        print(f"{a.model} has no drift reference (semiflow models reference)", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    same = benign_stream(flows_of(a.unchanged, scorer.spec, a.work), scorer)
    other = benign_stream(flows_of(a.changed, scorer.spec, a.work), scorer)
    mid = same["ts"][0] + (same["ts"][-1] - same["ts"][0]) / 2
    first = cut(same, same["ts"] < mid)
    shifted = dict(other, ts=other["ts"] - other["ts"][0] + mid)
    mix = json.loads((a.changed / "run.json").read_text()).get("mix", {}) \
        if (a.changed / "run.json").exists() else {}
    print(f"reference: {ref.flows} held-out benign flows of the training run; unchanged: "
          f"{len(same['ts'])} benign flows of {a.unchanged.name}; changed: the first half "
          f"({len(first['ts'])} flows) then {len(other['ts'])} flows of {a.changed.name} "
          f"(mix {mix})")
    results = []
    for w in a.window:
        rep_same = replay(ref, [same], w, a.threshold, a.min_flows)
        rep_chg = replay(ref, [first, shifted], w, a.threshold, a.min_flows)
        after = [r for r in rep_chg if r.end > mid and r.drifted]
        before = [r for r in rep_chg if r.end <= mid and r.drifted]
        hit = after[0] if after else None
        res = {"window_s": w,
               "unchanged": {"windows": len(rep_same),
                             "drifted": sum(bool(r.drifted) for r in rep_same),
                             "max_psi": max((max(v for v in r.psi.values() if np.isfinite(v))
                                             for r in rep_same), default=float("nan"))},
               "changed": {"windows": len(rep_chg), "drifted_before_change": len(before),
                           "minutes_to_first_alarm": None if hit is None
                           else round((hit.end - mid) / 60, 2),
                           "signals": hit.drifted if hit else [],
                           "psi": {k: round(hit.psi[k], 3) for k in hit.drifted} if hit else {}}}
        results.append(res)
        u, c = res["unchanged"], res["changed"]
        print(f"window {w:g}s: unchanged {u['drifted']}/{u['windows']} windows drifted (max PSI "
              f"{u['max_psi']:.3f}); changed: {c['drifted_before_change']} drifted before the "
              f"change, first alarm {c['minutes_to_first_alarm']} min after it on "
              f"{', '.join(f'{k} {v}' for k, v in c['psi'].items()) or 'nothing'}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
