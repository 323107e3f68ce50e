"""`python -m semiflow.demo`: score the bundled sample capture with the bundled model.

Works offline from a fresh install: both live in the package (semiflow/data/). Writes
Zeek-format semiflow.log and notice.log into ./demo-out/ (or the directory given) and prints
what was flagged.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from semiflow.cli_score import default_model_dir, print_summary, score_captures


def sample_capture() -> Path:
    return Path(str(resources.files("semiflow") / "data" / "sample.pcap"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiflow.demo", description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="demo-out", help="output directory (default demo-out)")
    ap.add_argument("--json", action="store_true", help="Zeek JSON logs instead of TSV")
    args = ap.parse_args(argv)
    model, pcap = default_model_dir(), sample_capture()
    for p in (model, pcap):
        if not p.exists():
            print(f"semiflow demo: bundled file missing: {p} (reinstall semiflow)", file=sys.stderr)
            return 2
    print(f"scoring {pcap.name} (synthetic: benign HTTP/DNS/TLS plus a port scan, a fuzzed "
          "flow and a DNS tunnel) with the bundled model")
    res = score_captures([str(pcap)], model, args.out, json=args.json, device="cpu")
    print_summary(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
