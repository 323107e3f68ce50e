"""`semiflow logs train|score|evaluate`: the conn-log detector (dyad-hour language models)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from semiflow.detector.logs.models import MODELS
from semiflow.detector.logs.threshold import CALIBRATIONS, FPR_UNITS
from semiflow.detector.logs.tokens import TOKENIZERS
from semiflow.threads import add_threads_argument, apply_threads

DYAD_FIELDS = [("ts", "time"), ("host_a", "addr"), ("host_b", "addr"), ("n_flows", "count"),
               ("score", "double"), ("threshold", "double"), ("verdict", "string"),
               ("top_tokens", "vector[string]"), ("top_uids", "vector[string]")]
NOTICE_FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
                 ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"),
                 ("note", "enum"), ("msg", "string"), ("sub", "string"), ("src", "addr"),
                 ("dst", "addr"), ("n", "count"), ("actions", "set[enum]"),
                 ("suppress_for", "interval")]
NOTE = "SemiFlow::Anomalous_Dyad_Hour"


def _writer(path, path_name, fields, as_json):
    from semiflow.plugin.zeeklog_writer import ZeekLogWriter

    return ZeekLogWriter(path, path_name, fields, json=as_json)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="CONN_LOG",
                   help="Zeek conn.log files (TSV or JSON, gzip ok) or semiflow extract dirs")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(sub) -> None:
    p = sub.add_parser("logs", help="dyad-hour language models over Zeek conn logs",
                       description="Train, score and evaluate the conn-log detector.")
    lsub = p.add_subparsers(dest="logs_command", metavar="ACTION")
    lsub.required = True

    t = lsub.add_parser("train", help="train on (mostly normal) conn logs -> model dir")
    _common(t)
    t.add_argument("-o", "--out", required=True, metavar="MODEL", help="model directory")
    t.add_argument("--tokenizer", choices=TOKENIZERS, default="protobytes")
    t.add_argument("--model", choices=MODELS, default="clstm")
    t.add_argument("--supervised", action="store_true",
                   help="train a window classifier on the label column instead of an LM")
    t.add_argument("--window", type=int, default=10)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--target-fpr", type=float, default=0.01,
                   help="threshold = this quantile of held-out normal dyad-hour scores")
    t.add_argument("--split", choices=["time", "dyad"], default="time",
                   help="how calibration dyad-hours are held out (default: the last hours)")
    t.add_argument("--calib-fraction", type=float, default=0.2)
    t.add_argument("--calibration", choices=CALIBRATIONS, default="quantile",
                   help="quantile of the held-out block; upper: a 95%% binomial bound on it; "
                        "chain: pooled forward-chained later-block scores")
    t.add_argument("--fpr-unit", choices=FPR_UNITS, default="window",
                   help="what --target-fpr counts: dyad windows (default) or the flows in "
                        "them (a flagged window flags all its flows; quantile calibration)")
    t.add_argument("--bucket", type=float, default=3600.0, metavar="SECONDS",
                   help="dyad time window (default 3600: dyad-hours; 300 for short lab runs)")
    t.add_argument("--seed", type=int, default=42)
    add_threads_argument(t)
    t.set_defaults(func=run_train)

    s = lsub.add_parser("score", help="score dyad-hours -> semiflow_dyad.log + notice.log")
    _common(s)
    s.add_argument("--model", required=True, metavar="MODEL")
    s.add_argument("-o", "--out", default=".", metavar="DIR", help="output dir (default .)")
    s.add_argument("--json", action="store_true", help="write JSON lines instead of Zeek TSV")
    s.add_argument("--threshold", type=float, help="override the calibrated threshold")
    s.set_defaults(func=run_score)

    e = lsub.add_parser("evaluate", help="dyad-hour ROC AUC, precision/recall at threshold")
    _common(e)
    e.add_argument("--model", required=True, metavar="MODEL")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--baseline-train", nargs="+", metavar="CONN_LOG",
                   help="fit the frequency baseline on these logs (default: the baseline "
                        "saved with the model)")
    e.set_defaults(func=run_evaluate)


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def run_train(args: argparse.Namespace) -> int:
    from semiflow.detector.logs.detector import auto_device
    from semiflow.training.log_train import train_from_logs

    apply_threads(args.threads)
    params = dict(tokenizer=args.tokenizer, model=args.model, supervised=args.supervised,
                  window=args.window, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, target_fpr=args.target_fpr, split=args.split,
                  calib_fraction=args.calib_fraction, seed=args.seed,
                  calibration=args.calibration, bucket_s=args.bucket,
                  fpr_unit=args.fpr_unit, device=auto_device(args.device))
    det, report = train_from_logs(args.logs, params, args.out, progress=_progress(args))
    for line in report.summary_lines():
        print(line)
    print(f"trained {det!r} on {det.n_train_flows_} flows, vocabulary {len(det.vocab_)}, "
          f"final loss {det.history_[-1]:.4f}")
    n_calib = len(det.calib_scores_)  # one score per dyad-hour
    chained = "chained" in det.calibration_source_
    flows = "" if chained else f", {det.n_calib_flows_} flows"
    by_flow = getattr(det, "fpr_unit", "window") == "flow" and not chained
    n_unit = det.n_calib_flows_ if by_flow else n_calib  # what the target FPR counts
    print(f"threshold {det.threshold_:.4f} at target FPR {det.target_fpr} on {n_calib} "
          f"{det.calibration_source_}{flows}"
          + (f"; too few {'flows' if by_flow else 'dyad-hours'} to resolve this FPR"
             if n_unit * det.target_fpr < 1 else "")
          + f" -> {args.out}")
    b = det.baseline_
    print(f"frequency baseline ({b.tokenizer} tokens, {len(b.counts_)} distinct): threshold "
          f"{b.threshold_:.4f} -> {os.path.join(args.out, 'baseline.json')}")
    return 0


def _load(args):
    from semiflow.detector.logs.detector import LogLMDetector, auto_device

    det = LogLMDetector.load(args.model, device=auto_device(args.device))
    if getattr(args, "threshold", None) is not None:
        det.threshold_ = float(args.threshold)
    return det


def run_score(args: argparse.Namespace) -> int:
    from semiflow.training.log_train import LogReadReport, score_logs

    det = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dyad = _writer(out / "semiflow_dyad.log", "semiflow_dyad", DYAD_FIELDS, args.json)
    notice = _writer(out / "notice.log", "notice", NOTICE_FIELDS, args.json)
    counts = {"dyad_hours": 0, "notices": 0}

    def write(scored) -> None:
        names = [n for n, _ in DYAD_FIELDS]
        for r in scored.to_dict("records"):
            dyad.write({n: r[n] for n in names})
            counts["dyad_hours"] += 1
            if r["verdict"] != "anomalous":
                continue
            counts["notices"] += 1
            notice.write({
                "ts": r["ts"], "uid": r["top_uids"][0] if r["top_uids"] else None,
                "note": NOTE, "src": r["host_a"], "dst": r["host_b"], "n": r["n_flows"],
                "msg": f"anomalous dyad-hour {r['host_a']} <-> {r['host_b']} "
                       f"(score {r['score']:.2f} > {r['threshold']:.2f})",
                "sub": "tokens " + " ".join(r["top_tokens"]) + " uids "
                       + " ".join(r["top_uids"]),
                "actions": ["Notice::ACTION_LOG"], "suppress_for": 3600.0})

    report = LogReadReport()
    try:
        score_logs(args.logs, det, on_batch=write, report=report, progress=_progress(args),
                   keep=False)
    finally:
        dyad.close()
        notice.close()
    for line in report.summary_lines():
        print(line)
    print(f"{counts['dyad_hours']} dyad-hours scored, {counts['notices']} above threshold "
          f"{det.threshold_:.4f} -> {os.path.join(args.out, 'semiflow_dyad.log')}, "
          f"{os.path.join(args.out, 'notice.log')}")
    return 0


def _baseline(args, det):
    """The frequency baseline to report beside the model, or None (old model dirs)."""
    from semiflow.detector.logs.baselines import FrequencyBaseline
    from semiflow.training.log_train import BASELINE_FILE, baseline_for, collect_sequences

    if args.baseline_train:
        seq = collect_sequences(args.baseline_train, det.tokenizer, bucket_s=det.bucket_s,
                                progress=_progress(args))
        return baseline_for(det).fit_sequences(seq)
    path = Path(args.model) / BASELINE_FILE
    return FrequencyBaseline.load(path) if path.exists() else None


def run_evaluate(args: argparse.Namespace) -> int:
    from semiflow.training.log_train import LogReadReport, evaluate_scores, score_logs

    det = _load(args)
    base = _baseline(args, det)
    report = LogReadReport()
    scored = score_logs(args.logs, det, report=report, progress=_progress(args),
                        others={"baseline": base} if base is not None else None)
    if base is None:
        scored = {"model": scored}
    m = evaluate_scores(scored["model"])
    if base is not None:
        m["baseline"] = evaluate_scores(scored["baseline"])
    if args.json:  # stdout is the JSON; what reading skipped goes to stderr
        for line in report.summary_lines()[1:]:
            print(f"note: {line}", file=sys.stderr)
        print(json.dumps(m))
        return 0
    for line in report.summary_lines():
        print(line)
    if m["malicious"] == 0:
        print("no dyad-hour holds a flow labelled malicious: AUROC undefined")
    print(f"dyad-hours {m['dyad_hours']} (malicious {m['malicious']}, base rate "
          f"{m['base_rate']:.4f}: the precision of flagging everything), flagged {m['flagged']}")
    rows = [(f"{det.model} LM" if not det.supervised else f"{det.model} supervised", m)]
    if base is not None:
        rows.append(("frequency baseline (rarest token)", m["baseline"]))
    else:
        print("no frequency baseline saved with this model (retrain, or --baseline-train)")
    print(f"{'detector':36s} {'ROC AUC':>8s} {'TPR':>7s} {'FPR':>7s} {'prec':>7s} threshold")
    for name, r in rows:
        print(f"{name:36s} {r['auroc']:8.4f} {r['recall']:7.4f} {r['fpr']:7.4f} "
              f"{r['precision']:7.4f} {r['threshold']:.4f}")
    return 0
