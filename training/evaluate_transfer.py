"""`semiflow evaluate --train A --test B`: fit on one extraction, test on another.

The question every deployment asks: a detector fitted on the normal traffic of one network or
day, how does it do on the next? Train/val are the NORMAL flows of the --train extractions
(split as `semiflow train` splits them: by capture file, or by time within a capture when
there are too few files; val sets the threshold at the target FPR); the test set is every flow
of the --test extractions labelled normal or anomalous. No capture file may be on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from semiflow.training.dataset import cap_flows_per_file
from semiflow.training.evaluate import FlowData, Split
from semiflow.training.train import split_normal


def transfer_split(data: FlowData, n_train_stores: int, seed: int = 0,
                   cap_per_file: int | None = None,
                   log: Callable[[str], None] = lambda m: None) -> Split:
    """The Split of data (train extractions first, n_train_stores of them, then test)."""
    f = data.flows
    on_train = f["_store"].to_numpy() < n_train_stores
    keep = cap_flows_per_file(f, cap_per_file, seed) if cap_per_file else np.ones(len(f), bool)
    labels = f["label"].to_numpy()
    normal = np.flatnonzero(on_train & keep & (labels == "normal"))
    if not len(normal):
        raise ValueError("--train: no flow labelled normal (extract with --label normal, "
                         "--manifest or --conn-labels)")
    both = set(f["source_file"].to_numpy()[normal]) & set(
        f["source_file"].to_numpy()[~on_train])
    if both:
        raise ValueError(f"capture file(s) in both --train and --test: {sorted(both)[:3]}")
    part = split_normal(f.iloc[normal].reset_index(drop=True), seed, "auto", log)
    train, val = normal[part == "train"], normal[part != "train"]  # val + calib: threshold
    test = np.flatnonzero(~on_train & keep & np.isin(labels, ["normal", "anomalous"]))
    if not len(test):
        raise ValueError("--test: no flow labelled normal or anomalous (extract with "
                         "--manifest, --conn-labels or --label)")
    y = (labels[test] == "anomalous").astype(int)
    left_out = int((~on_train & keep).sum()) - len(test)
    notes = [f"fit on the normal flows of --train ({len(train)} train, {len(val)} val for the "
             f"threshold); test = every labelled flow of --test ({int(y.sum())} anomalous, "
             f"{int((y == 0).sum())} normal)"]
    if left_out:
        notes.append(f"{left_out} --test flow(s) labelled background/unknown left out")
    if y.all() or not y.any():
        notes.append("the test set holds one class only: AUROC/AUPRC undefined, rates at the "
                     "threshold still count")
    within = bool(set(f["source_file"].to_numpy()[train]) & set(f["source_file"].to_numpy()[val]))
    return Split("train-test", "transfer", seed, train, val, test, y, notes, within)
