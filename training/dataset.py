"""From an extraction directory to model inputs: packet rows, flow index, splits, flow caps.

Splits are by capture FILE (and can be by source), or by TIME within a capture when there are
too few files, never by random flow: flows of one capture share hosts, timing and often the
same session, so a random flow-level split leaks.
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


def split_by_time(flows: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  group: str = "source_file") -> np.ndarray:
    """'train' / 'val' / 'test' for every flow: contiguous blocks by start time within each
    capture file (earliest flows train, latest calibrate). Nothing random.

    For one network and few captures a file split is impossible and a random flow split leaks
    (flows of one session land on both sides); later traffic is also what a deployed model
    meets, so the threshold is set on the latest block."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    out = np.empty(len(flows), dtype=object)
    ts = flows["ts"].to_numpy(dtype=np.float64)
    for _, idx in flows.groupby(group, sort=True).indices.items():
        idx = idx[np.argsort(ts[idx], kind="stable")]
        n = len(idx)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        out[idx[:n_train]] = "train"
        out[idx[n_train:n_train + n_val]] = "val"
        out[idx[n_train + n_val:]] = "test"
    return out


def budget_flows(flows: pd.DataFrame, max_flows: int | None, group: str = "source_file"
                 ) -> np.ndarray:
    """Boolean mask keeping at most max_flows flows in all, shared as evenly as possible
    between capture files (small files keep everything, large ones the same share), taken
    evenly spaced in start time within a file so every part of a capture stays represented.
    Deterministic; None or 0 keeps everything."""
    keep = np.zeros(len(flows), bool)
    groups = list(flows.groupby(group, sort=True).indices.values())
    if not max_flows or len(flows) <= max_flows:
        keep[:] = True
        return keep
    sizes = np.array([len(g) for g in groups])
    # water-filling: the largest per-file share s with sum(min(size, s)) <= max_flows
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(sizes, mid).sum() <= max_flows else (lo, mid - 1)
    ts = flows["ts"].to_numpy(dtype=np.float64)
    for idx in groups:
        idx = idx[np.argsort(ts[idx], kind="stable")]
        take = min(len(idx), lo)
        if take:
            keep[idx[np.floor(np.linspace(0, len(idx) - 1, take) + 0.5).astype(np.int64)]] = True
    return keep


def flow_matrix(stores: list[FlowStore], store_of: np.ndarray, rows: np.ndarray, k: int,
                l: int) -> np.ndarray:
    """uint8[len(rows), k, l] samples of flows given by (store index, row in that store), in
    order; read in chunks and cut to k x l as they come, so memory stays len(rows) * k * l."""
    X = np.zeros((len(rows), k, l), np.uint8)
    for s, store in enumerate(stores):
        mine = np.flatnonzero(store_of == s)
        for a in range(0, len(mine), 2048):
            part = mine[a:a + 2048]
            X[part] = store.samples.rows(rows[part])[:, :k, :l]
    return X
