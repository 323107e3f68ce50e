"""Kitsune (Mirsky et al., NDSS 2018): AfterImage features + KitNET, an ensemble of autoencoders.

KitNET, as in the paper and its reference code:
  1. feature mapping: during the first fm_grace training packets, features are clustered by
     correlation distance (1 - Pearson r; single-linkage hierarchical clustering), and the
     dendrogram is cut into groups of at most max_ae features;
  2. one small autoencoder per group (hidden = ceil(0.75 * inputs), sigmoid, tied weights,
     input min-max normalised with the running training minima/maxima) and an output
     autoencoder on the ensemble's RMSEs, all trained online by SGD (lr 0.1), one packet at a
     time, on the remaining training packets;
  3. a packet's score is the output autoencoder's RMSE. After training, min/max are frozen.
Differences from the reference code, on purpose: the correlation is the exact batch one of
the grace packets (the code uses an incremental approximation), and bias gradients are per
unit (the code averages them to one scalar). The online loop is one numba kernel; scoring is
batched numpy (no state changes once trained).

Kitsune is a CAPTURE-level detector: it needs every packet's metadata in capture order, not
flow samples. fit_packets / score_packets take packet metadata (plugin.packet_meta); fresh
AfterImage state per capture. Flow scores: training.kitsune_eval.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.cluster.hierarchy import linkage, to_tree
from scipy.spatial.distance import squareform
from scipy.special import expit

from semiflow.detector.baselines.kitsune_features import LAMBDAS, afterimage_features

_EPS = 1e-16


def feature_map(F: np.ndarray, max_ae: int = 10) -> list[np.ndarray]:
    """Groups (feature indices) of at most max_ae correlated features, from rows F[n, d]."""
    d = F.shape[1]
    if d <= max_ae:
        return [np.arange(d)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(F, rowvar=False) if len(F) > 1 else np.zeros((d, d))
    r = np.nan_to_num(r, nan=0.0)
    D = np.clip(1.0 - r, 0.0, None)
    np.fill_diagonal(D, 0.0)
    root = to_tree(linkage(squareform((D + D.T) / 2, checks=False), method="single"))
    groups: list[np.ndarray] = []

    def cut(node) -> None:
        if node.get_count() <= max_ae:
            groups.append(np.array(sorted(node.pre_order()), np.int64))
        else:
            cut(node.get_left())
            cut(node.get_right())

    cut(root)
    return groups


@njit(cache=True, inline="always")
def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@njit(cache=True)
def _train_ae(a, x, nv, nh, W, hb, vb, lo, hi, lr, xn, y, z):
    """One SGD step of autoencoder a on x[:nv[a]]; returns the RMSE before the step."""
    n, m = nv[a], nh[a]
    for i in range(n):
        if x[i] > hi[a, i]:
            hi[a, i] = x[i]
        if x[i] < lo[a, i]:
            lo[a, i] = x[i]
        xn[i] = (x[i] - lo[a, i]) / (hi[a, i] - lo[a, i] + 1e-16)
    for k in range(m):
        acc = hb[a, k]
        for i in range(n):
            acc += xn[i] * W[a, i, k]
        y[k] = _sig(acc)
    err = 0.0
    for i in range(n):
        acc = vb[a, i]
        for k in range(m):
            acc += y[k] * W[a, i, k]
        z[i] = xn[i] - _sig(acc)          # reconstruction residual L_h2
        err += z[i] * z[i]
    for k in range(m):
        acc = 0.0
        for i in range(n):
            acc += z[i] * W[a, i, k]
        gh = acc * y[k] * (1.0 - y[k])     # L_h1
        hb[a, k] += lr * gh
        for i in range(n):
            W[a, i, k] += lr * (xn[i] * gh + z[i] * y[k])
    for i in range(n):
        vb[a, i] += lr * z[i]
    return math.sqrt(err / n)


@njit(cache=True)
def _train_kitnet(F, idx, nv, nh, W, hb, vb, lo, hi, lr, epochs):
    n_ae = idx.shape[0]
    out = n_ae                             # the output autoencoder's slot
    vmax = W.shape[1]
    x = np.zeros(vmax)
    s = np.zeros(vmax)
    xn, y, z = np.zeros(vmax), np.zeros(W.shape[2]), np.zeros(vmax)
    rmse = np.zeros(F.shape[0])
    for _ in range(epochs):
        for r in range(F.shape[0]):
            for a in range(n_ae):
                for i in range(nv[a]):
                    x[i] = F[r, idx[a, i]]
                s[a] = _train_ae(a, x, nv, nh, W, hb, vb, lo, hi, lr, xn, y, z)
            rmse[r] = _train_ae(out, s, nv, nh, W, hb, vb, lo, hi, lr, xn, y, z)
    return rmse


class KitNET:
    """The KitNET anomaly detector on precomputed features (rows in stream order)."""

    def __init__(self, max_ae: int = 10, fm_grace: int = 5000, hidden_ratio: float = 0.75,
                 lr: float = 0.1, epochs: int = 1, seed: int = 0):
        self.max_ae = max_ae
        self.fm_grace = fm_grace
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.epochs = epochs
        self.seed = seed

    def fit(self, F: np.ndarray) -> KitNET:
        """Map features on the first fm_grace rows (at most a fifth of F), train on the rest."""
        F = np.asarray(F, np.float64)
        if len(F) < 2:
            raise ValueError(f"kitnet: need at least 2 training packets, got {len(F)}")
        g = max(1, min(self.fm_grace, len(F) // 5))
        self.groups_ = feature_map(F[:g], self.max_ae)
        n_ae = len(self.groups_)
        sizes = [len(x) for x in self.groups_] + [n_ae]
        vmax = max(sizes)
        hid = [max(1, math.ceil(self.hidden_ratio * v)) for v in sizes]
        rng = np.random.default_rng(self.seed)
        self.nv_, self.nh_ = np.array(sizes, np.int64), np.array(hid, np.int64)
        self.W_ = np.zeros((n_ae + 1, vmax, max(hid)))
        for a, (v, h) in enumerate(zip(sizes, hid)):
            self.W_[a, :v, :h] = rng.uniform(-1.0 / v, 1.0 / v, (v, h))
        self.hb_ = np.zeros((n_ae + 1, max(hid)))
        self.vb_ = np.zeros((n_ae + 1, vmax))
        self.lo_ = np.full((n_ae + 1, vmax), np.inf)
        self.hi_ = np.full((n_ae + 1, vmax), -np.inf)
        idx = np.zeros((n_ae, vmax), np.int64)
        for a, grp in enumerate(self.groups_):
            idx[a, :len(grp)] = grp
        self.idx_ = idx
        self.train_rmse_ = _train_kitnet(F[g:] if g < len(F) else F, idx, self.nv_, self.nh_,
                                         self.W_, self.hb_, self.vb_, self.lo_, self.hi_,
                                         float(self.lr), int(self.epochs))
        return self

    def _execute(self, a: int, X: np.ndarray) -> np.ndarray:
        v, h = self.nv_[a], self.nh_[a]
        lo, hi = self.lo_[a, :v], self.hi_[a, :v]
        Xn = (X - lo) / (hi - lo + _EPS)
        W = self.W_[a, :v, :h]
        Y = expit(Xn @ W + self.hb_[a, :h])
        Z = expit(Y @ W.T + self.vb_[a, :v])
        return np.sqrt(((Xn - Z) ** 2).mean(1))

    def anomaly_score(self, F: np.ndarray) -> np.ndarray:
        """float64[n]: the output autoencoder's RMSE per row (higher = more anomalous)."""
        if not hasattr(self, "W_"):
            raise RuntimeError("KitNET is not fitted; call fit() first")
        F = np.asarray(F, np.float64)
        S = np.empty((len(F), len(self.groups_)))
        for a, grp in enumerate(self.groups_):
            S[:, a] = self._execute(a, F[:, grp])
        return self._execute(len(self.groups_), S)


class Kitsune:
    """AfterImage + KitNET on packet metadata; one fresh AfterImage per capture."""

    level = "capture"

    def __init__(self, max_ae: int = 10, fm_grace: int = 5000, hidden_ratio: float = 0.75,
                 lr: float = 0.1, epochs: int = 1, lambdas: tuple[float, ...] = LAMBDAS,
                 seed: int = 0):
        self.max_ae = max_ae
        self.fm_grace = fm_grace
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.epochs = epochs
        self.lambdas = tuple(lambdas)
        self.seed = seed

    def features(self, meta) -> np.ndarray:
        """AfterImage features of one capture's packets (capture order, fresh state)."""
        return afterimage_features(meta, self.lambdas)

    def fit_packets(self, metas: list, keep: list[np.ndarray] | None = None) -> Kitsune:
        """Train on NORMAL captures (packet metadata each); keep[i] optionally drops packets
        of capture i from training (their statistics still update the stream state)."""
        F = [self.features(m) for m in metas]
        if keep is not None:
            F = [f[k] for f, k in zip(F, keep)]
        self.kitnet_ = KitNET(self.max_ae, self.fm_grace, self.hidden_ratio, self.lr,
                              self.epochs, self.seed).fit(np.concatenate(F))
        return self

    def score_packets(self, meta) -> np.ndarray:
        """float64[n_packets]: each packet's anomaly score (capture order)."""
        if not hasattr(self, "kitnet_"):
            raise RuntimeError("Kitsune is not fitted; call fit_packets() first")
        return self.kitnet_.anomaly_score(self.features(meta))
