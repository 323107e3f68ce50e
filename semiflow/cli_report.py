"""`semiflow report LOG_DIR_OR_FILES... -o report.html`: one self-contained HTML page for
analysts (timeline, scores vs threshold, top hosts/services, flagged flows joined to conn.log,
coverage, explanations, feedback download). Opening it fetches nothing."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("report", help="HTML report of semiflow/notice/conn/dyad logs",
                       description="Read semiflow.log, notice.log, conn.log and "
                                   "semiflow_dyad.log (TSV or JSON, rotated/gzip) and write one "
                                   "self-contained HTML file.")
    p.add_argument("logs", nargs="+", metavar="LOG_DIR_OR_FILE")
    p.add_argument("-o", "--out", required=True, metavar="HTML")
    p.add_argument("--model", metavar="DIR", help="model artifact, to explain flagged flows")
    p.add_argument("--extract", nargs="*", default=[], metavar="DIR",
                   help="extraction directories holding the flagged flows' samples")
    p.add_argument("--captures", nargs="*", default=[], metavar="PCAP",
                   help="or the captures the logs came from (re-cut with the model's spec)")
    p.add_argument("--explain-top", type=int, default=5,
                   help="flagged flows to explain (default 5)")
    p.add_argument("--title", default="SemiFlow log review")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semiflow.training.report import build_report

    if (args.extract or args.captures) and not args.model:
        raise ValueError("--extract/--captures need --model DIR to explain flows")
    res = build_report(args.logs, args.out, model_dir=args.model, extract_dirs=args.extract,
                       captures=args.captures, top_explain=args.explain_top, title=args.title)
    print(f"{res['flows']} flows, {res['flagged']} flagged, {res['notices']} notices, "
          f"{len(res['explained'])} explained; wrote {res['out']}")
    if not res["flagged"] and not res["anomalous_dyads"]:
        print("no anomalies in this period")
    for note in res["notes"]:
        print(f"note: {note}")
    return 0
