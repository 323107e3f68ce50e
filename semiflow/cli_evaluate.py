"""`semiflow evaluate EXTRACT_DIR...`: train detectors on benchmark splits, report metrics.
`semiflow evaluate --train A... --test B...`: fit on one extraction, test on another.

Each detector is fitted on the normal training files of each split (or, with --model, a
trained artifact is evaluated as-is) and scored on held-out files; JSON for machines, an
HTML page (ROC curves, score histograms) for people. Benchmarks that do not apply to the
extraction are skipped up front, saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semiflow.cli import UsageError
from semiflow.threads import add_threads_argument, apply_threads

DEFAULT_DETECTORS = "semiflow,semiflow-nll,iforest,ocsvm,pca,kde,ae,ganomaly1d,knn"
DEEP = ("semiflow", "semiflow-nll", "ae", "ganomaly1d")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="benchmark detectors on extracted, labelled flows",
                       description="Train each detector on the normal training files of "
                                   "each benchmark split and evaluate on held-out files "
                                   "(flow-level AUROC, AUPRC, TPR at low FPR, F1 at the "
                                   "threshold, per-family and per-source results).")
    p.add_argument("extract_dirs", nargs="*", metavar="EXTRACT_DIR",
                   help="directories written by `semiflow extract --manifest ...`")
    p.add_argument("--train", nargs="+", metavar="EXTRACT_DIR",
                   help="fit on the normal flows of these extractions (with --test: no "
                        "benchmark construction; baselines included)")
    p.add_argument("--test", nargs="+", metavar="EXTRACT_DIR",
                   help="score every flow labelled normal/anomalous of these extractions")
    p.add_argument("--detectors", default=DEFAULT_DETECTORS,
                   help=f"comma-separated, or 'all' (default {DEFAULT_DETECTORS})")
    p.add_argument("--benchmark", default="all",
                   choices=["attacks", "vpn", "malformed", "all"])
    p.add_argument("--seeds", type=_ints, default=[0], help="e.g. 0,1,2 (default 0)")
    p.add_argument("--cap-per-file", type=int, default=None,
                   help="at most this many flows per capture file (default 50 for the "
                        "benchmarks, no cap for --train/--test; 0 = no cap)")
    p.add_argument("--target-fpr", type=float, default=1e-3,
                   help="FPR the flag threshold is calibrated for on validation normal "
                        "flows (default 1e-3)")
    p.add_argument("--aggregate", default="max", choices=["max", "mean", "median"],
                   help="packet scores -> flow score (default max)")
    p.add_argument("--bytes", type=int, default=None, metavar="N",
                   help="use only the first N bytes of each packet row, for every detector")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for the deep detectors (semiflow, ae, ganomaly1d)")
    p.add_argument("--device", default=None, help="torch device for deep detectors")
    p.add_argument("--param", action="append", default=[], metavar="DET.KEY=VALUE",
                   help="detector parameter, VALUE as JSON (e.g. iforest.n_estimators=400)")
    p.add_argument("--no-loso", action="store_true",
                   help="skip the leave-one-source-out folds of the attacks benchmark")
    p.add_argument("--model", metavar="MODEL",
                   help="evaluate this trained artifact as-is (no training) instead")
    p.add_argument("--json", metavar="OUT.json", help="write every result as JSON")
    p.add_argument("--html", metavar="OUT.html", help="write an HTML report")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run lines")
    add_threads_argument(p)
    p.set_defaults(func=run)


def detector_params(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """--epochs/--device/--param/--bytes folded into per-detector keyword arguments."""
    params: dict[str, dict] = {n: {} for n in names}
    for n in names:
        if n in DEEP and args.epochs is not None:
            params[n]["epochs"] = args.epochs
        if n in DEEP and args.device:
            params[n]["device"] = args.device
    for n in ("semiflow", "semiflow-nll"):
        if args.bytes and n in names:
            from semiflow.detector.models.semiflow_model import SemiFlowConfig
            params[n]["config"] = SemiFlowConfig.small(length=args.bytes)
    for item in args.param:
        key, sep, value = item.partition("=")
        det, dot, name = key.partition(".")
        if not sep or not dot or det not in params:
            raise ValueError(f"--param {item!r}: expected DET.KEY=VALUE with DET one of "
                             f"{', '.join(names)}")
        try:
            params[det][name] = json.loads(value)
        except json.JSONDecodeError:
            params[det][name] = value
    return params


class ArtifactDetector:
    """A trained SemiFlow artifact behind the detector surface (scores as-is, no fit)."""

    def __init__(self, path: str, device: str | None = None):
        from semiflow.detector.scoring import load_scorer
        self.scorer = load_scorer(path, device=device)
        t = self.scorer.threshold_info
        self.threshold_ = None if t is None else float(t.value)

    def anomaly_score(self, X):
        return self.scorer.score_packets(X)

    def fit(self, X, X_val=None):
        raise RuntimeError("a loaded artifact is evaluated as-is; it is not refitted")


def load_model(path: str, device: str | None = None):
    """(detector, spec or None, aggregate or None) for --model: an artifact directory or a
    joblib-saved baseline."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"--model {path}: no such file or directory")
    if p.is_file():
        from semiflow.detector.baselines.classic import load_detector
        return load_detector(p), None, None
    det = ArtifactDetector(str(p), device)
    return det, det.scorer.spec, det.scorer.aggregate


def _plan(args: argparse.Namespace, data, log) -> tuple[list, list[str], dict[str, str]]:
    """(splits, benchmarks run, benchmarks skipped with the reason), before any fitting."""
    from semiflow.training.evaluate import BENCHMARKS, plan_benchmarks

    if args.train:
        from semiflow.training.evaluate_transfer import transfer_split
        splits = [transfer_split(data, len(args.train), seed, args.cap_per_file or None,
                                 log or (lambda m: None)) for seed in args.seeds]
        return splits, ["train-test"], {}
    benches = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    cap = 50 if args.cap_per_file is None else args.cap_per_file
    splits, skipped = plan_benchmarks(data.flows, benches, args.seeds, cap or None,
                                      loso=not args.no_loso)
    if not splits:
        raise UsageError("; ".join(skipped.values()))
    for why in skipped.values():
        print(f"skipped: {why}")
    return splits, [b for b in benches if b not in skipped], skipped


def run(args: argparse.Namespace) -> int:
    from semiflow.detector.registry import parse_names
    from semiflow.training.evaluate import load_flow_data
    from semiflow.training.evaluate_run import (
        evaluate_split,
        markdown_table,
        public,
        summarize,
    )

    if bool(args.train) != bool(args.test):
        raise UsageError("--train and --test go together")
    if args.train and args.extract_dirs:
        raise UsageError("give EXTRACT_DIR... (benchmarks) or --train/--test, not both")
    if not args.train and not args.extract_dirs:
        raise UsageError("give EXTRACT_DIR... (benchmarks) or --train A... --test B...")
    apply_threads(args.threads)
    dirs = (args.train + args.test) if args.train else args.extract_dirs
    data = load_flow_data(dirs)
    fitted = {}
    if args.model:
        det, spec, how = load_model(args.model, args.device)
        args.aggregate = how or args.aggregate
        if spec is not None and spec != data.stores[0].spec:
            raise ValueError(f"--model {args.model} was trained with spec {spec.to_dict()}, "
                             f"the extraction uses {data.stores[0].spec.to_dict()}")
        names = ["model"]
        fitted = {"model": det}
        params: dict[str, dict] = {}
    else:
        names = parse_names(args.detectors)
        params = detector_params(args, names)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    splits, benches, skipped = _plan(args, data, log)
    print("Detectors are fitted on NORMAL training files only; labelled anomalies are used "
          "only for the test metrics." if not args.model else
          f"Evaluating {args.model} as-is; make sure its training files are not in the test "
          "splits.")
    for note in splits[0].notes if args.train else []:
        print(note)
    records = []
    for split in splits:
        records += evaluate_split(data, split, names, params, args.target_fpr,
                                  args.aggregate, args.bytes, fitted, log)
    summary = summarize(records)
    print(markdown_table(summary))
    if args.json:
        blob = {"extract_dirs": [str(d) for d in args.extract_dirs],
                "train": args.train, "test": args.test,
                "benchmarks": benches, "skipped": skipped, "seeds": args.seeds,
                "target_fpr": args.target_fpr, "aggregate": args.aggregate,
                "cap_per_file": args.cap_per_file,
                "summary": summary.to_dict(orient="records"), "runs": public(records)}
        Path(args.json).write_text(json.dumps(_finite(blob), indent=1, default=_json_default,
                                              allow_nan=False))
        print(f"wrote {args.json}")
    if args.html:
        from semiflow.training.report_html import write_report
        write_report(args.html, records, summary, context=[
            f"extractions: {', '.join(map(str, dirs))}; seeds {args.seeds}; "
            f"cap {args.cap_per_file} flows/file; aggregate {args.aggregate}"])
        print(f"wrote {args.html}")
    return 0


def _finite(o):
    """NaN/inf -> null, so the JSON is strict (NaN is not JSON)."""
    if isinstance(o, float):
        return o if o == o and abs(o) != float("inf") else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)
