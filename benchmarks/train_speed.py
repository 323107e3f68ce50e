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
Variant names: b<batch>-<fp32|bf16>[-compile][-lin][-graph][-w<percent>][-g<flows>][-lr<rate>]
(-lin: linear learning-rate scaling; -graph: each step replayed as one CUDA graph, `semiflow
train`'s default; -w30: 30% of a stage's steps warm the rate up instead of 5%; -g256:
BatchNorm statistics over groups of 256 flows, -g0 over each rank's whole batch, no -g: the
default groups of 512, which runs before this option existed did not have; -lr0.003: that
peak learning rate instead of the scaled one).
Under --ddp each record also holds rank_spread: the largest difference of any parameter
between the ranks after the fit (0: one model).
--history prints every epoch's training and validation loss (training loss uses BatchNorm's
batch statistics, validation its running ones: a gap between them points at the latter).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_data import load, tiled  # noqa: E402

from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector  # noqa: E402
from semiflow.detector.models.semiflow_flownet import FlowNetConfig  # noqa: E402
from semiflow.detector.models.semiflow_inference import auroc  # noqa: E402
from semiflow.detector.models.train_loop import DistContext, FitOptions  # noqa: E402


def parse_variant(name: str) -> FitOptions:
    m = re.fullmatch(r"b(\d+)-(fp32|bf16)(-compile)?(-lin)?(-graph)?(?:-w(\d+))?(?:-g(\d+))?"
                     r"(?:-lr([\d.e-]+))?", name)
    if not m:
        raise SystemExit(f"bad variant {name!r}: b<batch>-<fp32|bf16>[-compile][-lin][-graph]"
                         "[-w<percent>][-g<flows>][-lr<rate>]")
    return FitOptions(batch_size=int(m[1]), amp="off" if m[2] == "fp32" else "bf16",
                      compile=bool(m[3]), lr_scaling="linear" if m[4] else "sqrt",
                      cuda_graphs=bool(m[5]), warmup=int(m[6]) / 100 if m[6] else 0.05,
                      lr=float(m[8]) if m[8] else None,
                      **({"norm_group": int(m[7])} if m[7] else {}))


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


def rank_spread(det) -> float:
    """Largest difference of any trained parameter between ranks (0: DDP kept one model)."""
    import torch
    import torch.distributed as td

    v = torch.cat([p.detach().double().flatten() for m in det._modules().values()
                   if m is not None for p in m.parameters()])
    hi, lo = v.clone(), v.clone()
    td.all_reduce(hi, td.ReduceOp.MAX)
    td.all_reduce(lo, td.ReduceOp.MIN)
    return float((hi - lo).max())


def run(name, opts, cfg, Xtr, Xva, test, device, dist, epochs=None, history=False
        ) -> dict:
    import torch

    det = FlowSemiFlowDetector(cfg, device=device, random_state=cfg.seed, epochs=epochs)
    if device and device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    det.fit(Xtr, Xva, options=opts, dist=dist)
    fit_s = time.perf_counter() - t0
    flows, secs = steady(det.history_)
    rec = {"variant": name, "seed": cfg.seed, "world": dist.world, "train_flows": len(Xtr),
           "fit_seconds": round(fit_s, 2), "epochs": len(det.history_),
           "steady_flows_per_s": round(flows / max(secs, 1e-9)),
           "steady_packet_rows_per_s": round(flows * cfg.k / max(secs, 1e-9)),
           "best_val_rec": best(det.history_, "reconstruction"),
           "best_val_flow": best(det.history_, "flow")}
    if dist.active:
        rec["rank_spread"] = rank_spread(det)
    if history and dist.rank == 0:
        for h in det.history_:
            print(f"  {name} {h['stage']} epoch {h['epoch']}: train {h['train_loss']:.5g} "
                  f"val {h['val_loss']:.5g} ({h['seconds']:.2f} s)")
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
    ap.add_argument("--seed", default="0", help="a seed, or several (0,1,2): each variant once "
                    "a seed, the data loaded once")
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--json", help="write the records here (rank 0)")
    ap.add_argument("--history", action="store_true", help="print each epoch's losses")
    ap.add_argument("--no-tf32", action="store_true",
                    help="full fp32 convolutions (cuDNN's TF32 off: rounding as on a CPU)")
    a = ap.parse_args()
    dist = DistContext.from_env(a.device) if a.ddp else DistContext()
    if a.no_tf32:
        import torch

        torch.backends.cudnn.allow_tf32 = False
    cfg0 = FlowNetConfig.named(a.config)
    data = load(a.train, cfg0.length)
    test = load(a.test, cfg0.length) if a.test else None
    Xtr, Xva, _ = data.normal_split()
    seeds = [int(x) for x in a.seed.split(",")]
    cfg = FlowNetConfig.named(a.config, k=Xtr.shape[1])
    say = print if dist.rank == 0 else (lambda *x, **k: None)
    say(f"train {len(Xtr)} / val {len(Xva)} normal flows, K={cfg.k}, {cfg.length} bytes; "
        f"world size {dist.world}")
    out = []
    if not a.skip_lab:
        for v, seed in product(a.variants.split(","), seeds):
            r = run(v, parse_variant(v), replace(cfg, seed=seed), Xtr, Xva, test, a.device,
                    dist, history=a.history)
            out.append(r)
            say(json.dumps(r))
    if a.speed_flows:
        big = tiled(Xtr, a.speed_flows)
        for v, seed in product((a.speed_variants or a.variants).split(","), seeds):
            r = run(v, parse_variant(v), replace(cfg, seed=seed), big, Xva, test, a.device,
                    dist, epochs=2, history=a.history)
            r["variant"] += f" x{a.speed_flows}"
            out.append(r)
            say(json.dumps(r))
    if dist.rank == 0:
        cols = ["variant", "seed", "world", "fit_seconds", "epochs", "steady_flows_per_s",
                "steady_packet_rows_per_s", "best_val_rec", "best_val_flow", "test_auroc",
                "rank_spread"]
        say("| " + " | ".join(cols) + " |")
        say("|" + "---|" * len(cols))
        for r in out:
            say("| " + " | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float)
                                  else str(r.get(c, "")) for c in cols) + " |")
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    dist.close()


if __name__ == "__main__":
    main()
