"""`semiflow suricata --pcap-dir DIR --eve FILE -o OUT_EVE`: score what Suricata captured.

Suricata (suricata/semiflow.yaml) writes the first bytes of every flow with pcap-log and its
flows to eve.json; this command follows both, scores every flow with the model's spec and
writes EVE `semiflow` records next to eve.json. With --socket, anomalous hosts go into a
Suricata dataset (dataset-add, removed after --ttl) so that suricata/semiflow.rules alerts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("suricata", help="score Suricata's pcap-log, write EVE semiflow records",
                       description="Follow Suricata's pcap-log directory and eve.json, score "
                                   "every flow, write EVE `semiflow` records joined to "
                                   "Suricata's flows by community_id / flow_id; optionally "
                                   "feed a Suricata dataset over the unix socket.")
    p.add_argument("--pcap-dir", required=True, metavar="DIR",
                   help="Suricata's pcap-log directory (files log.pcap.SEC[.USEC])")
    p.add_argument("--eve", required=True, metavar="FILE", help="Suricata's eve.json")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model artifact directory (default: the bundled model)")
    p.add_argument("-o", "--out", default=None, metavar="OUT_EVE",
                   help="EVE output (default: semiflow.json next to eve.json)")
    p.add_argument("--follow", action="store_true",
                   help="keep following the growing directory (live Suricata) until stopped")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="checkpoint file for exact resume (default: OUT_EVE.state)")
    p.add_argument("--no-state", action="store_true", help="no checkpoint, start from scratch")
    p.add_argument("--prefix", default="log.pcap", help="pcap-log filename (default log.pcap)")
    p.add_argument("--socket", default=None, metavar="PATH",
                   help="Suricata's unix command socket: put anomalous hosts in --dataset")
    p.add_argument("--dataset", default="semiflow-flagged", metavar="NAME",
                   help="dataset name, as declared in suricata.yaml (default semiflow-flagged)")
    p.add_argument("--dataset-type", default="ip", choices=["ip", "ipv4"],
                   help="dataset type in suricata.yaml (default ip)")
    p.add_argument("--flag", choices=["src", "dst"], default="src",
                   help="which host of an anomalous flow to add: originator (src, default) "
                        "or responder (dst)")
    p.add_argument("--ttl", type=float, default=3600.0, metavar="S",
                   help="seconds a host stays in the dataset after its last flag (default 3600)")
    p.add_argument("--rate", type=float, default=10.0, metavar="N",
                   help="at most N dataset-add commands per second (default 10)")
    p.add_argument("--min-flags", type=int, default=1, metavar="N",
                   help="add a host to the dataset only after N anomalous flows within "
                        "--flag-window (default 1; the rule then alerts on all its traffic "
                        "for --ttl, so N > 1 keeps one false positive from flooding alerts)")
    p.add_argument("--flag-window", type=float, default=300.0, metavar="S",
                   help="seconds in which --min-flags flags must fall (default 300)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the model's alert threshold")
    p.add_argument("--join-wait", type=float, default=None, metavar="S",
                   help="hold a record up to S seconds for Suricata's flow_id "
                        "(default 60 with --follow, else 0: eve.json is complete)")
    p.add_argument("--poll", type=float, default=0.5, metavar="S",
                   help="seconds between polls with --follow (default 0.5)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="with --follow: stop after S seconds without new data (counted "
                        "from the first data read)")
    p.add_argument("--scored-only", action="store_true",
                   help="no records for flows without a selected packet (unscored)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="write the final counters as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semiflow.cli_score import default_model_dir
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.suricata_connector import SuricataConnector
    from semiflow.plugin.suricata_socket import DatasetFeeder, SuricataSocket

    if not Path(args.pcap_dir).is_dir():
        raise ValueError(f"{args.pcap_dir}: no such directory (Suricata's pcap-log dir)")
    if not args.follow and not Path(args.eve).is_file():
        raise ValueError(f"{args.eve}: no such file (Suricata's eve.json)")
    out = Path(args.out) if args.out else Path(args.eve).parent / "semiflow.json"
    state = None if args.no_state else Path(args.state or str(out) + ".state")
    scorer = load_scorer(args.model or default_model_dir(), device=args.device)
    feeder = None
    if args.socket:
        feeder = DatasetFeeder(SuricataSocket(args.socket), args.dataset, args.dataset_type,
                               ttl=args.ttl, rate=args.rate, min_flags=args.min_flags,
                               window=args.flag_window)
    join_wait = args.join_wait if args.join_wait is not None else (60.0 if args.follow else 0.0)
    conn = SuricataConnector(scorer, args.pcap_dir, args.eve, out, state_path=state,
                             feeder=feeder, flag=args.flag, join_wait=join_wait,
                             write_unscored=not args.scored_only, threshold=args.threshold)
    stop = []
    if args.follow:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.append(1))
    t0 = time.time()
    try:
        if not args.follow:
            conn.step(final=True)
        else:
            last_new = time.time()
            while not stop:
                before = (conn.follower.counters.bytes_read, conn.counters.records)
                conn.step()
                if (conn.follower.counters.bytes_read, conn.counters.records) != before:
                    last_new = time.time()
                elif args.idle_exit is not None and conn.follower.counters.bytes_read > 0 \
                        and time.time() - last_new > args.idle_exit:
                    stop.append("idle")
                    break
                time.sleep(args.poll)
            # idle exit (the capture is over) or no state file (no restart to come): finish
            # the live flows now; a signal with a state file keeps them in the checkpoint.
            if state is None or "idle" in stop:
                conn.step(final=True)
            elif feeder is not None:
                feeder.pump()
    finally:
        conn.close()
    rep = conn.report()
    rep["seconds"] = round(time.time() - t0, 3)
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=1))
    _summary(rep, out, file=sys.stdout)
    return 0


def _summary(rep: dict, out: Path, file) -> None:
    c, p, e = rep["connector"], rep["pcap_log"], rep["eve"]
    print(f"{c['flows']} flows: {c['scored']} scored, {c['anomalous']} anomalous, "
          f"{c['unscored']} unscored; {c['records']} records ({c['joined']} joined to a "
          f"Suricata flow_id, {c['held']} held) -> {out}", file=file)
    print(f"pcap-log: {p['files_done']} files done, {p['bytes_read']} bytes, "
          f"{rep['packets']} packets; {p['truncated_tails']} truncated tails, "
          f"{p['files_vanished']} vanished, {p['bad_files']} bad files; "
          f"{rep['live_flows']} flows still open", file=file)
    print(f"eve.json: {e['records']} records, {e['malformed']} malformed lines, "
          f"{e['rotations']} rotations", file=file)
    if "dataset" in rep:
        d = rep["dataset"]
        print(f"dataset: {d['added']} added, {d['removed']} removed, {d['refreshed']} "
              f"refreshed, {d['rate_limited']} rate-limited, {d['socket_errors']} socket "
              f"errors, {d['refused']} refused, {d.get('below_min', 0)} flags below "
              "--min-flags", file=file)
    if rep.get("late_packets"):
        print(f"  note: {rep['late_packets']} pcap-log packets came more than 1 s behind the "
              f"capture clock (up to {rep['max_lag_s']:.1f} s): several Suricata worker "
              "threads share the file, or (--follow) packets were written later than the idle "
              "clock assumed; flows may have ended early and been split. Offline, run "
              "suricata -r with --runmode single (docs/suricata.md)", file=file)
    for line in rep["problems"]:
        print(f"  note: {line}", file=file)
