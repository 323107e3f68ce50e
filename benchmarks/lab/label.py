"""Per-flow ground truth for a lab capture, written as a labelled Zeek conn.log (Stratosphere
style: `label` Benign/Malicious, `detailedlabel` the attack family) that
`semiflow extract --conn-labels` reads directly.

Rule: a flow is anomalous iff one of its endpoints is an attacker address. Its family is the
attack phase that was running when the flow started (phases are sequential; a flow of an
attacker address outside every phase window is `attacker_other`). Flows are built by the
independent dpkt flow table (flowtable.py), with the same rules as `semiflow extract`.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

from .flowtable import flow_records

PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
          "duration", "orig_bytes", "resp_bytes", "pkts", "orig_ip_bytes", "resp_ip_bytes",
          "label", "detailedlabel"]
TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "interval", "count",
         "count", "count", "count", "count", "string", "string"]
GRACE = 30.0  # s after a phase ends: late packets (e.g. a resolver retrying tunnel queries)


def _addr(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def family_of(ts: float, addrs: set[str], ledger: list[dict]) -> str:
    best = None
    for e in ledger:
        if "start" not in e or not addrs & set(e.get("attacker_hosts", [e["attacker"]])):
            continue
        if e["start"] - 1.0 <= ts <= e.get("end", e["start"]) + GRACE:
            if best is None or e["start"] > best["start"]:
                best = e
    return best["phase"] if best else "attacker_other"


def label_capture(pcap: str | Path, ledger: list[dict], attackers: frozenset[str] | set[str],
                  out: str | Path) -> Counter:
    """Writes the labelled conn.log; returns flows per (label, family)."""
    flows = sorted(flow_records(pcap), key=lambda f: f["first"])
    counts: Counter = Counter()
    lines = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
             "#unset_field\t-", "#path\tconn", "#fields\t" + "\t".join(FIELDS),
             "#types\t" + "\t".join(TYPES)]
    for i, f in enumerate(flows):
        oh, rh = _addr(f["orig"][0]), _addr(f["resp"][0])
        op, rp = f["icmp"] if f["icmp"] is not None else (f["orig"][1], f["resp"][1])
        hit = {oh, rh} & attackers
        if hit:
            label, fam = "Malicious", family_of(f["first"], hit, ledger)
        else:
            label, fam = "Benign", "-"
        counts[(label, fam if hit else "benign")] += 1
        lines.append("\t".join([
            f"{f['first']:.6f}", f"L{i:09d}", oh, str(op), rh, str(rp),
            PROTO.get(f["proto"], str(f["proto"])), f"{f['last'] - f['first']:.6f}",
            str(f["orig_bytes"]), str(f["resp_bytes"]), str(f["n"]),
            str(f["orig_ip_bytes"]), str(f["resp_ip_bytes"]), label, fam]))
    Path(out).write_text("\n".join(lines) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Relabel a run directory in place (after a labelling fix): python -m lab.label RUN..."""
    import argparse
    import json

    from .services import ATTACKER_IPS
    ap = argparse.ArgumentParser(description="relabel lab runs in place")
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for run in args.runs:
        ledger = json.loads((run / "ledger.json").read_text())
        counts = label_capture(run / "capture.pcap", ledger, ATTACKER_IPS,
                               run / "labels.conn.log")
        info = json.loads((run / "run.json").read_text())
        info["flows"] = {f"{lab}/{fam}": n for (lab, fam), n in sorted(counts.items())}
        (run / "run.json").write_text(json.dumps(info, indent=1))
        print(run, info["flows"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
