"""Flow-level scoring speed: the plain path against the GPU path, and what bf16 changes.

The flows come from host memory, as in `semiflow score` / `serve` (the copy to the GPU is in
the time). Printed side by side, for one model:
- "plain": FlowSemiFlowDetector's own loop (2048 flows a batch, fp32, a copy and a sync per
  batch): the named alternative, and what the CPU runs;
- "gpu": detector/models/flow_inference.py at several batch sizes, fp32 and bf16, eager and
  compiled as CUDA graphs (torch.compile mode reduce-overhead);
in flows/s and packet rows/s (flows x K), plus batch-1 latency; then, on the lab's labelled
flows, how far bf16 scores move from fp32 ones, how many verdicts flip at the model's
threshold, and both AUROCs.

    python benchmarks/score_speed.py --model semiflow/data/model --flows lab.npz --device cuda
    python benchmarks/score_speed.py --model semiflow/data/model --flows lab.npz --device cpu \
        --threads 2 [--config cpu]     # --config: a model of that config (speed only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_data import load, tiled  # noqa: E402

from semiflow.detector.models.semiflow_inference import auroc  # noqa: E402
from semiflow.detector.scoring import load_scorer  # noqa: E402


def timed(fn, X, repeat: int = 3) -> float:
    fn(X[: min(len(X), 4096)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(X)
        best = min(best, time.perf_counter() - t)
    return best


def batch1_latency(det, X: np.ndarray, n: int = 200) -> np.ndarray:
    """p50 and p99 (ms) of scoring one flow at a time."""
    lat = []
    for i in range(n):
        t = time.perf_counter()
        det.anomaly_score(X[i:i + 1])
        lat.append(time.perf_counter() - t)
    return np.percentile(lat, [50, 99]) * 1e3


def detector(a):
    sc = load_scorer(a.model, device=a.device, gpu_path=False)  # (the paths are built below)
    det = sc.flow_detector
    if det is None:
        raise SystemExit("score_speed measures flow-level models")
    if a.config != "default":   # same spec, the other config's shapes (speed only)
        from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
        from semiflow.detector.models.semiflow_flownet import FlowNetConfig

        cfg = FlowNetConfig.named(a.config, k=det.config_.k)
        X = load(a.flows, cfg.length).X
        det = FlowSemiFlowDetector(cfg, device=a.device, epochs=1, random_state=0).fit(
            X[:512], X[512:768])
    return sc, det


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="semiflow/data/model")
    ap.add_argument("--flows", required=True, help="extraction dir or .npz (labelled)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=1_000_000, help="flows scored per timing")
    ap.add_argument("--batches", default="4096,16384,65536")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--config", default="default", choices=["default", "cpu"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sc, det = detector(a)
    flows = load(a.flows, det.config_.length)
    ok = flows.n_selected > 0
    lab_X = flows.X[ok]
    X = tiled(lab_X, a.n)
    k = det.config_.k
    rows = []

    def add(name, secs, n):
        r = {"path": name, "flows_per_s": round(n / secs), "packet_rows_per_s": round(n * k / secs)}
        rows.append(r)
        print(json.dumps(r), flush=True)

    n_plain = min(len(X), 200_000 if det.device_.type == "cuda" else 20_000)
    add("plain fp32 (batch 2048)", timed(det.anomaly_score, X[:n_plain], 2), n_plain)
    lat_plain = batch1_latency(det, lab_X)
    print(f"batch-1 latency, plain: p50 {lat_plain[0]:.2f} ms, p99 {lat_plain[1]:.2f} ms")
    agree = {}
    if det.device_.type == "cuda":
        combos = [(b, amp, False) for b in map(int, a.batches.split(","))
                  for amp in ("off", "bf16")]
        if not a.no_compile:
            combos.append((16384, "bf16", True))
        for b, amp, comp in combos:
            det.use_gpu_scorer(b, amp, comp)
            name = f"gpu {'bf16' if amp == 'bf16' else 'fp32'} batch {b}" + (
                " compiled (CUDA graphs)" if comp else "")
            add(name, timed(det.anomaly_score, X), len(X))
        det.use_gpu_scorer(4096, "bf16", False)
        p = batch1_latency(det, lab_X)
        print(f"batch-1 latency, gpu bf16 (padded to 64): p50 {p[0]:.2f} ms, p99 {p[1]:.2f} ms")
        if a.config == "default":
            det.gpu_scorer_ = None
            s32 = det.anomaly_score(lab_X)
            det.use_gpu_scorer(16384, "bf16", False)
            s16 = det.anomaly_score(lab_X)
            det.use_gpu_scorer(16384, "off", False)
            s32g = det.anomaly_score(lab_X)
            thr = sc.threshold
            y = flows.anomalous[ok].astype(int)
            agree = {"max_abs_diff_bf16": float(np.max(np.abs(s16 - s32))),
                     "median_abs_diff_bf16": float(np.median(np.abs(s16 - s32))),
                     "max_abs_diff_gpu_fp32": float(np.max(np.abs(s32g - s32))),
                     "threshold": thr,
                     "verdict_flips_bf16": int(((s16 > thr) != (s32 > thr)).sum()),
                     "flows": int(len(s32)),
                     "auroc_fp32": auroc(y, s32), "auroc_bf16": auroc(y, s16)}
            print(json.dumps(agree))
    print("| path | flows/s | packet rows/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['flows_per_s']:,} | {r['packet_rows_per_s']:,} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "agreement": agree,
                                            "latency_plain_ms": list(lat_plain)}, indent=1))


if __name__ == "__main__":
    main()
