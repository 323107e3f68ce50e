"""Coverage against Zeek on a corpus: which captures with IP traffic give no flow, and why.

Runs `semiflow extract` (K=2, L=128: the flows are what is measured, not the samples) over
every capture of a corpus and prints the captures that hold IP packets yet give zero flows,
the skipped packets by reason, and what decapsulation and reassembly added. A capture "holds
IP traffic" when a packet was used or skipped for an IP-level reason (anything but a
link-layer or capture-record fault).

    .venv/bin/python benchmarks/corpus_coverage.py [--corpus ../shared/corpus] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def not_ip_reasons() -> set[str]:
    """Skip reasons of records that carry no IP traffic (frame.SKIP_REASONS' own words)."""
    from semiflow.detector.sample import frame as fr
    return {fr.SKIP_REASONS[i] for i in (fr.SKIP_UNKNOWN_LINKTYPE, fr.SKIP_TRUNCATED_LINK,
                                         fr.SKIP_NON_IP, fr.SKIP_TRUNCATED_RECORD,
                                         fr.SKIP_BAD_RECORD)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"))
    ap.add_argument("--json", help="write the per-capture figures here")
    args = ap.parse_args()
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.extract import extract

    caps = sorted(str(p) for p in (Path(args.corpus) / "pcaps").rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory(prefix="semiflow-cov-") as d:
        rep = extract(caps, Path(d) / "f", FlowSampleSpec(k=2, l=128, selection="all"))
        flows = FlowStore.open(Path(d) / "f").flows
        per = flows.groupby("source_file").size().to_dict()
    rows = []
    not_ip = not_ip_reasons()
    for f in rep.per_file:
        ip_skips = {r: n for r, n in f["skipped"].items() if r not in not_ip}
        rows.append({"file": f["file"], "flows": int(per.get(f["file"], 0)),
                     "packets": f["packets"], "skipped": f["skipped"],
                     "decoded": f.get("decoded", {}),
                     "has_ip": bool(f["packets"] or ip_skips)})
    zero = [r for r in rows if r["has_ip"] and r["flows"] == 0]
    print(f"{len(rows)} captures, {rep.packets:,} packets used, {rep.skipped_total:,} skipped, "
          f"{rep.flows:,} flows")
    print(f"captures with IP traffic and zero flows: {len(zero)}")
    for r in zero:
        why = ", ".join(f"{n} {k}" for k, n in sorted(r["skipped"].items(), key=lambda x: -x[1]))
        print(f"  {Path(r['file']).relative_to(args.corpus)}: {why}")
    print("skipped packets by reason:")
    for k, n in sorted(rep.skipped.items(), key=lambda x: -x[1]):
        print(f"  {n:>9,}  {k}")
    print("decoded:")
    for k, n in rep.decoded.items():
        print(f"  {n:>9,}  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps({"captures": rows, "skipped": rep.skipped,
                                               "decoded": rep.decoded},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
