"""SemiFlow vs every baseline on the corpus's three benchmarks, plus training/inference speed.

One command:
    .venv/bin/python benchmarks/model_benchmarks.py            # extracts ../shared/corpus
    .venv/bin/python benchmarks/model_benchmarks.py --extract /tmp/corpus.flows
prints a Markdown table of flow-level AUROC / AUPRC / TPR@1e-3 (mean ± std over seeds) per
benchmark and detector, then SemiFlow's training time and throughput (samples/s) and the
inference throughput of encoder+classifier at batch sizes 1, 64, 4096 on CPU and, when CUDA
is available, GPU; Isolation Forest's inference throughput is the named alternative.
`--skip-accuracy --packets rows.npy` runs only the speed part (needs torch + numpy only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
ALL = "semiflow,semiflow-nll,iforest,ocsvm,pca,kde,ae,ganomaly1d"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- accuracy -----------------------------------------------------------------------------
def extraction(args: argparse.Namespace) -> str:
    """An extraction directory: the one given, or the corpus extracted into a temp dir."""
    if args.extract:
        return args.extract
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.extract import extract
    from semiflow.training.labels import Manifest
    corpus = Path(args.corpus)
    manifest = Manifest(corpus / "manifest.csv")
    files = [str(f) for f in manifest.files() if f.exists()]
    out = tempfile.mkdtemp(prefix="semiflow-bench-")
    log(f"extracting {len(files)} captures into {out} ...")
    t0 = time.perf_counter()
    extract(files, out, FlowSampleSpec(), manifest=manifest)
    log(f"extracted in {time.perf_counter() - t0:.0f} s")
    return out


def accuracy(args: argparse.Namespace, extract_dir: str) -> dict:
    from semiflow.detector.models.semiflow_model import SemiFlowConfig
    from semiflow.training.evaluate import BENCHMARKS, load_flow_data, make_splits
    from semiflow.training.evaluate_run import evaluate_split, markdown_table, public, summarize

    data = load_flow_data([extract_dir])
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    length = args.bytes or data.stores[0].spec.l
    deep = {"epochs": args.epochs, "device": args.device}
    sf = {**deep, "config": SemiFlowConfig.small(length=length)}
    params = {"semiflow": sf, "semiflow-nll": dict(sf), "ae": dict(deep),
              "ganomaly1d": dict(deep)}
    benches = BENCHMARKS if args.benchmarks == "all" else args.benchmarks.split(",")
    records = []
    t0 = time.perf_counter()
    for bench in benches:
        for seed in args.seeds:
            for split in make_splits(data.flows, bench, seed, args.cap_per_file,
                                     loso=not args.no_loso):
                records += evaluate_split(data, split, names, params, 1e-3, "max",
                                          args.bytes, log=log)
    wall = time.perf_counter() - t0
    summary = summarize(records)
    caption = (f"Flow-level results, mean ± std over seeds {args.seeds}; {len(names)} "
               f"detectors; deep detectors {args.epochs} epochs (per stage for SemiFlow, "
               f"config small, early stopping on validation normal files); first "
               f"{length} bytes of each packet; at most {args.cap_per_file} flows per "
               f"capture file; score = max over a flow's packets; threshold-free metrics; "
               f"best mean in bold. 'loso' = mean over leave-one-source-out folds. "
               f"Wall time {wall / 60:.1f} min on {torch.get_num_threads()} CPU thread(s).")
    print("\n" + markdown_table(summary) + "\n\n" + caption + "\n")
    if args.html:
        from semiflow.training.report_html import write_report
        write_report(args.html, records, summary, "SemiFlow vs baselines", [caption])
        log(f"wrote {args.html}")
    return {"summary": summary.to_dict(orient="records"), "runs": public(records),
            "caption": caption, "wall_seconds": wall}


# ---- speed --------------------------------------------------------------------------------
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def training_speed(X: np.ndarray, dev: torch.device, epochs: int) -> dict:
    """Seconds and packet rows/s (rows x epochs run, all three stages) of SemiFlow.fit."""
    from semiflow.detector.models.semiflow import SemiFlowDetector
    from semiflow.detector.models.semiflow_model import SemiFlowConfig
    cfg = SemiFlowConfig.small(length=X.shape[1], patience=10 ** 6)
    det = SemiFlowDetector(cfg, epochs=epochs, device=str(dev), random_state=0)
    n_val = max(1, len(X) // 10)
    _sync(dev)
    t0 = time.perf_counter()
    det.fit(X[n_val:], X[:n_val])
    _sync(dev)
    sec = time.perf_counter() - t0
    seen = (len(X) - n_val) * len(det.history_)
    return {"device": str(dev), "train_rows": len(X) - n_val, "epochs_run": len(det.history_),
            "seconds": round(sec, 2), "samples_per_s": round(seen / sec, 1), "detector": det}


def inference_speed(det, X: np.ndarray, dev: torch.device, batches: list[int],
                    pkts_per_flow: float, budget_s: float = 3.0) -> list[dict]:
    """Encoder+classifier packet rows/s and flows/s at each batch size (host->device incl.)."""
    from semiflow.detector.models.semiflow import packet_scores
    enc, cls = det.encoder_.to(dev).eval(), det.classifier_.to(dev).eval()
    out = []
    for b in batches:
        rows = X[np.arange(b * max(1, 4096 // b)) % len(X)] if b < 4096 else \
            X[np.arange(b * 4) % len(X)]
        packet_scores(enc, cls, rows[:b], dev, b)    # warm-up
        _sync(dev)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget_s:
            for i in range(0, len(rows), b):
                packet_scores(enc, cls, rows[i:i + b], dev, b)
                n += len(rows[i:i + b])
                if b == 1 and time.perf_counter() - t0 > budget_s:
                    break
        _sync(dev)
        sec = time.perf_counter() - t0
        out.append({"model": "semiflow encoder+classifier", "device": str(dev), "batch": b,
                    "packets_per_s": round(n / sec, 1),
                    "flows_per_s": round(n / sec / pkts_per_flow, 1)})
    return out


def iforest_speed(X: np.ndarray, batches: list[int], pkts_per_flow: float) -> list[dict]:
    """The named alternative: Isolation Forest (200 trees) scoring on CPU."""
    try:
        from semiflow.detector.baselines.classic import IsolationForestDetector
    except ImportError:
        return []
    det = IsolationForestDetector(seed=0).fit(X)
    out = []
    for b in batches:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            det.anomaly_score(X[np.arange(n, n + b) % len(X)])
            n += b
        sec = time.perf_counter() - t0
        out.append({"model": "iforest (alternative)", "device": "cpu", "batch": b,
                    "packets_per_s": round(n / sec, 1),
                    "flows_per_s": round(n / sec / pkts_per_flow, 1)})
    return out


def speed(args: argparse.Namespace, X: np.ndarray, pkts_per_flow: float) -> dict:
    devs = [torch.device(d) for d in args.speed_devices.split(",")
            if d and (d != "cuda" or torch.cuda.is_available())]
    train, infer = [], []
    for dev in devs:
        log(f"speed on {dev}: training {args.speed_epochs} epoch(s)/stage on {len(X)} rows")
        r = training_speed(X, dev, args.speed_epochs)
        det = r.pop("detector")
        train.append(r)
        infer += inference_speed(det, X, dev, args.batches, pkts_per_flow)
    infer += iforest_speed(X, args.batches, pkts_per_flow)
    print(f"\nTraining (SemiFlow small config, {X.shape[1]} bytes/row, "
          f"{args.speed_epochs} epoch(s) per stage, torch threads {torch.get_num_threads()}):")
    print("| device | rows | epochs run | seconds | samples/s |\n|---|---|---|---|---|")
    for r in train:
        print(f"| {r['device']} | {r['train_rows']} | {r['epochs_run']} | {r['seconds']} | "
              f"{r['samples_per_s']} |")
    print(f"\nInference (flows/s = packets/s / {pkts_per_flow:.2f} scored packets per flow):")
    print("| model | device | batch | packets/s | flows/s |\n|---|---|---|---|---|")
    for r in infer:
        print(f"| {r['model']} | {r['device']} | {r['batch']} | {r['packets_per_s']} | "
              f"{r['flows_per_s']} |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"training": train, "inference": infer, "gpu": gpu,
            "torch_threads": torch.get_num_threads()}


def speed_rows(args: argparse.Namespace, extract_dir: str | None) -> tuple[np.ndarray, float]:
    """Packet rows for timing (normal training-like traffic) and mean packets per flow."""
    if args.packets:
        X = np.load(args.packets)
        meta = Path(args.packets).with_suffix(".json")
        ppf = json.loads(meta.read_text())["packets_per_flow"] if meta.exists() else 1.0
        return X[: args.speed_rows], ppf
    from semiflow.training.evaluate import load_flow_data
    data = load_flow_data([extract_dir])
    f = data.flows
    idx = np.flatnonzero(((f["label"] == "normal") & (f["n_selected"] > 0)).to_numpy())
    idx = np.random.default_rng(0).permutation(idx)
    X, pos = data.packets(np.sort(idx[: args.speed_rows]))
    ppf = float(f["n_selected"].to_numpy()[idx].mean())
    X = X[: args.speed_rows]
    if args.save_packets:
        np.save(args.save_packets, X)
        Path(args.save_packets).with_suffix(".json").write_text(
            json.dumps({"packets_per_flow": ppf}))
    return X, ppf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extract", help="an extraction directory (default: extract --corpus)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--detectors", default=ALL)
    p.add_argument("--benchmarks", default="all")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4, help="deep detectors (default 4)")
    p.add_argument("--bytes", type=int, default=512,
                   help="first N bytes per packet for the accuracy runs (default 512)")
    p.add_argument("--cap-per-file", type=int, default=20)
    p.add_argument("--no-loso", action="store_true")
    p.add_argument("--device", default="cpu", help="device of the accuracy runs")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--speed-devices", default="cpu,cuda")
    p.add_argument("--speed-epochs", type=int, default=2)
    p.add_argument("--speed-rows", type=int, default=4096)
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1, 64, 4096])
    p.add_argument("--packets", help="speed only: packet rows saved by --save-packets")
    p.add_argument("--save-packets", help="save the speed rows (.npy) for a device run")
    p.add_argument("--json", help="write all figures as JSON")
    p.add_argument("--html", help="write the accuracy results as an HTML report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {"args": {k: v for k, v in vars(args).items()}}
    extract_dir = None
    if not args.skip_accuracy or not args.packets:
        extract_dir = extraction(args)
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args, extract_dir)
    if not args.skip_speed:
        X, ppf = speed_rows(args, extract_dir)
        result["speed"] = speed(args, X, ppf)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
