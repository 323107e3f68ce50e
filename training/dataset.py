"""From an extraction directory to model inputs: packet rows, flow index, splits by capture file.

Splits are by capture FILE (and can be by source), never by flow: flows of one capture share
hosts, timing and often the same session, so a flow-level split leaks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semiflow.plugin.flowstore import FlowStore


def packet_rows(store: FlowStore, flows: np.ndarray | pd.Index | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(X uint8[n_packets, L], flow_pos int[n_packets]) for the given flow rows (all if None).

    flow_pos[i] is the position of packet i's flow within `flows`, so per-flow aggregation
    can use detector.aggregate.aggregate_flow_scores(scores, flow_pos, len(flows)).
    """
    rows = np.arange(len(store.flows)) if flows is None else np.asarray(flows, dtype=np.int64)
    return store.samples.packet_rows(rows)


def split_by_file(flows: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0, group: str = "source_file") -> np.ndarray:
    """'train' / 'val' / 'test' for every flow, whole capture files at a time."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    files = np.array(sorted(flows[group].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    n = len(files)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    part = {f: "train" for f in files[:n_train]}
    part.update({f: "val" for f in files[n_train:n_train + n_val]})
    part.update({f: "test" for f in files[n_train + n_val:]})
    return flows[group].map(part).to_numpy()


def cap_flows_per_file(flows: pd.DataFrame, max_per_file: int, seed: int = 0) -> np.ndarray:
    """Boolean mask keeping at most max_per_file flows of each capture (random, seeded)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(flows), bool)
    for _, idx in flows.groupby("source_file").indices.items():
        if len(idx) > max_per_file:
            idx = rng.choice(idx, max_per_file, replace=False)
        keep[idx] = True
    return keep
