"""Classical baselines for packet-byte anomaly detection, behind SemiFlow's estimator surface.

Every detector: parameters in __init__, fit(X uint8[n_packets, L]) on NORMAL packets only,
anomaly_score(X) -> float[n] (higher = more anomalous), score_samples(X) = -anomaly_score
(scikit-learn's sign). Learned state ends with an underscore. The deep baselines (plain
autoencoder, GANomaly-1d) live in baselines_deep.py.

Saving: save_detector/load_detector use joblib (pickle): load only files you made yourself.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDOneClassSVM
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM


def as_float(X: np.ndarray, n_bytes: int | None = None) -> np.ndarray:
    """uint8 packet rows -> float32 in [0, 1], optionally only the first n_bytes."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"expected packet rows [n, L], got shape {X.shape}")
    if n_bytes is not None:
        X = X[:, :n_bytes]
    return X.astype(np.float32) / 255.0


def subsample(X: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """At most n rows, chosen at random (seeded): bounds fit time on large training sets."""
    if n is None or len(X) <= n:
        return X
    idx = np.random.default_rng(seed).choice(len(X), n, replace=False)
    return X[np.sort(idx)]


class BaseDetector:
    """The shared surface; subclasses implement fit and anomaly_score."""

    def get_params(self) -> dict[str, Any]:
        import inspect
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> BaseDetector:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{type(self).__name__}: unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def fit(self, X: np.ndarray, X_val: np.ndarray | None = None) -> BaseDetector:
        raise NotImplementedError

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return -self.anomaly_score(X)

    def _check_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class IsolationForestDetector(BaseDetector):
    """Isolation Forest on the raw bytes: a fast, assumption-light reference."""

    def __init__(self, n_estimators: int = 200, n_bytes: int | None = None,
                 max_train: int | None = 50000, seed: int = 0):
        self.n_estimators = n_estimators
        self.n_bytes = n_bytes
        self.max_train = max_train
        self.seed = seed

    def fit(self, X, X_val=None):
        Xf = as_float(subsample(X, self.max_train, self.seed), self.n_bytes)
        self.model_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed,
                                      n_jobs=1).fit(Xf)
        return self

    def anomaly_score(self, X):
        self._check_fitted()
        return -self.model_.score_samples(as_float(X, self.n_bytes))


class OneClassSVMDetector(BaseDetector):
    """One-class SVM with an RBF kernel.

    method="sgd" (default) scales linearly: PCA -> Nystroem kernel map -> SGDOneClassSVM.
    method="exact" fits sklearn's OneClassSVM on at most max_train packets (quadratic cost).
    """

    def __init__(self, nu: float = 0.05, n_components: int = 300, pca_dims: int = 50,
                 method: str = "sgd", n_bytes: int | None = None, max_train: int | None = 20000,
                 seed: int = 0):
        self.nu = nu
        self.n_components = n_components
        self.pca_dims = pca_dims
        self.method = method
        self.n_bytes = n_bytes
        self.max_train = max_train
        self.seed = seed

    def fit(self, X, X_val=None):
        if self.method not in ("sgd", "exact"):
            raise ValueError(f"ocsvm: method must be sgd or exact, got {self.method!r}")
        Xf = as_float(subsample(X, self.max_train, self.seed), self.n_bytes)
        dims = max(1, min(self.pca_dims, Xf.shape[0] - 1, Xf.shape[1]))
        pca = PCA(dims, random_state=self.seed).fit(Xf)
        Z = pca.transform(Xf)
        gamma = 1.0 / max(Z.shape[1] * float(Z.var()), 1e-12)   # sklearn's gamma="scale"
        if self.method == "sgd":
            svm = make_pipeline(
                Nystroem(gamma=gamma, n_components=min(self.n_components, len(Z)),
                         random_state=self.seed),
                SGDOneClassSVM(nu=self.nu, random_state=self.seed))
        else:
            svm = OneClassSVM(nu=self.nu, gamma=gamma)
        svm.fit(Z)
        self.pca_, self.svm_ = pca, svm
        return self

    def anomaly_score(self, X):
        self._check_fitted()
        return -self.svm_.decision_function(self.pca_.transform(as_float(X, self.n_bytes)))


class PCAReconstructionDetector(BaseDetector):
    """Squared error of the projection onto the top principal components of normal packets."""

    def __init__(self, n_components: float | int = 0.95, n_bytes: int | None = None,
                 max_train: int | None = 50000, seed: int = 0):
        self.n_components = n_components
        self.n_bytes = n_bytes
        self.max_train = max_train
        self.seed = seed

    def fit(self, X, X_val=None):
        Xf = as_float(subsample(X, self.max_train, self.seed), self.n_bytes)
        nc = self.n_components
        if isinstance(nc, int):
            nc = max(1, min(nc, Xf.shape[0] - 1, Xf.shape[1]))
        self.pca_ = PCA(nc, svd_solver="covariance_eigh", random_state=self.seed).fit(Xf)
        return self

    def anomaly_score(self, X):
        self._check_fitted()
        Xf = as_float(X, self.n_bytes)
        R = self.pca_.inverse_transform(self.pca_.transform(Xf))
        return ((Xf - R) ** 2).mean(1).astype(np.float64)


class KDEDetector(BaseDetector):
    """DFKDE-style density: Gaussian KDE on PCA-reduced features, -log density as the score.

    features="raw": PCA of the bytes. features="encoder": `embedder` is a FITTED detector with
    embed(X) or encode(X) -> float[n, d] (GANomaly1dDetector, SemiFlowDetector: the frozen
    stage-1 encoder), whose features are reduced and modelled instead; DFKDE uses a frozen backbone
    the same way. Features are standardised so one bandwidth (Scott's rule) suits every axis.
    """

    def __init__(self, features: str = "raw", embedder: Any = None, pca_dims: int = 16,
                 bandwidth: float | str = "scott", n_bytes: int | None = None,
                 max_train: int | None = 5000, seed: int = 0):
        self.features = features
        self.embedder = embedder
        self.pca_dims = pca_dims
        self.bandwidth = bandwidth
        self.n_bytes = n_bytes
        self.max_train = max_train
        self.seed = seed

    def _features(self, X: np.ndarray) -> np.ndarray:
        if self.features == "raw":
            return as_float(X, self.n_bytes)
        fn = getattr(self.embedder, "embed", None) or getattr(self.embedder, "encode", None)
        if fn is None:
            raise ValueError("kde: features='encoder' needs a fitted embedder with "
                             "embed(X) or encode(X)")
        return np.asarray(fn(X), dtype=np.float32)

    def fit(self, X, X_val=None):
        if self.features not in ("raw", "encoder"):
            raise ValueError(f"kde: features must be raw or encoder, got {self.features!r}")
        F = self._features(subsample(X, self.max_train, self.seed))
        dims = max(1, min(self.pca_dims, F.shape[0] - 1, F.shape[1]))
        self.pca_ = PCA(dims, random_state=self.seed).fit(F)
        Z = self.pca_.transform(F)
        self.mean_, self.std_ = Z.mean(0), Z.std(0) + 1e-6
        Z = (Z - self.mean_) / self.std_
        self.kde_ = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(Z)
        return self

    def anomaly_score(self, X):
        self._check_fitted()
        Z = (self.pca_.transform(self._features(X)) - self.mean_) / self.std_
        return -self.kde_.score_samples(Z)


def save_detector(detector: BaseDetector, path: str | os.PathLike) -> None:
    """joblib dump of a fitted detector (pickle: trusted files only)."""
    joblib.dump(detector, path)


def load_detector(path: str | os.PathLike) -> BaseDetector:
    """Load a detector written by save_detector; a corrupt file is a ValueError."""
    try:
        det = joblib.load(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # joblib/pickle raise many types on a bad file
        raise ValueError(f"{path}: not a saved detector ({type(e).__name__}: {e})") from e
    if not hasattr(det, "anomaly_score"):
        raise ValueError(f"{path}: holds a {type(det).__name__}, not a detector")
    return det
