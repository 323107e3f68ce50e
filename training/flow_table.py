"""The flow table as flow-level training needs it, at about 20 bytes a flow.

normal_parts (training/train.py) reads the flow tables into pandas, concatenates them and
filters, splits and cuts copies of them: at 6M flows the table, not the shards, set the
peak RSS of `semiflow train --shard-flows` (docs/scale.md). Here each flows.parquet is read a
batch at a time (labels and file names stay dictionary-encoded, never Python strings), only
the flows a part needs are kept, as numpy columns (store int16, row int32 when it fits, start
time, n_selected, file code), and the file and time splits run on file codes
(split_codes). Same parts as normal_parts with the training columns: tests/test_flow_table.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semiflow.plugin.flowstore import FlowStore

from .dataset import budget_codes, cap_codes, split_codes

BATCH = 65_536          # flow-table rows read at a time
ROLES = ("train", "val", "calib")


@dataclass
class FlowColumns:
    """Flows as numpy columns: where each one is (store, row) and what the split needs."""

    store: np.ndarray
    row: np.ndarray
    ts: np.ndarray
    n_selected: np.ndarray
    file: np.ndarray

    @classmethod
    def empty(cls, n: int, row_dtype) -> FlowColumns:
        """Room for n flows (np.empty: pages never written cost no RSS)."""
        return cls(np.empty(n, np.int16), np.empty(n, row_dtype), np.empty(n, np.float64),
                   np.empty(n, np.int16), np.empty(n, np.int32))

    def __len__(self) -> int:
        return len(self.row)

    def put(self, at: int, **cols: np.ndarray) -> int:
        """Write cols at position `at`; returns the position after them."""
        for name, a in cols.items():
            getattr(self, name)[at:at + len(a)] = a
        return at + len(cols["row"])

    def trim(self, n: int) -> None:
        """Keep the first n flows (in place: no second copy)."""
        for f in fields(self):
            getattr(self, f.name).resize(n, refcheck=False)

    def take(self, keep: np.ndarray) -> FlowColumns:
        return FlowColumns(*(getattr(self, f.name)[keep] for f in fields(self)))


def _codes(arr: pa.Array) -> tuple[np.ndarray, list]:
    """(int32 index per row, -1 for null; the dictionary's values) of a string column."""
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    idx = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return idx, arr.dictionary.to_pylist()


class _Names:
    """File names to codes in order of first appearance (the order pandas gives the
    categories of a dictionary-encoded column read whole)."""

    def __init__(self):
        self.code: dict[str, int] = {}

    def codes(self, arr: pa.Array) -> tuple[np.ndarray, list[str]]:
        """Global code per row (-1: no name) and this batch's dictionary."""
        idx, values = _codes(arr)
        for v in values:
            self.code.setdefault(v, len(self.code))
        lut = np.array([self.code[v] for v in values] + [-1], np.int32)
        return lut[idx], values


def _batches(path: os.PathLike, uid: bool):
    cols = ["row", "ts", "n_selected", "label", "source_file"] + (["uid"] if uid else [])
    f = pq.ParquetFile(path, read_dictionary=["label", "source_file"])
    yield from f.iter_batches(batch_size=BATCH, columns=cols)


def _read(stores: list[FlowStore], exclude: pa.Array | None
          ) -> tuple[FlowColumns, FlowColumns, list[str], list[str], int]:
    """(normal flows with a sample, anomalous flows, file names by code, their order for
    the per-file cap, normal flows excluded by uid) over all stores, in store order."""
    n = sum(len(s.samples) for s in stores)
    row_dtype = np.int32 if n < 2**31 else np.int64
    normal, anom = FlowColumns.empty(n, row_dtype), FlowColumns.empty(n, row_dtype)
    at_n = at_a = excluded = 0
    names, per_store = _Names(), []
    for si, s in enumerate(stores):
        seen: dict[str, None] = {}
        for b in _batches(s.path / "flows.parquet", exclude is not None):
            label, labels = _codes(b.column("label"))
            is_n = label == (labels.index("normal") if "normal" in labels else -2)
            is_n &= b.column("n_selected").fill_null(0).to_numpy(zero_copy_only=False) > 0
            if exclude is not None:
                out = pc.is_in(b.column("uid"), value_set=exclude).fill_null(False)
                out = is_n & out.to_numpy(zero_copy_only=False)
                excluded += int(out.sum())
                is_n &= ~out
            is_a = label == (labels.index("anomalous") if "anomalous" in labels else -2)
            file, values = names.codes(b.column("source_file"))
            seen.update(dict.fromkeys(values))
            cols = {"row": b.column("row").to_numpy(), "ts": b.column("ts").to_numpy(),
                    "n_selected": b.column("n_selected").to_numpy(), "file": file}
            at_n = normal.put(at_n, **{k: v[is_n] for k, v in cols.items()})
            at_a = anom.put(at_a, **{k: v[is_a] for k, v in cols.items()})
            normal.store[at_n - int(is_n.sum()):at_n] = si
            anom.store[at_a - int(is_a.sum()):at_a] = si
        per_store.append(list(seen))
    normal.trim(at_n)
    anom.trim(at_a)
    pa.default_memory_pool().release_unused()   # (the batches' buffers, kept for reuse)
    return normal, anom, list(names.code), _cap_order(per_store), excluded


def _cap_order(per_store: list[list[str]]) -> list[str]:
    """The order normal_parts draws the per-file cap in: the categories' order when every
    store has the same ones (pandas keeps the categorical when concatenating), else sorted
    names (the concatenation is plain strings then)."""
    if all(p == per_store[0] for p in per_store):
        return per_store[0]
    return sorted({n for p in per_store for n in p})


def _recode(cols: FlowColumns, names: list[str], order: list[str]) -> None:
    """File codes into `order` (in place)."""
    pos = {n: i for i, n in enumerate(order)}
    lut = np.array([pos[n] for n in names] + [-1], np.int32)
    np.take(lut, cols.file, out=cols.file, mode="wrap")   # (-1 wraps to the last entry)


def _frame(cols: FlowColumns, names: list[str], label: str) -> pd.DataFrame:
    """A part as normal_parts gives it (columns row, ts, n_selected, label, source_file,
    _store) with compact dtypes and a RangeIndex."""
    n = len(cols)
    return pd.DataFrame({
        "row": cols.row, "ts": cols.ts, "n_selected": cols.n_selected,
        "label": pd.Categorical.from_codes(np.zeros(n, np.int8), [label]),
        "source_file": pd.Categorical.from_codes(cols.file, names),
        "_store": cols.store}, copy=False)


def _parts(normal: FlowColumns, part: np.ndarray, names: list[str]) -> dict[str, pd.DataFrame]:
    """The train / val / calib frames, a column at a time (each dropped from `normal` once
    cut: the table and its parts are never both whole in memory)."""
    out: dict[int, dict[str, np.ndarray]] = {r: {} for r in range(3)}
    for f in fields(normal):
        col = getattr(normal, f.name)
        setattr(normal, f.name, None)
        for r in range(3):
            out[r][f.name] = col[part == r]
        del col
    return {name: _frame(FlowColumns(**out[r]), names, "normal") for r, name in enumerate(ROLES)}


def compact_parts(stores: list[FlowStore], max_flows: int | None, seed: int,
                  log: Callable[[str], None], max_flows_per_file: int | None, split: str,
                  min_calib: int, exclude_uids: set[str] | None
                  ) -> dict[str, pd.DataFrame]:
    """normal_parts(columns=TRAIN_COLUMNS) of opened stores: the same parts (same flows,
    same order), each flow held as a few numpy scalars from reading to the split."""
    exclude = pa.array(sorted(exclude_uids), pa.string()) if exclude_uids else None
    normal, anom, names, cap_order, excluded = _read(stores, exclude)
    _recode(normal, names, cap_order)
    _recode(anom, names, cap_order)
    if exclude_uids:
        log(f"excluded {excluded} normal flows whose uid is in the exclusion list "
            f"({len(exclude_uids)} uids)")
    if len(normal) == 0:
        raise ValueError("no normal flows with a sample: extract with --manifest so files are "
                         "labelled, and train on captures of normal traffic")
    n_all = len(normal)
    if max_flows_per_file:
        normal = normal.take(cap_codes(normal.file, max_flows_per_file, seed))
    keep = budget_codes(normal.file, normal.ts, max_flows)
    if not keep.all():
        normal = normal.take(keep)
    del keep
    if len(normal) < n_all:
        log(f"using {len(normal)} of {n_all} normal flows (max {max_flows} in all"
            + (f", {max_flows_per_file} per capture file" if max_flows_per_file else "")
            + "; evenly spaced in time)")
    part = split_codes(normal.file, normal.ts, cap_order, seed, split, log, min_calib)
    parts = _parts(normal, part, cap_order)
    if len(parts["calib"]) == 0:
        parts["calib"] = parts["val"]
        log("warning: no capture file left for threshold calibration: using the val files")
    parts["anomalous"] = _frame(anom, cap_order, "anomalous")
    return parts


def open_stores(extract_dirs: Sequence[str | os.PathLike], columns: list[str] | None = None,
                categorical: list[str] | None = None) -> list[FlowStore]:
    """The extractions opened (flow tables: `columns` of them; [] for none), one spec."""
    if not extract_dirs:
        raise ValueError("no extraction directory given")
    stores = []
    for d in extract_dirs:
        try:
            stores.append(FlowStore.open(d, columns=columns, categorical=categorical))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{d}: not a readable extraction directory ({e})") from e
    spec = stores[0].spec
    for d, s in zip(extract_dirs[1:], stores[1:]):
        if s.spec != spec:
            raise ValueError(f"{d}: extracted with spec {s.spec.to_dict()}, but "
                             f"{extract_dirs[0]} with {spec.to_dict()}")
    return stores
