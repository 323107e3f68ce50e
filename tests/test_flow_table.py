"""The streamed flow table (training/flow_table.py) gives the same parts as normal_parts with
the training columns; the split on file codes gives what the pandas split gave; the service
vocabulary read from the first packet's headers counts what the whole samples counted."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_memory import build_store

from semiflow.detector.models.semiflow_flownet import service_keys
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.dataset import (
    budget_flows,
    cap_flows_per_file,
    flow_matrix,
    split_by_file,
    split_by_time,
)
from semiflow.training.flow_shards import ShardedFlows
from semiflow.training.train import (
    TRAIN_CATEGORICAL,
    TRAIN_COLUMNS,
    flow_parts,
    normal_parts,
    split_normal,
)

# ---- the pandas split as it was (frozen copies of the code this branch replaced) ----------


def old_split_by_file(flows, fractions=(0.7, 0.15, 0.15), seed=0, group="source_file"):
    files = np.array(sorted(flows[group].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    n = len(files)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    part = {f: "train" for f in files[:n_train]}
    part.update({f: "val" for f in files[n_train:n_train + n_val]})
    part.update({f: "test" for f in files[n_train + n_val:]})
    return flows[group].map(part).to_numpy()


def old_cap(flows, max_per_file, seed=0):
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(flows), bool)
    for _, idx in flows.groupby("source_file").indices.items():
        if len(idx) > max_per_file:
            idx = rng.choice(idx, max_per_file, replace=False)
        keep[idx] = True
    return keep


def old_split_by_time(flows, fractions=(0.7, 0.15, 0.15), group="source_file"):
    out = np.empty(len(flows), dtype=object)
    ts = flows["ts"].to_numpy(dtype=np.float64)
    for _, idx in flows.groupby(group, sort=True).indices.items():
        idx = idx[np.argsort(ts[idx], kind="stable")]
        n = len(idx)
        n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
        out[idx[:n_train]] = "train"
        out[idx[n_train:n_train + n_val]] = "val"
        out[idx[n_train + n_val:]] = "test"
    return out


def old_budget(flows, max_flows, group="source_file"):
    keep = np.zeros(len(flows), bool)
    groups = list(flows.groupby(group, sort=True).indices.values())
    if not max_flows or len(flows) <= max_flows:
        keep[:] = True
        return keep
    sizes = np.array([len(g) for g in groups])
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


def old_split_normal(normal, seed=42, split="auto", log=print, min_calib=0):
    nfiles = normal["source_file"].nunique()
    if split == "time" or (split == "auto" and nfiles < 3):
        why = "asked for" if split == "time" else f"only {nfiles} normal capture file(s)"
        log(f"time: {why}")
        return old_split_by_time(normal)
    if nfiles < 7:
        files = sorted(normal["source_file"].unique())
        rng = np.random.default_rng(seed)
        rng.shuffle(files)
        part = {f: "train" for f in files}
        part[files[0]] = "val"
        if nfiles >= 3:
            part[files[1]] = "test"
        part = normal["source_file"].map(part).to_numpy()
    else:
        part = old_split_by_file(normal, seed=seed)
    n_calib = int((part == "test").sum())
    if n_calib < min_calib:
        by_time = int(round(0.15 * len(normal)))
        if split == "auto" and by_time >= min_calib:
            log("time: too few calib")
            return old_split_by_time(normal)
        log("warning")
    return part


def frames(seed: int, n: int = 3000):
    """The same flows as plain strings and as a categorical in unsorted category order."""
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}.pcap" for i in rng.permutation(rng.integers(1, 12))]
    size = rng.integers(1, 4 * n // len(names), len(names))
    f = pd.DataFrame({"source_file": np.repeat(names, size),
                      "ts": np.round(rng.uniform(0, 100, size.sum()), 1)})   # ties on purpose
    f = f.sample(frac=1, random_state=seed).reset_index(drop=True)
    cat = f.assign(source_file=pd.Categorical(f["source_file"], categories=names[::-1]))
    return f, cat


@pytest.mark.parametrize("seed", range(6))
def test_split_on_codes_is_the_pandas_split(seed):
    for f in frames(seed):
        for s in (0, 3):
            np.testing.assert_array_equal(cap_flows_per_file(f, 50, s), old_cap(f, 50, s))
            assert list(split_by_file(f, seed=s)) == list(old_split_by_file(f, seed=s))
        assert list(split_by_time(f)) == list(old_split_by_time(f))
        for m in (0, 10, 500, 10**6):
            np.testing.assert_array_equal(budget_flows(f, m), old_budget(f, m))
        for split in ("auto", "file", "time"):
            if split == "file" and f["source_file"].nunique() < 2:
                continue
            for min_calib in (0, 400, 10**5):
                said_old, said_new = [], []
                old = old_split_normal(f, seed, split, said_old.append, min_calib)
                new = split_normal(f, seed, split, said_new.append, min_calib)
                assert list(new) == list(old), (split, min_calib)
                assert ["TIME" in m for m in said_new] == [m.startswith("time")
                                                             for m in said_old]


# ---- whole parts: the streamed table against normal_parts(TRAIN_COLUMNS) --------------------

def _samples(n: int, seed: int = 0) -> np.ndarray:
    """Flow samples of a few services: varied protocol and ports, a short first packet
    sometimes, an empty first slot sometimes."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 4, 96), np.uint8)
    X[:, :, 0] = 0x45
    X[:, :, 9] = rng.choice([6, 17, 1], (n, 1))
    X[:, :, 60:64] = rng.choice([0, 1, 80, 187], (n, 4, 4))
    X[:, :, 64:72] = rng.integers(0, 255, (n, 4, 8))
    X[rng.random(n) < 0.1, 0, 40:] = 0           # first packet cut before its ports
    X[rng.random(n) < 0.1, 0] = 0                # no first packet
    return X


def _store(path, n: int, files: list[str], seed: int, row_group: int = 97):
    """A store of n flows: labels normal / anomalous / none, some without a sample, files
    in unsorted order, several row groups (each its own dictionary)."""
    rng = np.random.default_rng(seed)
    build_store(_samples(n, seed), n, 1, path)
    f = pd.read_parquet(path / "flows.parquet")
    f["label"] = rng.choice(["normal", "normal", "normal", "anomalous", None], n)
    f["n_selected"] = np.where(rng.random(n) < 0.1, 0, f["n_selected"]).astype(np.int16)
    f["source_file"] = np.array(files)[np.sort(rng.integers(0, len(files), n))]
    f["ts"] = rng.uniform(0, 50, n).round(2)
    pq.write_table(pa.Table.from_pandas(f, preserve_index=False), path / "flows.parquet",
                   row_group_size=row_group)
    return path, f


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("table")
    many = [f"c{i}.pcap" for i in (5, 2, 9, 0, 7, 1, 8, 3, 6, 4)]
    return {"many": _store(d / "many", 2500, many, 0)[0],
            "two": _store(d / "two", 900, ["z.pcap", "a.pcap"], 1)[0],
            "other": _store(d / "other", 700, ["q.pcap", "b.pcap", "m.pcap", "c0.pcap"], 2)[0],
            "same": _store(d / "same", 1200, many, 3)[0]}


CASES = [
    ("many", {}), ("many", {"max_flows": 300}), ("many", {"max_flows_per_file": 40}),
    ("many", {"max_flows_per_file": 60, "max_flows": 200, "seed": 5}),
    ("many", {"split": "time"}), ("many", {"min_calib": 600}), ("many", {"min_calib": 10**4}),
    ("two", {}), ("two", {"split": "file"}), ("many+other", {"max_flows_per_file": 30}),
    ("many+same", {"max_flows_per_file": 30}), ("many+two+other", {"split": "file"}),
    ("two", {"exclude_uids": "some"}),
]


@pytest.mark.parametrize("which,kw", CASES)
def test_streamed_table_gives_the_same_parts(stores, which, kw):
    dirs = [stores[w] for w in which.split("+")]
    kw = {"max_flows": 0, **kw}
    if kw.get("exclude_uids") == "some":
        uids = pd.read_parquet(dirs[0] / "flows.parquet", columns=["uid"])["uid"]
        kw["exclude_uids"] = set(uids.iloc[::7]) | {"nope"}
    said_old, said_new = [], []
    old, _ = normal_parts(dirs, log=said_old.append, columns=TRAIN_COLUMNS,
                          categorical=TRAIN_CATEGORICAL, **kw)
    new, st = flow_parts(dirs, log=said_new.append, **kw)
    assert said_new == said_old
    assert all(len(s.flows.columns) == 0 for s in st)       # no table kept on the stores
    for name in ("train", "val", "calib", "anomalous"):
        o, n = old[name], new[name]
        assert len(n) == len(o), name
        for col in ("row", "_store", "ts", "n_selected"):
            np.testing.assert_array_equal(n[col].to_numpy(), o[col].to_numpy(), err_msg=col)
        for col in ("source_file", "label"):
            assert n[col].astype(str).tolist() == o[col].astype(str).tolist(), (name, col)
    assert (new["calib"] is new["val"]) == (old["calib"] is old["val"])


def test_streamed_table_errors_like_normal_parts(stores, tmp_path):
    with pytest.raises(ValueError, match="no extraction directory"):
        flow_parts([])
    with pytest.raises(ValueError, match="not a readable extraction"):
        flow_parts([tmp_path])
    uids = set(pd.read_parquet(stores["two"] / "flows.parquet", columns=["uid"])["uid"])
    with pytest.raises(ValueError, match="no normal flows with a sample"):
        flow_parts([stores["two"]], exclude_uids=uids, log=lambda m: None)


# ---- samples: the service vocabulary from the first headers, shuffled reads ---------------

def test_service_counts_read_the_first_headers_only(stores):
    s = FlowStore.open(stores["many"])
    n = len(s.samples)
    rows = np.random.default_rng(0).permutation(n)[: n // 2]
    src = ShardedFlows([s], np.zeros(len(rows), np.int16), rows.astype(np.int32), 4, 96, 300)
    whole = flow_matrix([s], np.zeros(len(rows), np.int64), rows, 4, 96)
    keys, cnt = np.unique(service_keys(whole).numpy(), return_counts=True)
    assert src.service_counts() == dict(zip(keys.tolist(), cnt.tolist()))
    assert len(Counter(src.service_counts())) > 3
    first = flow_matrix([s], np.zeros(len(rows), np.int64), rows, 1, 64)   # the narrow read
    np.testing.assert_array_equal(first, whole[:, :1, :64])
    np.testing.assert_array_equal(s.samples.rows(rows, 2, 50), s.samples.rows(rows)[:, :2, :50])


def test_flow_matrix_puts_each_sample_where_asked(stores):
    s = FlowStore.open(stores["two"])
    rows = np.arange(0, len(s.samples), 3)
    at = np.random.default_rng(1).permutation(len(rows))
    got = flow_matrix([s], np.zeros(len(rows), np.int64), rows, 4, 96, at=at)
    want = flow_matrix([s], np.zeros(len(rows), np.int64), rows, 4, 96)
    np.testing.assert_array_equal(got[at], want)
