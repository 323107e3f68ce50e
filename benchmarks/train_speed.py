"""Flow-level SemiFlow training speed against today's recipe, and what the speed costs.

Every variant fits the same normal lab flows (split by time as `semiflow train` does) with the
same epochs and early stopping, then scores the lab's mixed test run. Printed side by side:
fit seconds, steady training throughput (flows/s and packet rows/s = flows x K, the first
epoch of each stage left out: it holds torch.compile's compilation), the best validation
losses of both stages, and the test AUROC. The named alternative is today's recipe:
batch 64, fp32, eager ("b64-fp32").

    python benchmarks/train_speed.py --train lab.npz --test test.npz --device cuda \
        [--variants b64-fp32,b1024-bf16,b4096-bf16,b1024-bf16-compile] [--speed-flows 1000000]
    torchrun --nproc-per-node 2 benchmarks/train_speed.py ... --ddp     # one rank per GPU

--speed-flows N also times 2 epochs a stage on the training flows tiled to N flows (a larger
data set than the lab's 23k flows, where per-epoch overheads no longer count).
Variant names: b<batch>-<fp32|bf16>[-compile][-lin][-graph] (-lin: linear learning-rate
scaling; -graph: each step replayed as one CUDA graph, `semiflow train`'s default on one GPU).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_data import load, tiled  # noqa: E402

from semiflow.detector.semiflow_flowlevel import FlowSemiFlowDetector  # noqa: E402
from semiflow.detector.semiflow_flownet import FlowNetConfig  # noqa: E402
from semiflow.detector.semiflow_inference import auroc  # noqa: E402
from semiflow.detector.train_loop import DistContext, FitOptions  # noqa: E402


def parse_variant(name: str) -> FitOptions:
    m = re.fullmatch(r"b(\d+)-(fp32|bf16)(-compile)?(-lin)?(-graph)?", name)
    if not m:
        raise SystemExit(f"bad variant {name!r}: b<batch>-<fp32|bf16>[-compile][-lin][-graph]")
    return FitOptions(batch_size=int(m[1]), amp="off" if m[2] == "fp32" else "bf16",
                      compile=bool(m[3]), lr_scaling="linear" if m[4] else "sqrt",
                      cuda_graphs=bool(m[5]))


def steady(history: list[dict]) -> tuple[float, float]:
    """(flows, seconds) of every epoch but the first of each stage."""
    seen, flows, secs = set(), 0, 0.0
    for h in history:
        if h["stage"] in seen:
            flows += h["flows"]
            secs += h["seconds"]
        seen.add(h["stage"])
    if secs == 0:   # one epoch a stage: count them all
        flows = sum(h["flows"] for h in history)
        secs = sum(h["seconds"] for h in history)
    return flows, secs


def best(history: list[dict], stage: str) -> float | None:
    v = [h["val_loss"] for h in history if h["stage"] == stage]
    return min(v) if v else None


def run(name, opts, cfg, Xtr, Xva, test, device, dist, epochs=None) -> dict:
    import torch

    det = FlowSemiFlowDetector(cfg, device=device, random_state=cfg.seed, epochs=epochs)
    if device and device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    det.fit(Xtr, Xva, options=opts, dist=dist)
    fit_s = time.perf_counter() - t0
    flows, secs = steady(det.history_)
    rec = {"variant": name, "world": dist.world, "train_flows": len(Xtr),
           "fit_seconds": round(fit_s, 2), "epochs": len(det.history_),
           "steady_flows_per_s": round(flows / max(secs, 1e-9)),
           "steady_packet_rows_per_s": round(flows * cfg.k / max(secs, 1e-9)),
           "best_val_rec": best(det.history_, "reconstruction"),
           "best_val_flow": best(det.history_, "flow")}
    if test is not None and dist.rank == 0:
        ok = test.n_selected > 0
        s = det.anomaly_score(test.X[ok])
        rec["test_auroc"] = round(auroc(test.anomalous[ok].astype(int), s), 4)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True, help="normal flows: extraction dir or .npz")
    ap.add_argument("--test", help="labelled flows to score: extraction dir or .npz")
    ap.add_argument("--device", default=None)
    ap.add_argument("--variants", default="b64-fp32,b1024-bf16,b4096-bf16,b1024-bf16-compile")
    ap.add_argument("--speed-flows", type=int, default=0)
    ap.add_argument("--speed-variants", default=None,
                    help="variants for --speed-flows (default: --variants)")
    ap.add_argument("--skip-lab", action="store_true", help="only the --speed-flows runs")
    ap.add_argument("--config", default="default", choices=["default", "cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--json", help="write the records here (rank 0)")
    a = ap.parse_args()
    dist = DistContext.from_env(a.device) if a.ddp else DistContext()
    cfg0 = FlowNetConfig.named(a.config)
    data = load(a.train, cfg0.length)
    test = load(a.test, cfg0.length) if a.test else None
    Xtr, Xva, _ = data.normal_split()
    cfg = FlowNetConfig.named(a.config, k=Xtr.shape[1], seed=a.seed)
    say = print if dist.rank == 0 else (lambda *x, **k: None)
    say(f"train {len(Xtr)} / val {len(Xva)} normal flows, K={cfg.k}, {cfg.length} bytes; "
        f"world size {dist.world}")
    out = []
    if not a.skip_lab:
        for v in a.variants.split(","):
            r = run(v, parse_variant(v), cfg, Xtr, Xva, test, a.device, dist)
            out.append(r)
            say(json.dumps(r))
    if a.speed_flows:
        big = tiled(Xtr, a.speed_flows)
        for v in (a.speed_variants or a.variants).split(","):
            r = run(v, parse_variant(v), cfg, big, Xva, None, a.device, dist, epochs=2)
            r["variant"] += f" x{a.speed_flows}"
            out.append(r)
            say(json.dumps(r))
    if dist.rank == 0:
        cols = ["variant", "world", "fit_seconds", "epochs", "steady_flows_per_s",
                "steady_packet_rows_per_s", "best_val_rec", "best_val_flow", "test_auroc"]
        say("| " + " | ".join(cols) + " |")
        say("|" + "---|" * len(cols))
        for r in out:
            say("| " + " | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float)
                                  else str(r.get(c, "")) for c in cols) + " |")
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    if dist.active:
        import torch.distributed as td
        td.destroy_process_group()


if __name__ == "__main__":
    main()
