"""Prints the table of flows per family and label for lab runs (markdown, for the README).

    python -m lab.summary lab-out/train-benign lab-out/test-mixed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(runs: list[Path]) -> str:
    infos = [json.loads((r / "run.json").read_text()) for r in runs]
    keys = sorted({k for i in infos for k in i["flows"]},
                  key=lambda k: (not k.startswith("Benign"), k))
    head = "| label / family | " + " | ".join(
        f"{i['scenario']} (seed {i['seed']})" for i in infos) + " |"
    rows = [head, "|---|" + "---|" * len(infos)]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(f"{i['flows'].get(k, 0):,}" for i in infos) + " |")
    rows.append("| **all flows** | " + " | ".join(f"{sum(i['flows'].values()):,}"
                                                  for i in infos) + " |")
    rows.append("| capture sha256 | " + " | ".join(f"`{i['capture_sha256'][:16]}…`"
                                                   for i in infos) + " |")
    return "\n".join(rows)


def phases(run: Path) -> str:
    ledger = json.loads((run / "ledger.json").read_text())
    rows = ["| phase | tool | attacker | status | seconds |", "|---|---|---|---|---|"]
    for e in ledger:
        secs = f"{e['end'] - e['start']:.0f}" if "end" in e and "start" in e else "-"
        status = e["status"] + (f": {e['reason']}" if "reason" in e else "")
        rows.append(f"| {e['phase']} | {e['tool']} | {e['attacker']} | {status} | {secs} |")
    return "\n".join(rows)


if __name__ == "__main__":
    runs = [Path(a) for a in sys.argv[1:]]
    print(table(runs))
    for r in runs:
        if (r / "ledger.json").exists() and json.loads((r / "ledger.json").read_text()):
            print()
            print(phases(r))
