"""SemiFlow inference helpers: device choice, input scaling, batched log-odds scores.

Shared by the estimator (detector/models/semiflow.py) and the artifact scorer (detector/scoring.py),
which needs only the encoder and the classifier.
"""

from __future__ import annotations

import numpy as np
import torch

from semiflow.detector.models.semiflow_model import Classifier, Encoder


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available unless told otherwise."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA device")
    return dev


def as_float(xb: torch.Tensor) -> torch.Tensor:
    """uint8[B, L] -> float[B, 1, L] in [0, 1] (the method's 1-channel input)."""
    return (xb.float() / 255.0).unsqueeze(1)


@torch.no_grad()
def packet_scores(encoder: Encoder, classifier: Classifier, X: np.ndarray,
                  device: torch.device, batch_size: int = 4096) -> np.ndarray:
    """Log-odds of "anomalous" per packet row (the logit margin, float64).

    Monotone in P(anomalous) = sigmoid(score), so rankings and thresholds are the same, but
    it never saturates: P rounds to 0 or 1 (ties, "0.000001" in a Zeek log) long before the
    log-odds stop telling packets apart.
    """
    encoder.eval()
    classifier.eval()

    def margin(xb: torch.Tensor) -> torch.Tensor:
        logits = classifier(encoder(as_float(xb))).double()
        return logits[:, 1] - logits[:, 0]

    return _batched(X, device, batch_size, margin)


@torch.no_grad()
def flow_nll_scores(encoder: Encoder, flow: torch.nn.Module, X: np.ndarray,
                    device: torch.device, batch_size: int = 4096) -> np.ndarray:
    """Negative log-likelihood per latent dimension of each row under the flow (float64).

    The density the flow was trained to model: (||F(e)||^2 / 2 - log|det J_F(e)|) / d (the
    constant 0.5 log(2 pi) left out); higher = less like the normal training traffic.
    """
    encoder.eval()
    flow.eval()

    def nll(xb: torch.Tensor) -> torch.Tensor:
        z, logdet = flow(encoder(as_float(xb)).float().flatten(1))
        z = z.double()
        return (0.5 * (z * z).sum(1) - logdet.double()) / z.shape[1]

    return _batched(X, device, batch_size, nll)


def _batched(X: np.ndarray, device: torch.device, batch_size: int, fn) -> np.ndarray:
    """fn over uint8 packet rows in batches on device -> float64[n] on the host."""
    X = np.ascontiguousarray(X, dtype=np.uint8)
    out = np.empty(len(X), np.float64)
    for i in range(0, len(X), batch_size):
        xb = torch.from_numpy(X[i:i + batch_size]).to(device)
        out[i:i + len(xb)] = fn(xb).cpu().numpy()
    return out


def probability(log_odds: np.ndarray) -> np.ndarray:
    """P(anomalous) from log-odds scores (NaN stays NaN)."""
    from scipy.special import expit
    return expit(np.asarray(log_odds, dtype=np.float64))


def check_rows(X, length: int, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != length:
        raise ValueError(f"{what}: expected packet rows of shape (n, {length}), got {X.shape}")
    if X.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 bytes, got {X.dtype}")
    if len(X) == 0:
        raise ValueError(f"{what}: no packet rows")
    return X


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Rank-based AUROC (Mann-Whitney), ties averaged; no sklearn in the core."""
    from scipy.stats import rankdata
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
