"""End-to-end flows/s and verdict latency through the WebSocket path, on this machine.

    python benchmarks/serve_benchmark.py [--model DIR] [--flows 20000] [--window 2048]
        [--workers 1,2] [--publishers N] [--batch-sizes 0,64] [--scorers trivial,real]
    python benchmarks/serve_benchmark.py --rate 1 --flows 60 --batch-sizes 64  # quiet sensor
    python benchmarks/serve_benchmark.py --score-only --model DIR   # scoring stage alone

Requests are the events the Zeek package publishes for corpus captures
(plugin/zeek_selection.py), per flow (batch size 0: flow_request, the package before
batching) or as flow_batch events formed by batch.zeek's policy. N publisher processes
(benchmarks/zeek_load.py), one per Zeek worker they stand for, publish through a hub that
stands for Zeek's WebSocket server to a `semiflow serve` subprocess; latency = flow ready
at the worker -> its verdict back at the worker. Compared in the same invocation, per
batch size: the load generator's own ceiling (the hub answers every request itself), a
trivial scorer (mean byte: the pipeline's own ceiling) and the real model. A bounded
window of outstanding flows keeps the detector below its shedding point. Detector CPU =
user+system CPU seconds of the serve process and its children per flow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    from semiflow.detector.sample.spec import FlowSampleSpec

    ap = argparse.ArgumentParser()
    cli_serve.register(ap.add_subparsers())
    args = ap.parse_args(["serve", *argv])
    spec = load_artifact(args.model).spec
    return cli_serve.run(args, scorer=TrivialScorer(FlowSampleSpec(k=spec.k, l=spec.l)))


def cpu_seconds(pid: int, children: bool = True) -> float:
    """user+system CPU seconds of pid and (children=True) its descendants (Linux /proc)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tck
        if not children:
            return total
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


def _spawn_publishers(urls: list[str], reqs: list, cfg: dict, n_pub: int):
    import multiprocessing as mp

    from zeek_load import publisher_main
    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    for i in range(n_pub):
        a, b = ctx.Pipe()
        # --rate is flows/s in all: each publisher paces its share (before, each ran at
        # the whole rate: `--rate 30000 --publishers 8` offered 240,000 flows/s).
        c = dict(cfg, flows=cfg["flows"] // n_pub + (i < cfg["flows"] % n_pub),
                 window=max(cfg["window"] // n_pub, 1),
                 rate=cfg["rate"] / n_pub if cfg.get("rate") else None)
        p = ctx.Process(target=publisher_main, args=(i, urls, reqs, c, b), daemon=True)
        p.start()
        procs.append(p)
        pipes.append(a)
    return procs, pipes


async def _recv(pipe, timeout: float):
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(None, pipe.poll, timeout)
    if not ok:
        raise TimeoutError("a publisher did not answer")
    return pipe.recv()


def timeline(lat_ms: np.ndarray, done_at: np.ndarray, t0: float, step: float = 1.0
             ) -> list[dict]:
    """Verdict latency per `step` seconds of the run (by when the verdict came back): where
    the tail sits in time (a start-up transient, periodic stalls, or the whole run)."""
    if len(lat_ms) == 0:
        return []
    b = ((done_at - t0) // step).astype(int)
    out = []
    for i in range(b.max() + 1):
        x = lat_ms[b == i]
        if len(x):
            out.append({"t": i * step, "flows": int(len(x)),
                        "p50_ms": float(np.percentile(x, 50)),
                        "p99_ms": float(np.percentile(x, 99)), "max_ms": float(x.max())})
    return out


def print_timeline(rows: list[dict]) -> None:
    print("    second   flows    p50 ms    p99 ms    max ms")
    for r in rows:
        print(f"    {r['t']:6.0f} {r['flows']:7d} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} "
              f"{r['max_ms']:9.1f}")


async def run_once(label: str, cmd: list[str] | None, reqs: list, cfg: dict, n_pub: int,
                   workers: int = 1, n_hubs: int = 1) -> dict:
    """One measurement: the hubs (Zeek's WebSocket server(s), each its own process), the
    detector `cmd` (None: the hubs' trivial sink answers, i.e. the load generator's
    ceiling) and n_pub publishers. With several hubs, shard i goes through hub i % H and
    the detector's worker i connects to hub i % H (`--zeek URL,URL,...`)."""
    from zeek_load import Hubs

    shards = workers if cmd is not None else max(n_hubs, 1)
    hubs = Hubs(max(min(n_hubs, shards), 1), sink=cmd is None)
    proc = None
    if cmd is not None:
        proc = subprocess.Popen(cmd + [",".join(hubs.urls), "--workers", str(workers)],
                                cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=None if cfg.get("serve_log") else subprocess.DEVNULL,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    procs, pipes = [], []
    try:
        t_end = time.monotonic() + 120
        while cmd is not None and hubs.stats()["clients"] < workers and \
                time.monotonic() < t_end:
            if proc.poll() is not None:
                raise RuntimeError("detector exited")
            await asyncio.sleep(0.1)
        procs, pipes = _spawn_publishers(hubs.urls, reqs, dict(cfg, shards=shards), n_pub)
        for p in pipes:
            assert await _recv(p, 300) == "ready"
        cpu0 = cpu_seconds(proc.pid) if proc else 0.0
        top0 = cpu_seconds(proc.pid, children=False) if proc else 0.0
        hub0 = hubs.stats()["cpu"]
        for p in pipes:
            p.send("go")
        res = [await _recv(p, cfg.get("timeout", 600) + 60) for p in pipes]
        cpu = (cpu_seconds(proc.pid) - cpu0) if proc else 0.0
        top = (cpu_seconds(proc.pid, children=False) - top0) if proc else 0.0
        hst = hubs.stats()
        hub_cpus = [b - a for a, b in zip(hub0, hst["cpu"])]
        hub_cpu = sum(hub_cpus)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        for p in procs:
            p.join(10)
        hubs.stop()
    n = sum(r["flows"] for r in res)
    wall = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    lat = np.concatenate([np.asarray(r["lat"]) for r in res]) * 1000
    done_at = np.concatenate([np.asarray(r["done_at"]) for r in res])
    t_start = min(r["t0"] for r in res)
    # the same percentile without the first 2 s (a start-up transient, if any): both printed
    late = lat[done_at - t_start >= 2.0]
    st: dict[str, int] = {}
    for r in res:
        for k, v in r["statuses"].items():
            st[k] = st.get(k, 0) + v
    msgs = sum(r["messages"] for r in res)
    out = {"label": label, "workers": workers, "publishers": n_pub,
           "batch_size": cfg["batch_size"], "flows": n, "seconds": wall,
           "flows_per_s": n / wall, "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99)),
           "p99_after_2s_ms": float(np.percentile(late, 99)) if len(late) else None,
           "max_ms": float(lat.max()), "statuses": st,
           "detector_cpu_us_per_flow": cpu / n * 1e6, "requests_per_flow": msgs / n,
           "verdict_msgs_per_flow": hst["verdicts"] / n if cmd is not None else 0.0,
           "publisher_cpu_us_per_flow": sum(r["cpu"] for r in res) / n * 1e6,
           # where the detector's CPU goes: the serve process itself (with --workers > 1
           # the scorer) and its decode workers; the hub stands for Zeek's server.
           "serve_main_cpu_us_per_flow": top / n * 1e6,
           "serve_main_cores": top / wall, "detector_cores": cpu / wall,
           "hub_cpu_us_per_flow": hub_cpu / n * 1e6, "hubs": len(hub_cpus),
           "busiest_hub_cores": max(hub_cpus) / wall, "hub_max_queued": hst["max_queued"]}
    who = f"{workers} worker(s)" if cmd is not None else "trivial sink"
    batch = f"batch {cfg['batch_size']}" if cfg["batch_size"] else "per-flow"
    print(f"{label:>16}, {who}, {n_pub} publisher(s), {batch}: {n} flows in {wall:.2f}s = "
          f"{n / wall:,.0f} flows/s; latency p50 {out['p50_ms']:.1f} ms, p99 "
          f"{out['p99_ms']:.1f} ms (after the first 2 s: "
          f"{out['p99_after_2s_ms'] or float('nan'):.1f} ms), max {out['max_ms']:.1f} ms; "
          f"detector CPU {out['detector_cpu_us_per_flow']:.0f} "
          f"us/flow (main process {out['serve_main_cpu_us_per_flow']:.0f}, "
          f"{out['detector_cores']:.2f} cores in all, main {out['serve_main_cores']:.2f}); "
          f"{len(hub_cpus)} hub(s) {out['hub_cpu_us_per_flow']:.0f} us/flow (busiest "
          f"{out['busiest_hub_cores']:.2f} cores); "
          f"publisher CPU {out['publisher_cpu_us_per_flow']:.0f} us/flow; "
          f"{out['requests_per_flow']:.3f} request msgs/flow, "
          f"{out['verdict_msgs_per_flow']:.3f} verdict msgs/flow; {st}", flush=True)
    out["timeline"] = timeline(lat, done_at, t_start)
    if cfg.get("timeline"):
        print_timeline(out["timeline"])
    return out


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
    ap.add_argument("--window", type=int, default=2048,
                    help="outstanding flows in all (split over the publishers)")
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--device")
    ap.add_argument("--workers", default="1,2", help="decode processes to compare (1,2)")
    ap.add_argument("--publishers", type=int, default=1,
                    help="publisher processes, one per Zeek worker they stand for (1)")
    ap.add_argument("--batch-sizes", default="0,64",
                    help="SemiFlow::batch_size values to compare; 0 = one flow_request "
                         "per flow, as the package did before batching (0,64)")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0,
                    help="SemiFlow::batch_wait of the publishers (20)")
    ap.add_argument("--scorers", default="trivial,real", help="trivial,real")
    ap.add_argument("--rate", type=float,
                    help="paced mode: flows/s in all (batch.zeek's policy forms the batches)")
    ap.add_argument("--max-batch", type=int, default=512)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--hubs", type=int, default=1,
                    help="hub processes standing for Zeek's WebSocket server(s): shard i "
                         "through hub i %% H, the detector's worker i connected to hub "
                         "i %% H (1)")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="skip the load generator's own ceiling run")
    ap.add_argument("--serve-log", action="store_true", help="show the detector's log")
    ap.add_argument("--timeline", action="store_true",
                    help="print latency p50/p99/max per second of each run")
    ap.add_argument("--serve-args", default="",
                    help="extra `semiflow serve` options for the real model, e.g. "
                         "'--gpu-path off' (an A/B in one invocation: run it twice)")
    ap.add_argument("--json", help="also write the results here")
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
    from zeek_load import check_encoder
    check_encoder(reqs)
    print(f"{len(reqs)} distinct corpus flow requests (K={spec.k}, L={spec.l}), "
          f"{a.flows} flows per run, window {a.window}, {a.publishers} publisher(s), "
          f"batch_wait {a.batch_wait_ms} ms" + (f", paced at {a.rate} flows/s" if a.rate
                                               else ", saturating") +
          f"; CPU count {os.cpu_count()}", flush=True)
    opts = ["--model", model, "--device", a.device or "cpu", "--max-batch",
            str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms), "--queue", "65536",
            "--threads", "1", "--zeek"]
    # the detector's drift/shadow logs go to a scratch dir, not the working directory
    lifecycle = ["--lifecycle-dir", tempfile.mkdtemp(prefix="serve-bench-")]
    cmds = {"real model": [sys.executable, "-m", "semiflow", "serve", *lifecycle,
                           *a.serve_args.split(), *opts],
            "trivial scorer": [sys.executable, __file__, "--serve-trivial", *opts]}
    want = {"trivial": "trivial scorer", "real": "real model"}
    results = []
    for bs in map(int, a.batch_sizes.split(",")):
        cfg = {"flows": a.flows, "window": a.window, "batch_size": bs,
               "batch_wait": a.batch_wait_ms / 1000.0, "rate": a.rate,
               "serve_log": a.serve_log, "timeline": a.timeline}
        if not a.no_ceiling:
            results.append(asyncio.run(run_once("load generator", None, reqs, cfg,
                                                a.publishers, n_hubs=a.hubs)))
        for w in map(int, a.workers.split(",")):
            for sc in a.scorers.split(","):
                results.append(asyncio.run(run_once(want[sc], cmds[want[sc]], reqs, cfg,
                                                    a.publishers, w, a.hubs)))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
