"""k-nearest-neighbour distance on a flow's first packets' bytes: a FLOW-level baseline.

The issue's baseline: "a 3-nearest-neighbour distance on the first 4 payload packets' first
256 bytes (addresses masked, nothing else)". The selection (payload packets) and the address
masking are the flow-sample spec's (detector/sample/spec.py), so the vector is just the flow sample
cut to n_packets x n_bytes and flattened: uint8 -> float in [0, 1], a missing packet (or a
sample shorter than n_bytes) is zeros. score = MEAN Euclidean distance to the n_neighbors
nearest NORMAL training flows (aggregate="kth": the distance to the k-th one instead).

Flow-level: fit(X uint8[n_flows, K, L]) and anomaly_score(X uint8[n_flows, K, L]); the class
attribute level = "flow" tells training.evaluate_run to hand it flow samples, not packet rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from semiflow.detector.baselines.classic import BaseDetector, subsample

AGGREGATES = ("mean", "kth")


def flow_vectors(X: np.ndarray, n_packets: int, n_bytes: int) -> np.ndarray:
    """uint8[n, K, L] flow samples -> float32[n, n_packets * n_bytes] in [0, 1], zero-padded."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"knn is a flow-level detector: expected flow samples [n_flows, K, L], "
                         f"got shape {X.shape}")
    out = np.zeros((X.shape[0], n_packets, n_bytes), np.float32)
    k, l = min(n_packets, X.shape[1]), min(n_bytes, X.shape[2])
    out[:, :k, :l] = X[:, :k, :l]
    out /= 255.0
    return out.reshape(X.shape[0], n_packets * n_bytes)


class KNNDetector(BaseDetector):
    """Distance to the nearest normal training flows (brute force, exact)."""

    level = "flow"

    def __init__(self, n_neighbors: int = 3, n_packets: int = 4, n_bytes: int = 256,
                 aggregate: str = "mean", max_train: int | None = 20000, seed: int = 0):
        self.n_neighbors = n_neighbors
        self.n_packets = n_packets
        self.n_bytes = n_bytes
        self.aggregate = aggregate
        self.max_train = max_train
        self.seed = seed

    def fit(self, X, X_val=None):
        """X: NORMAL flow samples uint8[n_flows, K, L] (max_train of them, seeded, are kept)."""
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"knn: aggregate must be one of {AGGREGATES}, got "
                             f"{self.aggregate!r}")
        if self.n_neighbors < 1:
            raise ValueError(f"knn: n_neighbors must be >= 1, got {self.n_neighbors}")
        V = flow_vectors(subsample(np.asarray(X), self.max_train, self.seed),
                         self.n_packets, self.n_bytes)
        if len(V) == 0:
            raise ValueError("knn: no training flows")
        self.k_ = min(self.n_neighbors, len(V))
        self.nn_ = NearestNeighbors(n_neighbors=self.k_, algorithm="brute").fit(V)
        return self

    def anomaly_score(self, X):
        """float64[n_flows]: mean (or k-th) distance to the nearest training flows."""
        self._check_fitted()
        V = flow_vectors(X, self.n_packets, self.n_bytes)
        if len(V) == 0:
            return np.zeros(0)
        out = np.empty(len(V))
        for a in range(0, len(V), 4096):  # bounds the query-by-train distance block
            d, _ = self.nn_.kneighbors(V[a:a + 4096], n_neighbors=self.k_)
            out[a:a + 4096] = d.mean(1) if self.aggregate == "mean" else d[:, -1]
        return out
