"""Training flows read from extraction stores shard by shard: data larger than memory.

A week of a busy sensor (~100M flows) does not fit in RAM as dense samples. Every epoch the
training flows are shuffled globally and cut into shards of `shard_flows`; a shard is read from
the memory-mapped stores in store order, for locality, each sample written straight to its
shuffled place (no second copy), and moved to the training device while a background thread
reads the next one. The samples in host memory
stay at about two shards (the one training and the one being read); the stores' file pages
this process read are dropped as they are read (training/dataset.py flow_matrix) so they do
not pile up in its resident set. The flow table is read a batch at a time into a few bytes a
flow (training/flow_table.py), so RAM is bounded by the shards, not the data (docs/scale.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from semiflow.detector.models.semiflow_flownet import service_keys
from semiflow.detector.models.train_loop import numpy_rng, rank_share
from semiflow.plugin.flowstore import FlowStore

from .dataset import flow_matrix

SERVICE_BYTES = 64    # of the first packet: what service_keys reads


class ShardedFlows:
    """Flow samples uint8[k, length] of the flows (store_of[i], rows[i]), streamed."""

    def __init__(self, stores: list[FlowStore], store_of: np.ndarray, rows: np.ndarray,
                 k: int, length: int, shard_flows: int):
        if shard_flows < 2:
            raise ValueError("shard size must be >= 2 flows")
        self.stores, self.k, self.length = stores, k, length
        self.store_of, self.rows = _ints(store_of), _ints(rows)   # (no int64 copies)
        self.shard_flows = int(shard_flows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shard_bytes(self) -> int:
        return self.shard_flows * self.k * self.length

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Dense samples of flows idx (any order), read in store order, stored in idx's."""
        order = np.lexsort((self.rows[idx], self.store_of[idx]))
        return flow_matrix(self.stores, self.store_of[idx[order]], self.rows[idx[order]],
                           self.k, self.length, at=order)

    def _shards(self, idx: np.ndarray, device) -> Iterator[torch.Tensor]:
        parts = [idx[i:i + self.shard_flows] for i in range(0, len(idx), self.shard_flows)]
        if not parts:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="shard-reader") as pool:
            nxt = pool.submit(self._read, parts[0])
            for i in range(len(parts)):
                x = nxt.result()
                if i + 1 < len(parts):
                    nxt = pool.submit(self._read, parts[i + 1])
                t = torch.from_numpy(x).to(device)   # (on the CPU, x itself: no copy)
                del x
                yield t
                del t

    def chunks(self, seed: int, rank: int = 0, world: int = 1, device=None,
               per_rank: int = 1) -> Iterator[torch.Tensor]:
        """One epoch: a global seeded shuffle, each rank taking its share (rank_share)."""
        order = numpy_rng(seed).permutation(len(self))
        yield from self._shards(rank_share(order, per_rank, rank, world), device or "cpu")

    def passes(self, device=None) -> Iterator[torch.Tensor]:
        """Every flow once, in store order (statistics over the training set)."""
        yield from self._shards(np.arange(len(self)), device or "cpu")

    def service_counts(self) -> dict[int, int]:
        """Training flows per service key, from the first packet's first 64 bytes of each
        (all service_keys reads), a shard at a time in store order."""
        counts: Counter = Counter()
        order = np.lexsort((self.rows, self.store_of))
        width = min(SERVICE_BYTES, self.length)
        for i in range(0, len(order), self.shard_flows):
            part = order[i:i + self.shard_flows]
            x = flow_matrix(self.stores, self.store_of[part], self.rows[part], 1, width)
            keys, n = np.unique(service_keys(x).numpy(), return_counts=True)
            counts.update(dict(zip(keys.tolist(), n.tolist())))
        return dict(counts)


def _ints(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"store indices and rows must be integers, got {a.dtype}")
    return a
