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


def serve_trivial(argv: list[str]) -> int:
    """Subprocess mode: `semiflow serve ARGV` with the trivial scorer instead of the model."""
    from serve_helpers import TrivialScorer

    from semiflow import cli_serve
    from semiflow.detector.artifact import load_artifact
    from semiflow.detector.spec import FlowSampleSpec

    ap = argparse.ArgumentParser()
    cli_serve.register(ap.add_subparsers())
    args = ap.parse_args(["serve", *argv])
    spec = load_artifact(args.model).spec
    return cli_serve.run(args, scorer=TrivialScorer(FlowSampleSpec(k=spec.k, l=spec.l)))


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of pid and its descendants (Linux /proc)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tck
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


async def run_once(label: str, cmd: list[str], reqs: list, n: int, window: int,
                   workers: int = 1) -> dict:
    import orjson
    from zeek_double import ZeekDouble, zeek_json

    from semiflow.plugin import zeek_wire as zw

    dbl = await ZeekDouble().start()
    proc = subprocess.Popen(cmd + [dbl.url, "--workers", str(workers)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = asyncio.Event()
    seen = 0
    statuses: dict[str, int] = {}
    # Pre-encode all messages (Zeek's JSON, shard topic i % workers): the publisher must
    # not be the bottleneck we measure.
    texts = []
    for i in range(n):
        e = reqs[i % len(reqs)]
        args = list(e.args)
        args[0] = f"B{i:09d}"
        topic = f"{zw.DEFAULT_REQUEST_TOPIC}{i % workers}/"
        texts.append((args[0], topic, zeek_json(zw.event_message(topic, zw.FLOW_REQUEST,
                                                                 args))))

    async def on_msg(ws, text):
        # Zeek handles verdicts in C++; the double's full checks (tests) would cost this
        # shared 2-core box more than the detector: read uid and status only.
        nonlocal seen
        a = orjson.loads(text)["data"][2]["data"][1]["data"]
        uid, status = a[0]["data"], a[1]["data"]
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
        while len(dbl.clients) < workers and time.monotonic() < t_end:
            await asyncio.sleep(0.1)
        by_topic = {t: ws for t in {x[1] for x in texts}
                    for ws, subs in dbl.clients.items() if any(t.startswith(p) for p in subs)}
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for u, topic, text in texts:
            while len(sent) >= window:
                await asyncio.sleep(0.0005)
            sent[u] = time.perf_counter()
            await by_topic[topic].send(text)
        await asyncio.wait_for(done.wait(), 300)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(60)
        await dbl.stop()
    a = np.array(lat) * 1000
    r = {"label": label, "flows": n, "seconds": wall, "flows_per_s": n / wall,
         "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
         "statuses": statuses, "detector_cpu_us_per_flow": cpu / n * 1e6}
    print(f"{label:>14}, {workers} worker(s): {n} flows in {wall:.2f}s = {n / wall:,.0f} "
          f"flows/s; verdict latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
          f"detector CPU {cpu / n * 1e6:.0f} us/flow; {statuses}", flush=True)
    return r


def score_only(model: str, n: int, device: str | None, sizes=(64, 256, 1024, 4096, 16384),
               packet_batches=(4096, 32768), seconds: float = 3.0) -> None:
    """The scoring stage alone: FlowScorer.score_flows (host uint8 in, float64 scores out,
    transfers included) on random K x L samples with all K packets selected (the most work
    a flow can be), per flows-per-call and packets-per-forward (FlowScorer.batch_size)."""
    import torch

    from semiflow.detector.scoring import load_scorer
    torch.backends.cudnn.benchmark = True
    for pb in packet_batches:
        sc = load_scorer(model, device=device, batch_size=pb)
        k, l = sc.spec.k, sc.spec.l
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (max(n, max(sizes)), k, l), dtype=np.uint8)
        nsel = np.full(len(x), k)
        name = torch.cuda.get_device_name() if sc.device.type == "cuda" else "cpu"
        for bs in sizes:
            for _ in range(3):  # warm-up (cudnn picks kernels per shape)
                sc.score_flows(x[:bs], nsel[:bs])
            done, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds:
                i = done % (len(x) - bs + 1)
                sc.score_flows(x[i:i + bs], nsel[i:i + bs])
                done += bs
            dt = time.perf_counter() - t
            print(f"score_flows on {name}: {bs:>6} flows/call, {pb:>6} packets/forward: "
                  f"{done / dt:>10,.0f} flows/s ({done * k / dt:>11,.0f} packets/s), "
                  f"{dt / (done / bs) * 1000:7.2f} ms/call; K={k} L={l}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="artifact dir (default: a tiny random-weight one)")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"))
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--device")
    ap.add_argument("--workers", default="1,2", help="decode processes to compare (1,2)")
    ap.add_argument("--max-batch", type=int, default=512)
    ap.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--serve-trivial"]:
        sys.exit(serve_trivial(sys.argv[2:]))
    a = ap.parse_args()
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
    opts = ["--model", model, "--device", a.device or "cpu", "--max-batch",
            str(a.max_batch), "--queue", "16384", "--threads", "1", "--zeek"]
    real = [sys.executable, "-m", "semiflow", "serve", *opts]
    triv = [sys.executable, __file__, "--serve-trivial", *opts]
    for w in map(int, a.workers.split(",")):
        asyncio.run(run_once("trivial scorer", triv, reqs, a.flows, a.window, w))
        asyncio.run(run_once("real model", real, reqs, a.flows, a.window, w))


if __name__ == "__main__":
    main()
