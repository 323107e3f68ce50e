"""Soak: `semiflow serve` for a long run at a steady share of its capacity, through the Zeek
double, with a detector restart and a Zeek restart in the middle.

    python benchmarks/soak_benchmark.py [--minutes 30] [--load 0.8] [--model DIR]

First a 20-second saturating burst measures the detector's capacity on this machine; then
flow_batch events (16 flows, the shipped lab sample's flows with fresh uids) are published at
--load x capacity. At one third of the run the detector is stopped (SIGTERM) and started
again; at two thirds the Zeek double is stopped and a new one listens on the same port (serve
must reconnect by itself). Every 10 s: the detector's RSS (with its children) and open file
descriptors. Printed: flows published while a detector was connected, verdicts, counted
sheds and errors, missing (published - verdicts: the target is 0), RSS slope per detector
incarnation (MB per hour, a least-squares line over its samples after the first minute),
file descriptors at the start and end of each incarnation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def start_serve(model: str, url: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "semiflow", "serve", "--zeek", url,
                             "--model", model, "--device", "cpu", "--max-batch", "256",
                             "--lifecycle-dir", str(Path(log.name).parent)],
                            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=log, stderr=subprocess.STDOUT)


def sample(pid: int) -> tuple[float, int]:
    """(RSS MB of the process and its children, open fds of the process)."""
    import psutil

    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    rss = sum(q.memory_info().rss for q in procs if q.is_running())
    return rss / 2**20, len(os.listdir(f"/proc/{pid}/fd"))


def slope_mb_per_hour(samples: list[tuple[float, float, int]]) -> float:
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples])
    keep = t >= t[0] + 60 if len(t) else t
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(t[keep], r[keep], 1)[0] * 3600)


async def run(a) -> dict:
    from serve_helpers import lab_sample_batches, with_fresh_uids
    from zeek_double import ZeekDouble

    from semiflow.plugin import zeek_wire as zw

    _, msgs = lab_sample_batches(16)
    log = open(a.log, "w")
    dbl = await ZeekDouble().start()
    port = dbl.port
    proc = start_serve(a.model, dbl.url, log)
    sent: list[str] = []
    i = 0

    async def connected():
        while not dbl.clients:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: see {a.log}")
            await asyncio.sleep(0.1)

    async def publish_one() -> int:
        nonlocal i
        topic, margs = msgs[i % len(msgs)]
        margs, uids = with_fresh_uids(margs, f"S{i}_")
        i += 1
        got = await dbl.publish(topic, zw.FLOW_BATCH, margs)
        if got:
            sent.extend(uids)
        return len(uids) if got else 0

    await connected()
    # capacity: saturate for 20 s with a bounded window of outstanding flows
    verdicts0 = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        if len(sent) - dbl.verdict_flows < 2048:   # (a count: verdicts() decodes all)
            await publish_one()
        else:
            await asyncio.sleep(0.002)
    while dbl.verdict_flows < len(sent) and time.monotonic() - t0 < 60:
        await asyncio.sleep(0.05)
    capacity = dbl.verdict_flows / (time.monotonic() - t0)
    verdicts0 = dbl.verdict_flows
    rate = a.load * capacity
    print(f"capacity {capacity:,.0f} flows/s; soaking at {rate:,.0f} flows/s "
          f"({a.load:.0%}) for {a.minutes:g} min", flush=True)
    old_verdicts: list = []           # verdicts received by Zeek doubles that were replaced
    incarnations = [{"pid": proc.pid, "samples": []}]
    start = time.monotonic()
    end = start + a.minutes * 60
    next_sample = start
    restarted_detector = restarted_zeek = False
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            try:
                rss, fds = sample(proc.pid)
                incarnations[-1]["samples"].append((now - start, rss, fds))
            except Exception:
                pass
            next_sample += 10
        if not restarted_detector and now >= start + (end - start) / 3:
            restarted_detector = True
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
            proc = start_serve(a.model, dbl.url, log)
            incarnations.append({"pid": proc.pid, "samples": []})
            await connected()
            continue
        if not restarted_zeek and now >= start + 2 * (end - start) / 3:
            restarted_zeek = True
            # Zeek stops: no new flows; the verdicts of those in flight arrive first
            t_stop = time.monotonic()
            while len(old_verdicts) + dbl.verdict_flows < len(sent) and \
                    time.monotonic() - t_stop < 10:
                await asyncio.sleep(0.05)
            old_verdicts += dbl.verdicts()
            await dbl.stop()
            dbl = await ZeekDouble(port=port).start()
            await connected()
            continue
        n = await publish_one()
        await asyncio.sleep(n / rate if n else 0.05)
    t_done = time.monotonic()
    while len(old_verdicts) + dbl.verdict_flows < len(sent) and \
            time.monotonic() - t_done < 60:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)
    verdicts = old_verdicts + dbl.verdicts()
    await dbl.stop()
    got = [v.uid for v in verdicts]
    statuses: dict[str, int] = {}
    for v in verdicts:
        statuses[v.status] = statuses.get(v.status, 0) + 1
    return {"capacity": round(capacity, 1), "rate": round(rate, 1), "minutes": a.minutes,
            "published_while_connected": len(sent) - verdicts0,
            "verdicts": len(got) - verdicts0, "duplicates": len(got) - len(set(got)),
            "missing": len(set(sent) - set(got)), "statuses": statuses,
            "incarnations": [{"pid": x["pid"], "samples": len(x["samples"]),
                              "rss_mb_first": round(x["samples"][0][1], 1) if x["samples"]
                              else None,
                              "rss_mb_last": round(x["samples"][-1][1], 1) if x["samples"]
                              else None,
                              "rss_slope_mb_per_hour": round(slope_mb_per_hour(x["samples"]), 1),
                              "fds_first": x["samples"][0][2] if x["samples"] else None,
                              "fds_last": x["samples"][-1][2] if x["samples"] else None}
                             for x in incarnations]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=0.8, help="share of the measured capacity")
    ap.add_argument("--model", default=str(ROOT / "semiflow" / "data" / "model"))
    ap.add_argument("--log", default="soak-serve.log", help="the detector's output")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    res = asyncio.run(run(a))
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if res["missing"] == 0 and res["duplicates"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
