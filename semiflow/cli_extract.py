"""`semiflow extract CAPTURE... -o OUT`: captures -> flow samples + flow table."""

from __future__ import annotations

import argparse
import sys

from semiflow.detector.spec import FlowSampleSpec


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
                                   "Zeek-like flows and write samples.npy + flows.parquet.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--manifest", help="manifest CSV giving file-level labels")
    p.add_argument("--conn-labels", action="append", default=[], metavar="CONN_LOG",
                   help="labelled Zeek conn.log (label column); repeatable")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first skipped packet or unreadable file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_spec_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels, Manifest

    spec = spec_from_args(args)
    manifest = Manifest(args.manifest) if args.manifest else None
    conn = ConnLogLabels(args.conn_labels) if args.conn_labels else None
    report = extract(args.captures, args.out, spec, manifest=manifest, conn_labels=conn,
                     strict=args.strict, progress=not args.quiet and sys.stderr.isatty())
    print(f"{report.files} capture(s), {report.packets} packets, {report.flows} flows "
          f"-> {args.out}")
    for line in report.summary_lines() + (conn.notes() if conn is not None else []):
        print(line)
    return 0
