"""SemiFlow's inference score on the corpus benchmarks: classifier log-odds vs flow density.

One SemiFlow fit per split (the same splits, bytes, caps and epochs as
benchmarks/model_benchmarks.py), then three packet scores of that one model, max over a flow:
  classifier  the method's inference (encoder + classifier log-odds; score="classifier")
  flow-nll    the flow's NLL per latent dimension (encoder + flow; score="flow-nll")
  radius      ||F(e)||^2 / d, what an ideal normal-vs-pseudo-anomaly classifier ranks by
Prints flow-level AUROC / AUPRC / TPR@1e-3, mean ± std over seeds (LOSO folds averaged
within a seed first). CPU; about 20 fits of ~20-60 s each on a busy 2-core machine:

    .venv/bin/python benchmarks/semiflow_score_variants.py --extract EXTRACT_DIR
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np
import torch

from semiflow.detector.aggregate import aggregate_flow_scores
from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_inference import flow_nll_scores
from semiflow.detector.models.semiflow_model import SemiFlowConfig
from semiflow.training.evaluate import BENCHMARKS, flow_metrics, load_flow_data, make_splits

METRICS = ("auroc", "auprc", "tpr@0.001")


@torch.no_grad()
def scores(det: SemiFlowDetector, X: np.ndarray) -> dict[str, np.ndarray]:
    z, _ = det.flow_(det._latent(torch.from_numpy(X)).flatten(1))
    return {"classifier": det.anomaly_score(X),
            "flow-nll": flow_nll_scores(det.encoder_, det.flow_, X, det.device_),
            "radius": (z.double() ** 2).sum(1).numpy() / z.shape[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extract", required=True, help="`semiflow extract --manifest` of the corpus")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--bytes", type=int, default=512)
    p.add_argument("--cap-per-file", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_flow_data([args.extract])
    nb = args.bytes
    res: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for seed in args.seeds:
        for bench in BENCHMARKS:
            for sp in make_splits(data.flows, bench, seed, args.cap_per_file):
                Xtr, _ = data.packets(sp.train)
                Xva, _ = data.packets(sp.val)
                det = SemiFlowDetector(SemiFlowConfig.small(length=nb), epochs=args.epochs,
                                       device="cpu", random_state=seed)
                det.fit(np.ascontiguousarray(Xtr[:, :nb]), np.ascontiguousarray(Xva[:, :nb]))
                X, pos = data.packets(sp.test)
                all_s = scores(det, np.ascontiguousarray(X[:, :nb]))
                group = "loso" if sp.fold.startswith("loso") else sp.fold
                for name, s in all_s.items():
                    f = aggregate_flow_scores(s, pos, len(sp.test), "max")
                    ok = np.isfinite(f)
                    m = flow_metrics(sp.y_test[ok], f[ok])
                    res[(bench, group, name)][seed].append([m[k] for k in METRICS])
                    print(f"{bench}/{sp.fold} seed {seed} {name}: AUROC {m['auroc']:.3f}",
                          file=sys.stderr, flush=True)
    print("| benchmark | split | score | AUROC | AUPRC | TPR@1e-3 |\n|---|---|---|---|---|---|")
    for (bench, group, name), per_seed in res.items():
        v = np.array([np.mean(x, axis=0) for x in per_seed.values()])
        cells = [f"{mu:.3f} ± {sd:.3f}" for mu, sd in zip(v.mean(0), v.std(0))]
        print(f"| {bench} | {group} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
