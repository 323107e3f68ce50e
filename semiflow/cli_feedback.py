"""`semiflow feedback`: analysts mark flagged flows or host/service patterns as benign.

    semiflow feedback mark --uid UID [--from LOGDIR|EXTRACT] --reason "..." -o allowlist.tsv
    semiflow feedback mark --host 10.0.0.5 [--port 443/tcp] --reason "..." -o allowlist.tsv
    semiflow feedback list allowlist.tsv
    semiflow feedback export allowlist.tsv --extract DIR... -o NORMAL_EXTRACT

The allow-list is the file zeek_scripts/allowlist.zeek reads (Input framework, REREAD), the
detector honours (`semiflow score --allowlist`) and `export` turns into normal training data
for `semiflow train`.
"""

from __future__ import annotations

import argparse
import getpass
import time
from pathlib import Path

from semiflow.cli import UsageError


def register(sub) -> None:
    p = sub.add_parser("feedback", help="mark flows benign: allow-list + retraining data",
                       description="Maintain the allow-list the Zeek package and the detector "
                                   "honour, and export marked flows as normal training data.")
    fsub = p.add_subparsers(dest="feedback_command", metavar="ACTION")
    fsub.required = True
    m = fsub.add_parser("mark", help="add a rule (a flow by uid, or a host/service pattern)")
    m.add_argument("--uid", help="the flagged flow's uid")
    m.add_argument("--from", dest="source", metavar="LOGDIR|EXTRACT|LOG",
                   help="where to look the uid up to record its 5-tuple (a log directory, a "
                        "semiflow/notice/conn log, or an extraction directory)")
    m.add_argument("--host", help="an address or subnet (either endpoint)")
    m.add_argument("--port", help="responder service, PORT[/tcp|udp|icmp] (default tcp)")
    m.add_argument("--reason", required=True, help="why it is benign")
    m.add_argument("--analyst", default=None, help="who decided (default: the login name)")
    m.add_argument("--expires", type=float, metavar="DAYS",
                   help="the rule stops matching after this many days (default: never)")
    m.add_argument("-o", "--out", required=True, metavar="ALLOWLIST",
                   help="allow-list file (created, or rules added)")
    m.set_defaults(func=run_mark)
    ls = fsub.add_parser("list", help="print the rules of an allow-list")
    ls.add_argument("allowlist")
    ls.set_defaults(func=run_list)
    e = fsub.add_parser("export", help="marked flows -> extraction dir labelled normal")
    e.add_argument("allowlist")
    e.add_argument("--extract", nargs="+", required=True, metavar="DIR",
                   help="extraction directories holding the marked flows")
    e.add_argument("-o", "--out", required=True, metavar="NORMAL_EXTRACT")
    e.add_argument("--no-patterns", action="store_true",
                   help="only flows marked by uid, not those matching host/service rules")
    e.set_defaults(func=run_export)


def _lookup(uid: str, source: str, report) -> dict | None:
    """The uid's 5-tuple and start from logs or an extraction directory; `report` (a
    ZeekLogReport) counts what reading the logs skipped."""
    from semiflow.training.report import find_logs, load_log

    src = Path(source)
    if (src / "extract.json").exists():
        from semiflow.plugin.flowstore import FlowStore
        f = FlowStore.open(src).flows
        hit = f[f["uid"] == uid]
        if len(hit):
            r = hit.iloc[0]
            return {"orig_h": r.orig_h, "orig_p": int(r.orig_p), "resp_h": r.resp_h,
                    "resp_p": int(r.resp_p), "proto": r.proto, "ts": float(r.ts)}
        return None
    logs = find_logs([source])
    for kind in ("semiflow", "notice", "conn"):
        df = load_log(logs.get(kind, []), report)
        if "uid" not in df:
            continue
        tuple_cols = ["id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "ts"]
        if not set(tuple_cols) <= set(df.columns):
            continue
        hit = df[df["uid"] == uid].dropna(subset=tuple_cols)  # unset fields: no 5-tuple
        if len(hit):
            r = hit.iloc[0]
            proto = str(r["proto"]) if "proto" in hit and r["proto"] == r["proto"] else None
            return {"orig_h": r["id.orig_h"], "orig_p": int(r["id.orig_p"]),
                    "resp_h": r["id.resp_h"], "resp_p": int(r["id.resp_p"]), "proto": proto,
                    "ts": float(r["ts"])}
    return None


def run_mark(args: argparse.Namespace) -> int:
    from semiflow.plugin.allowlist import AllowRule, add_rules

    if not (args.uid or args.host or args.port):
        raise UsageError("give --uid UID, or --host H and/or --port P")
    if args.uid and (args.host or args.port):
        raise UsageError("--uid marks one flow: do not combine it with --host/--port")
    tup = {}
    if args.uid and args.source:
        from semiflow.plugin.zeeklog import ZeekLogReport

        read = ZeekLogReport()
        tup = _lookup(args.uid, args.source, read) or {}
        if not tup:
            raise UsageError(f"uid {args.uid} not found in {args.source}"
                             + "".join(f"; {n}" for n in read.notes()))
        for note in read.notes():
            print(f"note: {note}")
    host = args.host
    if host and "/" not in host:
        host = host + ("/128" if ":" in host else "/32")
    expires = time.time() + args.expires * 86400 if args.expires else None
    rule = AllowRule(reason=args.reason, analyst=args.analyst or getpass.getuser(),
                     uid=args.uid, host=host, service=args.port, expires=expires, **tup)
    rules = add_rules(args.out, [rule])
    what = f"uid {args.uid}" if args.uid else " ".join(
        x for x in (f"host {rule.host}" if rule.host else "",
                    f"service {rule.service}" if rule.service else "") if x)
    print(f"rule {rule.rule}: {what} ({args.reason}); {len(rules)} rule(s) in {args.out}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from semiflow.plugin.allowlist import AllowlistReport, read_allowlist

    rep = AllowlistReport()
    rules = read_allowlist(args.allowlist, rep)
    if not Path(args.allowlist).exists():
        raise UsageError(f"{args.allowlist}: no such file")
    for r in rules:
        what = r.uid and f"uid={r.uid}" or " ".join(
            f"{k}={v}" for k, v in (("host", r.host), ("service", r.service)) if v)
        exp = " EXPIRED" if r.expired() else ""
        print(f"{r.rule}\t{what}\t{r.reason}\t{r.analyst}{exp}")
    print(f"{len(rules)} rule(s); {rep.invalid} invalid line(s) skipped"
          + (": " + "; ".join(rep.examples) if rep.examples else ""))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from semiflow.plugin.allowlist import export_marked, read_allowlist

    if not Path(args.allowlist).exists():
        raise UsageError(f"{args.allowlist}: no such file")
    rules = read_allowlist(args.allowlist)
    n = export_marked(rules, args.extract, args.out, patterns=not args.no_patterns)
    print(f"{n} marked flow(s) written to {args.out} (label normal, family feedback); "
          f"train with: semiflow train YOUR_EXTRACT {args.out} -o MODEL")
    if n == 0:
        print("note: no flow of the extraction matched a rule (uids differ between live Zeek "
              "and extraction: mark with --from so the 5-tuple is recorded)")
    return 0
