"""`semiflow extract CAPTURE... -o OUT`: captures -> flow samples + flow table."""

from __future__ import annotations

import argparse
import os
import sys

from semiflow.detector.sample.spec import FlowSampleSpec


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The flow-sample spec options, shared by every command that builds samples."""
    d = FlowSampleSpec()
    p.add_argument("-k", "--packets", type=int, default=d.k, metavar="K",
                   help=f"packets per flow sample (default {d.k})")
    p.add_argument("-l", "--bytes", type=int, default=d.l, metavar="L",
                   help=f"bytes per packet, from the IP header (default {d.l})")
    p.add_argument("--select", choices=["payload", "all"], default=d.selection,
                   help="which packets: those carrying transport payload (default) or all")
    p.add_argument("--mask", default=",".join(d.mask),
                   help="comma-separated fields to zero: addresses,ports,ttl,checksums,ip_id "
                        f"(default {','.join(d.mask)}; 'none' for nothing)")


def spec_from_args(args: argparse.Namespace) -> FlowSampleSpec:
    mask = () if args.mask in ("", "none") else tuple(m.strip() for m in args.mask.split(","))
    return FlowSampleSpec(k=args.packets, l=args.bytes, selection=args.select, mask=mask)


def register(sub) -> None:
    p = sub.add_parser("extract", help="captures -> flow samples and a flow table",
                       description="Read pcap/pcapng captures (gzip too), cut them into "
                                   "Zeek-like flows and write an extraction directory: "
                                   "packets.bin + pkt_*.npy (the flow samples), "
                                   "flows.parquet (the flow table) and extract.json (spec, "
                                   "inputs, packets used and skipped per capture).")
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="capture files, or directories (searched recursively for captures)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--manifest", help="manifest CSV giving file-level labels")
    p.add_argument("--conn-labels", action="append", default=[], metavar="CONN_LOG",
                   help="labelled Zeek conn.log (label column); repeatable")
    p.add_argument("--label", choices=["normal", "anomalous"],
                   help="label every flow so (e.g. normal: your own benign traffic, to train "
                        "on without writing a manifest); not with --manifest/--conn-labels")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first skipped packet or unreadable file")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="scan N captures at a time, one process each (0 = one per core); "
                        "each capture is then its own flow table, so a flow spanning two "
                        "files becomes two (default 1: one table across the captures)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_spec_arguments(p)
    p.set_defaults(func=run)


def find_captures(paths: list[str]) -> tuple[list[str], list[str]]:
    """training.extract.expand_captures (captures, other files under the directories), with
    a one-line usage error when there is no capture (what `extract` and `score` take)."""
    from semiflow.cli import UsageError
    from semiflow.training.extract import expand_captures

    captures, ignored = expand_captures(paths)
    if not captures:
        raise UsageError(f"no capture found in {', '.join(paths)}"
                         + (f" ({len(ignored)} other file(s) ignored)" if ignored else ""))
    return captures, ignored


def run(args: argparse.Namespace) -> int:
    from semiflow.cli import UsageError
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels, Manifest

    spec = spec_from_args(args)
    if args.label and (args.manifest or args.conn_labels):
        raise UsageError("--label labels every flow: do not combine it with --manifest or "
                         "--conn-labels")
    captures, ignored = find_captures(args.captures)
    manifest = Manifest(args.manifest) if args.manifest else None
    conn = ConnLogLabels(args.conn_labels) if args.conn_labels else None
    if args.jobs < 0:
        raise UsageError("--jobs must be >= 0")
    jobs = min(args.jobs or os.cpu_count() or 1, len(captures))
    progress = not args.quiet and sys.stderr.isatty()
    if jobs > 1:
        from semiflow.training.extract_parallel import extract_parallel

        report = extract_parallel(captures, args.out, spec, jobs, manifest=manifest,
                                  conn_labels=conn, strict=args.strict, progress=progress,
                                  label=args.label)
    else:
        report = extract(captures, args.out, spec, manifest=manifest, conn_labels=conn,
                         strict=args.strict, progress=progress, label=args.label)
    if report.packets + report.skipped_total == 0:
        why = "; ".join(f"{p}: {w}" for p, w in report.bad_files[:3])
        raise UsageError(f"nothing read from {len(captures)} capture(s)"
                         + (f": {why}" if why else " (no packets in them)")
                         + (f"; and {len(report.bad_files) - 3} more unreadable"
                            if len(report.bad_files) > 3 else ""))
    print(f"{report.files} capture(s), {report.packets} packets used, {report.skipped_total} "
          f"skipped, {report.flows} flows -> {args.out}")
    if ignored:
        print(f"ignored {len(ignored)} file(s) in the directories that are not captures "
              f"(e.g. {ignored[0]})")
    for what, n in report.decoded.items():
        print(f"{what}: {n}")
    for line in (report.summary_lines() + report.file_lines()
                 + (conn.notes() if conn is not None else [])):
        print(line)
    return 0
