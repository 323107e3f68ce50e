"""End-to-end flows/s and verdict latency through the WebSocket path, on this machine.

    python benchmarks/serve_benchmark.py [--model DIR] [--flows 20000] [--window 2048]
    python benchmarks/serve_benchmark.py --score-only --model DIR   # scoring stage alone

Requests are the exact events the Zeek package publishes for corpus captures
(plugin/zeek_selection.py), sent by the Zeek double (tests/zeek_double.py) to a
`semiflow serve` subprocess; latency = publish -> verdict received, per flow. Two runs,
compared in the same invocation: the real model, and a trivial scorer (mean byte) that
shows the pipeline's own ceiling (JSON, base64, sample building, batching, encoding).
A bounded window of outstanding requests keeps the detector below its shedding point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def build_requests(corpus: Path, k: int, l: int) -> list:
    from serve_helpers import corpus_slice

    from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events
    files = corpus_slice(corpus)
    evs = capture_to_events(files, ZeekSideConfig(k=k, snaplen=l + 64))
    return [e for e in evs if e.kind == "request"]


def serve_trivial(url: str, k: int, l: int) -> None:
    """Subprocess mode: ServeApp with the trivial scorer."""
    import signal

    from serve_helpers import TrivialScorer

    from semiflow.cli_serve import ServeApp
    from semiflow.detector.spec import FlowSampleSpec
    app = ServeApp(TrivialScorer(FlowSampleSpec(k=k, l=l)), url,
                   ["zeek/semiflow/request/"], max_batch=512, queue_size=16384)

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await app.run(stop)
    asyncio.run(main())


async def run_once(label: str, cmd: list[str], reqs: list, n: int, window: int) -> dict:
    from zeek_double import ZeekDouble, zeek_json

    dbl = await ZeekDouble().start()
    proc = subprocess.Popen(cmd + [dbl.url], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = asyncio.Event()
    seen = 0
    statuses: dict[str, int] = {}
    base = [zeek_json(e.message()) for e in reqs]
    uids = [e.uid for e in reqs]
    # Pre-encode all messages: the publisher must not be the bottleneck we measure.
    texts = []
    for i in range(n):
        j = i % len(base)
        u = f"B{i:09d}"
        texts.append((u, base[j].replace(f'"{uids[j]}"', f'"{u}"', 1)))
    orig_dispatch = dbl._client_message

    async def on_msg(ws, text):
        nonlocal seen
        await orig_dispatch(ws, text)
        while dbl.received:
            _, name, args = dbl.received.pop()
            uid, status = args[0]["data"], args[1]["data"]
            t = sent.pop(uid, None)
            if t is not None:
                lat.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
            seen += 1
            if seen >= n:
                done.set()
    dbl._client_message = on_msg
    try:
        t_end = time.monotonic() + 120
        while not dbl.clients and time.monotonic() < t_end:
            await asyncio.sleep(0.1)
        ws = next(iter(dbl.clients))
        t0 = time.perf_counter()
        for u, text in texts:
            while len(sent) >= window:
                await asyncio.sleep(0.0005)
            sent[u] = time.perf_counter()
            await ws.send(text)
        await asyncio.wait_for(done.wait(), 300)
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        await dbl.stop()
    a = np.array(lat) * 1000
    r = {"label": label, "flows": n, "seconds": wall, "flows_per_s": n / wall,
         "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
         "statuses": statuses}
    print(f"{label:>14}: {n} flows in {wall:.2f}s = {n / wall:,.0f} flows/s; verdict latency "
          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; {statuses}", flush=True)
    return r


def score_only(model: str, n: int, device: str | None) -> None:
    """The scoring stage alone: FlowScorer.score_flows on random K x L samples."""
    from semiflow.detector.scoring import load_scorer
    sc = load_scorer(model, device=device)
    k, l = sc.spec.k, sc.spec.l
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, k, l), dtype=np.uint8)
    nsel = np.full(n, k)
    sc.score_flows(x[:256], nsel[:256])  # warm-up
    for bs in (256, 1024, 4096):
        t = time.perf_counter()
        for i in range(0, n, bs):
            sc.score_flows(x[i:i + bs], nsel[i:i + bs])
        dt = time.perf_counter() - t
        print(f"score_flows on {sc.device} batch {bs}: {n / dt:,.0f} flows/s "
              f"({n * k / dt:,.0f} packets/s), K={k} L={l}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="artifact dir (default: a tiny random-weight one)")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"))
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--device")
    ap.add_argument("--serve-trivial", nargs=3, metavar=("K", "L", "URL"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_trivial:
        k, l, url = a.serve_trivial
        serve_trivial(url, int(k), int(l))
        return
    model = a.model
    if model is None:
        from serve_helpers import tiny_model
        model = str(tiny_model(Path(tempfile.mkdtemp()) / "tiny", k=8, l=1600))
    if a.score_only:
        score_only(model, a.flows, a.device)
        return
    from semiflow.detector.artifact import load_artifact
    spec = load_artifact(model).spec
    reqs = build_requests(Path(a.corpus), spec.k, spec.l)
    print(f"{len(reqs)} distinct corpus flow requests (K={spec.k}, L={spec.l}), "
          f"{a.flows} sent per run, window {a.window}; CPU count {os.cpu_count()}", flush=True)
    py = [sys.executable]
    real = py + ["-m", "semiflow", "serve", "--model", model, "--device", a.device or "cpu",
                 "--max-batch", "512", "--queue", "16384", "--zeek"]
    triv = py + [__file__, "--serve-trivial", str(spec.k), str(spec.l)]
    asyncio.run(run_once("trivial scorer", triv, reqs, a.flows, a.window))
    asyncio.run(run_once("real model", real, reqs, a.flows, a.window))


if __name__ == "__main__":
    main()
