"""`semiflow train EXTRACT_DIR... -o MODEL_DIR`: fit SemiFlow on normal flows -> artifact."""

from __future__ import annotations

import argparse
import sys

from semiflow.detector.threshold import DEFAULT_TARGET_FPR
from semiflow.threads import add_threads_argument, apply_threads

DEFAULT_MAX_FLOWS = 50_000   # = training.train.DEFAULT_MAX_FLOWS (not imported: keeps --help light)


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train SemiFlow on the normal flows of extraction directories",
        description="Fit SemiFlow on flows labelled normal (from `semiflow extract "
                    "--manifest` or --conn-labels) into train / val (early stopping) / calib "
                    "(threshold): by capture file with 3 or more files, else by time within "
                    "each capture (earliest 70% train, next 15% val, latest 15% calib). "
                    "Labelled anomalies are only reported, never fitted.")
    p.add_argument("extract_dirs", nargs="+", metavar="EXTRACT_DIR")
    p.add_argument("-o", "--out", required=True, metavar="MODEL_DIR",
                   help="artifact directory to write")
    p.add_argument("--level", choices=["flow", "packet"], default="flow",
                   help="flow (default): flow-level SemiFlow on the first K packets of each flow "
                        "together (extract with --select all, the default); packet: the "
                        "method's packet-level model, scored per packet and aggregated "
                        "(--config, --score, --aggregate, --resume apply to it only)")
    p.add_argument("--config", choices=["small", "paper"], default="small",
                   help="packet level: model size, small (CPU minutes, default) or paper")
    p.add_argument("--epochs", type=int, help="maximum epochs per stage (default: the config's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision on CUDA, ignored on CPU (auto: fp32 for the flow "
                        "level, which measured faster than bf16 at every batch on an H200, "
                        "bf16 for the packet level)")
    p.add_argument("--flow-config", choices=["default", "cpu"], default="default",
                   help="flow level: model size, default, or cpu (128 bytes per packet, a "
                        "shallower byte encoder: ~2.3x faster scoring on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="flow level: flows per step, all GPUs together (default: the "
                        "config's 64; larger batches scale the learning rate by "
                        "sqrt(N/64), at most 4x, with warm-up and cosine decay; e.g. 1024 "
                        "on a GPU for millions of flows: in the same epochs a small data set "
                        "trains less well with large batches, docs/scale.md)")
    p.add_argument("--lr", type=float, default=None, metavar="RATE",
                   help="flow level: peak learning rate (default: 1e-3, scaled as above for "
                        "a larger --batch-size)")
    p.add_argument("--compile", action="store_true",
                   help="flow level: torch.compile the trained modules (GPU; compiling "
                        "takes about a minute, worth it for long runs)")
    p.add_argument("--cuda-graphs", choices=["on", "off"], default="on",
                   help="flow level on CUDA, without --compile: replay each training step "
                        "as one captured CUDA graph, DDP's all-reduce included (default on: "
                        "small steps are launch-bound, docs/scale.md)")
    p.add_argument("--shard-flows", type=int, default=None, metavar="N",
                   help="flow level: stream the training flows from the extraction in "
                        "shards of N flows (samples in RAM: two or three shards of N x K x "
                        "256 bytes; the flow table adds ~30 bytes a flow, docs/scale.md) "
                        "instead of loading them all")
    p.add_argument("--ddp", action="store_true",
                   help="flow level: DistributedDataParallel across the processes torchrun "
                        "starts, one per GPU (torchrun --nproc-per-node G -m semiflow train "
                        "... --ddp); rank 0 writes the model")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--target-fpr", type=float, default=DEFAULT_TARGET_FPR,
                   help=f"false-positive rate the threshold is calibrated for "
                        f"(default {DEFAULT_TARGET_FPR:g})")
    p.add_argument("--score", choices=["classifier", "flow-nll"], default="classifier",
                   help="what scores a packet: the classifier's log-odds (the method, default) "
                        "or the flow's NLL per dimension (docs/model.md compares them)")
    p.add_argument("--aggregate", choices=["max", "mean", "median"], default="max",
                   help="flow score from packet scores (default max)")
    p.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS, metavar="N",
                   help=f"at most N normal flows in all, shared evenly between capture files "
                        f"and evenly spaced in time (default {DEFAULT_MAX_FLOWS}; 0 = all)")
    p.add_argument("--max-flows-per-file", type=int, default=None, metavar="N",
                   help="also cap each capture file at N normal flows (random, seeded), to "
                        "balance many files (default: no per-file cap)")
    p.add_argument("--split", choices=["auto", "file", "time"], default="auto",
                   help="train/val/calib by capture file or by time (default auto: by file "
                        "with 3 or more files, else by time)")
    p.add_argument("--resume", action="store_true",
                   help="continue from MODEL_DIR/checkpoint.pt of an interrupted run")
    add_threads_argument(p)
    p.add_argument("--exclude-uids", metavar="FILE", action="append", default=[],
                   help="flows never to train on as normal: a file of uids (one per line) or "
                        "a Zeek log with a uid column (e.g. the incidents analysts confirmed); "
                        "repeatable")
    p.add_argument("--store", metavar="STORE",
                   help="also add the trained model to this model store as a new version "
                        "(not promoted: diff and shadow it first)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semiflow.training.train import train

    if args.epochs is not None and args.epochs < 1:
        raise ValueError("--epochs must be >= 1")
    if args.lr is not None and not args.lr > 0:
        raise ValueError("--lr must be > 0")
    for flag in ("max_flows", "max_flows_per_file", "batch_size", "shard_flows"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0")
    apply_threads(args.threads)
    summary = train(args.extract_dirs, args.out, config=args.config, epochs=args.epochs,
                    device=args.device, seed=args.seed, target_fpr=args.target_fpr,
                    resume=args.resume, max_flows_per_file=args.max_flows_per_file or None,
                    max_flows=args.max_flows or None, split=args.split,
                    aggregate=args.aggregate, amp=args.amp, score=args.score,
                    level=args.level, exclude_uids=read_uids(args.exclude_uids),
                    batch_size=args.batch_size, lr=args.lr, compile=args.compile,
                    shard_flows=args.shard_flows, ddp=args.ddp,
                    flow_config=args.flow_config, cuda_graphs=args.cuda_graphs == "on",
                    progress=not args.quiet and sys.stderr.isatty(),
                    command="semiflow " + " ".join(sys.argv[1:]))
    if "threshold" not in summary:
        return 0                          # a DDP rank other than 0: rank 0 reports
    rows = summary.get("train_packet_rows_per_second")
    print(f"model written to {summary['out']} ({summary['fit_seconds']:.1f} s of training, "
          f"{summary['train_samples_per_second']:.0f} "
          + ("flows/s" if rows else "samples/s")
          + (f" = {rows:.0f} packet rows/s" if rows else "") + ")")
    if args.store:
        from semiflow.model_store import ModelStore

        name = ModelStore.open_or_create(args.store).add(
            summary["out"], reason="semiflow " + " ".join(sys.argv[1:]))
        print(f"added to {args.store} as version {name} (not promoted)")
    return 0


def read_uids(paths: list[str]) -> set[str] | None:
    """uids from plain lists (one per line) or Zeek logs with a uid column."""
    if not paths:
        return None
    from semiflow.plugin.zeeklog import read_zeek_log

    out: set[str] = set()
    for p in paths:
        with open(p, "rb") as f:
            head = f.read(64)
        if head[:2] == b"\x1f\x8b" or head.startswith(b"#separator") \
                or head.lstrip().startswith(b"{"):
            df = read_zeek_log(p)
            if "uid" not in df:
                raise ValueError(f"{p}: a Zeek log without a uid column")
            out |= set(df["uid"].dropna().astype(str))
        else:
            with open(p, encoding="utf-8", errors="replace") as f:
                out |= {line.strip() for line in f if line.strip() and
                        not line.startswith("#")}
    return out
