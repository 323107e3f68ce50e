"""From an extraction directory to model inputs: packet rows, flow index, splits, flow caps.

Splits are by capture FILE (and can be by source), or by TIME within a capture when there are
too few files, never by random flow: flows of one capture share hosts, timing and often the
same session, so a random flow-level split leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


PART_NAMES = np.array(["train", "val", "test", None], dtype=object)  # code -1: no file


def _codes(flows: pd.DataFrame, group: str) -> np.ndarray:
    """Group codes in groupby order (sorted names; a categorical's category order), -1 for
    a missing name (groupby drops those)."""
    return pd.factorize(flows[group], sort=True)[0]


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    """Positions of each present group (ascending), in code order: groupby(...).indices
    without a table (codes -1 belong to none)."""
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(np.bincount(codes + 1))
    out = [order[a:b] for a, b in zip(ends[:-1], ends[1:]) if b > a]
    return out


def file_roles(files: list[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
               seed: int = 0) -> dict[str, str]:
    """'train' / 'val' / 'test' for each file name (whole files, seeded)."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    files = np.array(sorted(files))
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    n = len(files)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    part = {f: "train" for f in files[:n_train]}
    part.update({f: "val" for f in files[n_train:n_train + n_val]})
    part.update({f: "test" for f in files[n_train + n_val:]})
    return part


def split_by_file(flows: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0, group: str = "source_file") -> np.ndarray:
    """'train' / 'val' / 'test' for every flow, whole capture files at a time."""
    part = file_roles(list(flows[group].unique()), fractions, seed)
    return flows[group].map(part).to_numpy()


def cap_codes(codes: np.ndarray, max_per_file: int, seed: int = 0) -> np.ndarray:
    """cap_flows_per_file on group codes (the random draws go in code order)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(codes), bool)
    for idx in _groups(codes):
        if len(idx) > max_per_file:
            idx = rng.choice(idx, max_per_file, replace=False)
        keep[idx] = True
    return keep


def cap_flows_per_file(flows: pd.DataFrame, max_per_file: int, seed: int = 0) -> np.ndarray:
    """Boolean mask keeping at most max_per_file flows of each capture (random, seeded)."""
    return cap_codes(_codes(flows, "source_file"), max_per_file, seed)


def time_codes(codes: np.ndarray, ts: np.ndarray,
               fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """split_by_time on group codes: int8 0 train / 1 val / 2 test, -1 for no group."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    out = np.full(len(codes), -1, np.int8)
    for idx in _groups(codes):
        idx = idx[np.argsort(ts[idx], kind="stable")]
        n = len(idx)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        out[idx[:n_train]] = 0
        out[idx[n_train:n_train + n_val]] = 1
        out[idx[n_train + n_val:]] = 2
    return out


def split_by_time(flows: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  group: str = "source_file") -> np.ndarray:
    """'train' / 'val' / 'test' for every flow: contiguous blocks by start time within each
    capture file (earliest flows train, latest calibrate). Nothing random.

    For one network and few captures a file split is impossible and a random flow split leaks
    (flows of one session land on both sides); later traffic is also what a deployed model
    meets, so the threshold is set on the latest block."""
    part = time_codes(_codes(flows, group), flows["ts"].to_numpy(dtype=np.float64), fractions)
    return PART_NAMES[part]


def budget_codes(codes: np.ndarray, ts: np.ndarray, max_flows: int | None) -> np.ndarray:
    """budget_flows on group codes and start times."""
    keep = np.zeros(len(codes), bool)
    if not max_flows or len(codes) <= max_flows:
        keep[:] = True
        return keep
    groups = _groups(codes)
    sizes = np.array([len(g) for g in groups])
    # water-filling: the largest per-file share s with sum(min(size, s)) <= max_flows
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(sizes, mid).sum() <= max_flows else (lo, mid - 1)
    for idx in groups:
        idx = idx[np.argsort(ts[idx], kind="stable")]
        take = min(len(idx), lo)
        if take:
            keep[idx[np.floor(np.linspace(0, len(idx) - 1, take) + 0.5).astype(np.int64)]] = True
    return keep


def budget_flows(flows: pd.DataFrame, max_flows: int | None, group: str = "source_file"
                 ) -> np.ndarray:
    """Boolean mask keeping at most max_flows flows in all, shared as evenly as possible
    between capture files (small files keep everything, large ones the same share), taken
    evenly spaced in start time within a file so every part of a capture stays represented.
    Deterministic; None or 0 keeps everything."""
    if not max_flows or len(flows) <= max_flows:
        return np.ones(len(flows), bool)
    return budget_codes(_codes(flows, group), flows["ts"].to_numpy(dtype=np.float64),
                        max_flows)


SPLITS = ("auto", "file", "time")


def _time_split(codes: np.ndarray, ts: np.ndarray, why: str, log: Callable[[str], None]
                ) -> np.ndarray:
    log(f"split by TIME ({why}): within each capture the earliest 70% of normal flows "
        "train, the next 15% validate, the latest 15% calibrate the threshold")
    return time_codes(codes, ts, (0.7, 0.15, 0.15))


def split_codes(codes: np.ndarray, ts: np.ndarray, names: Sequence[str], seed: int = 42,
                split: str = "auto", log: Callable[[str], None] = print, min_calib: int = 0
                ) -> np.ndarray:
    """split_normal on file codes (into `names`) and start times: int8 0 train / 1 val /
    2 calib per flow, without a table (the streamed path keeps a few bytes a flow)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    files = [names[i] for i in np.flatnonzero(np.bincount(codes[codes >= 0],
                                                          minlength=len(names)))]
    nfiles = len(files)
    if split == "time" or (split == "auto" and nfiles < 3):
        why = "asked for" if split == "time" else f"only {nfiles} normal capture file(s)"
        return _time_split(codes, ts, why, log)
    if nfiles < 2:
        raise ValueError("split='file' needs at least 2 normal capture files")
    part = _file_split(codes, names, files, seed)
    n_calib = int((part == 2).sum())
    if n_calib < min_calib:
        by_time = int(round(0.15 * len(codes)))
        if split == "auto" and by_time >= min_calib:
            return _time_split(codes, ts, f"a split by file leaves {n_calib} calibration "
                               f"flows, fewer than the {min_calib} the target FPR needs", log)
        log(f"warning: the split by file leaves {n_calib} calibration flows, fewer than the "
            f"{min_calib} the target FPR needs: the threshold is coarse"
            + (f" (--split time would calibrate on {by_time})" if by_time > n_calib else
               "; more normal traffic, or a larger --target-fpr, resolves it"))
    return part


_ROLE = {"train": 0, "val": 1, "test": 2}


def _file_split(codes: np.ndarray, names: Sequence[str], files: list[str], seed: int
                ) -> np.ndarray:
    """Whole files: 70/15/15, or with fewer than 7 files one file each for val and calib."""
    if len(files) < 7:   # too few files for 15% each: give val and calib one file each
        files = sorted(files)
        rng = np.random.default_rng(seed)
        rng.shuffle(files)
        role = {f: "train" for f in files}
        role[files[0]] = "val"
        if len(files) >= 3:
            role[files[1]] = "test"
    else:
        role = file_roles(files, (0.7, 0.15, 0.15), seed)
    lut = np.array([_ROLE.get(role.get(n), -1) for n in names] + [-1], np.int8)
    return lut[codes]     # (code -1, no file name: the last entry, no part)


CHUNK = 2048       # flows unpacked at a time
WINDOW = 16_384    # rows of a store read between page drops


def _pieces(rows: np.ndarray) -> list[tuple[int, int]]:
    """Runs of at most CHUNK flows; with rows sorted, each within one WINDOW of rows, so the
    store pages mapped between two drops stay bounded whatever the store's size."""
    cuts = np.arange(0, len(rows), CHUNK)
    if len(rows) > 1 and (np.diff(rows) >= 0).all():
        w = rows // WINDOW
        cuts = np.union1d(cuts, np.flatnonzero(w[1:] != w[:-1]) + 1)
    return list(zip(cuts.tolist(), [*cuts[1:].tolist(), len(rows)]))


def flow_matrix(stores: list[FlowStore], store_of: np.ndarray, rows: np.ndarray, k: int,
                l: int, at: np.ndarray | None = None) -> np.ndarray:
    """uint8[len(rows), k, l] samples of flows given by (store index, row in that store), in
    order (or flow i at position at[i]: read in store order, stored shuffled, no second
    copy); read in chunks, each flow's first k packets and l bytes only (k=1, l=64: the
    first packet's headers, all the service key reads), so memory stays len(rows) * k * l
    (the store pages read are dropped after each chunk: FlowStore.drop_pages)."""
    X = np.zeros((len(rows), k, l), np.uint8)
    for s, store in enumerate(stores):
        mine = np.flatnonzero(store_of == s)
        for a, b in _pieces(rows[mine]):
            part = mine[a:b]
            X[part if at is None else at[part]] = store.samples.rows(rows[part], k, l)
            store.drop_pages()
    return X
