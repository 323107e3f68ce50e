"""Shrinks a lab run for shipping: keeps each flow's first N packets and every TCP packet
carrying FIN or RST (so flows still close where they closed), drops the rest, and relabels the
trimmed capture with the run's ledger. Detectors read only the first few packets of a flow, so
what they see is unchanged; byte and packet totals in the labels shrink accordingly.

    python -m lab.trim RUN_DIR OUT_DIR [--packets 16]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import dpkt

from .label import label_capture
from .services import ATTACKER_IPS


def trim_capture(src: Path, dst: Path, packets: int) -> tuple[int, int]:
    """(packets read, packets kept)."""
    seen: dict[tuple, int] = {}
    n_in = n_out = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        rd = dpkt.pcap.Reader(fi)
        wr = dpkt.pcap.Writer(fo, snaplen=rd.snaplen, linktype=rd.datalink())
        for ts, buf in rd:
            n_in += 1
            keep = True
            try:
                ip = dpkt.ethernet.Ethernet(buf).data
            except (dpkt.UnpackError, IndexError):
                ip = None
            if isinstance(ip, dpkt.ip.IP):
                l4 = ip.data
                sp = getattr(l4, "sport", 0)
                dp = getattr(l4, "dport", 0)
                a, b = (ip.src, sp), (ip.dst, dp)
                key = (min(a, b), max(a, b), ip.p)
                i = seen.get(key, 0)
                seen[key] = i + 1
                closing = isinstance(l4, dpkt.tcp.TCP) and bool(l4.flags & 0x05)
                keep = i < packets or closing
            if keep:
                wr.writepkt(buf, ts)
                n_out += 1
    return n_in, n_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=16)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n_in, n_out = trim_capture(args.run / "capture.pcap", args.out / "capture.pcap", args.packets)
    ledger = json.loads((args.run / "ledger.json").read_text())
    counts = label_capture(args.out / "capture.pcap", ledger, ATTACKER_IPS,
                           args.out / "labels.conn.log")
    for f in ("ledger.json", "versions.json"):
        shutil.copy(args.run / f, args.out / f)
    info = json.loads((args.run / "run.json").read_text())
    info["trimmed"] = {"packets_per_flow": args.packets, "packets_in": n_in,
                       "packets_kept": n_out}
    info["flows"] = {f"{lab}/{fam}": n for (lab, fam), n in sorted(counts.items())}
    (args.out / "run.json").write_text(json.dumps(info, indent=1))
    print(f"kept {n_out} of {n_in} packets; flows: {info['flows']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
