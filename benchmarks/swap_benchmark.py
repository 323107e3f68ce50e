"""Model swaps under load: promote -> first verdict of the new version, and verdicts lost.

    python benchmarks/swap_benchmark.py [--rate 1000] [--seconds 60] [--swaps 6]
        [--candidate MODEL_DIR] [--follow-s 2]

A Zeek double (tests/zeek_double.py) publishes the shipped lab sample's flows as flow_batch
events (16 flows each) at --rate flows/s to `semiflow serve --models STORE`, while this script
promotes the other of two versions every --seconds/--swaps seconds: odd swaps are found by
the store poll (every --follow-s), even ones are signalled with SIGHUP. Printed per swap: how
it was noticed and the time from the promotion to the first verdict of the new version; in
total: flows sent, verdicts, duplicates, missing (the target: 0 and 0). The two versions are
the bundled model and --candidate (default: the bundled model under another version name
with its threshold 10% higher: the same cost to load and warm as a retrained model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BUNDLED = ROOT / "semiflow" / "data" / "model"


class TimedList(list):
    """The double's `received`, with the arrival time of each event."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def append(self, x) -> None:
        self.times.append(time.monotonic())
        super().append(x)


def renamed(src: Path, dst: Path, version: str, factor: float) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "semiflow-model.json").read_text())
    meta["model_version"] = version
    if meta.get("threshold"):
        meta["threshold"]["value"] *= factor
    (dst / "semiflow-model.json").write_text(json.dumps(meta))
    return dst


async def run(args) -> dict:
    from serve_helpers import lab_sample_batches, with_fresh_uids
    from zeek_double import ZeekDouble

    from semiflow.model_store import ModelStore
    from semiflow.plugin import zeek_wire as zw

    tmp = Path(tempfile.mkdtemp(prefix="swapbench-"))
    store = ModelStore.open_or_create(tmp / "store")
    a = store.add(BUNDLED)
    cand = Path(args.candidate) if args.candidate else \
        renamed(BUNDLED, tmp / "cand", "semiflow-candidate", 1.1)
    b = store.add(cand)
    store.promote(a, "benchmark start")
    batch = 16
    _, msgs = lab_sample_batches(batch)
    dbl = await ZeekDouble().start()
    dbl.received = TimedList()
    cmd = [sys.executable, "-m", "semiflow", "serve", "--zeek", dbl.url, "--models",
           str(store.root), "--follow-s", str(args.follow_s), "--lifecycle-dir", str(tmp),
           "--device", args.device, "--max-batch", "256"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent: list[str] = []
    swaps: list[dict] = []
    try:
        while not dbl.clients:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read()[-2000:])
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        every = args.seconds / (args.swaps + 1)
        next_swap, i, current = t0 + every, 0, a
        while time.monotonic() - t0 < args.seconds:
            topic, margs = msgs[i % len(msgs)]
            margs, uids = with_fresh_uids(margs, f"R{i}_")  # every round is new flows
            await dbl.publish(topic, zw.FLOW_BATCH, margs)
            sent += uids
            i += 1
            if time.monotonic() >= next_swap and len(swaps) < args.swaps:
                current = b if current == a else a
                how = "SIGHUP" if len(swaps) % 2 else "poll"
                store.promote(current, f"benchmark swap {len(swaps) + 1}")
                swaps.append({"to": current, "how": how, "at": time.monotonic()})
                if how == "SIGHUP":
                    proc.send_signal(signal.SIGHUP)
                next_swap += every
            await asyncio.sleep(batch / args.rate)
        end = time.monotonic() + 60
        while dbl.verdict_flows < len(sent) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        await dbl.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    # first verdict of each swap's version after its promotion
    arrivals = []
    for (_, name, ev_args), t in zip(dbl.received, dbl.received.times, strict=True):
        if name == zw.VERDICT_BATCH:
            arrivals.append((t, zw.decode_args(name, ev_args)["model_version"]))
    for s in swaps:
        first = next((t for t, v in arrivals if t >= s["at"] and v == s["to"]), None)
        s["latency_ms"] = None if first is None else round((first - s["at"]) * 1000, 1)
    got = [v.uid for v in dbl.verdicts()]
    return {"rate": args.rate, "seconds": args.seconds, "flows_sent": len(sent),
            "verdicts": len(got), "duplicates": len(got) - len(set(got)),
            "missing": len(set(sent) - set(got)),
            "statuses": sorted({v.status for v in dbl.verdicts()}),
            "swaps": [{k: v for k, v in s.items() if k != "at"} for s in swaps],
            "serve_exit": proc.returncode, "serve_log_tail": out[-1500:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="flows/s offered (1000)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--swaps", type=int, default=6)
    ap.add_argument("--follow-s", type=float, default=2.0, help="serve's store poll (2)")
    ap.add_argument("--candidate", help="the second version's artifact dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    res = asyncio.run(run(args))
    print(f"{res['flows_sent']} flows offered at {res['rate']:g}/s for {res['seconds']:g}s: "
          f"{res['verdicts']} verdicts, {res['duplicates']} duplicates, {res['missing']} "
          f"missing; statuses {res['statuses']}")
    for n, s in enumerate(res["swaps"], 1):
        print(f"  swap {n} to {s['to']} ({s['how']}): first verdict of the new version "
              f"{s['latency_ms']} ms after the promotion")
    if res["serve_exit"] != 0:
        print(res["serve_log_tail"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["missing"] == 0 and res["duplicates"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
