"""Deep baselines: a plain 1-d conv autoencoder and GANomaly-1d (SemiFlow's stage 1 alone).

Both fit on NORMAL packets only and score by how badly a packet is reconstructed (the
autoencoder) or re-encoded (GANomaly: ||GE(x) - GE(GD(GE(x)))||^2). GANomaly-1d reuses
SemiFlow's own Encoder/Decoder/Discriminator, so the comparison isolates what SemiFlow's
flow + classifier stages add on top of the same representation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiflow.detector.baselines.classic import BaseDetector, as_float, subsample
from semiflow.detector.models.semiflow_model import Decoder, Discriminator, Encoder, SemiFlowConfig


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield idx[i:i + batch_size]


class ConvAutoencoder(nn.Module):
    """x float[B, 1, L] -> reconstruction in [0, 1]; strided convs down, transposed convs up."""

    def __init__(self, length: int, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        enc: list[nn.Module] = []
        a = 1
        for b in channels:
            enc += [nn.Conv1d(a, b, 4, 2, 1), nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
            a = b
        dec: list[nn.Module] = []
        for b in list(channels[-2::-1]) + [1]:
            dec += [nn.ConvTranspose1d(a, b, 4, 2, 1)]
            if b != 1:
                dec += [nn.BatchNorm1d(b), nn.ReLU(True)]
            a = b
        self.encoder, self.decoder, self.length = nn.Sequential(*enc), nn.Sequential(*dec), length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.encoder(x))
        n = y.shape[-1]
        y = y[..., : self.length] if n >= self.length else F.pad(y, (0, self.length - n))
        return torch.sigmoid(y)


class _TorchDetector(BaseDetector):
    """Shared plumbing: uint8 rows -> tensors in batches, eval-mode scoring."""

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(as_float(X, self.length)).unsqueeze(1)

    def _map(self, X: np.ndarray, fn, batch_size: int = 1024) -> np.ndarray:
        self._check_fitted()
        dev = _device(self.device)
        out = []
        with torch.no_grad():
            for b in _batches(len(X), batch_size, None):
                out.append(fn(self._tensor(X[b]).to(dev)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _fit_length(self, X: np.ndarray) -> None:
        if self.length is None:
            self.length = int(X.shape[1])


class AutoencoderDetector(_TorchDetector):
    """Plain conv autoencoder; score = mean squared reconstruction error of the bytes."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), length: int | None = None,
                 epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
                 max_train: int | None = 50000, device: str = "cpu", seed: int = 0):
        self.channels = channels
        self.length = length
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_train = max_train
        self.device = device
        self.seed = seed

    def fit(self, X, X_val=None):
        self._fit_length(X)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        X = subsample(X, self.max_train, self.seed)
        dev = _device(self.device)
        model = ConvAutoencoder(self.length, tuple(self.channels)).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        self.losses_ = []
        for _ in range(self.epochs):
            model.train()
            total, n = 0.0, 0
            for b in _batches(len(X), self.batch_size, rng):
                if len(b) < 2:
                    continue
                x = self._tensor(X[b]).to(dev)
                loss = F.mse_loss(model(x), x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, n = total + loss.item() * len(b), n + len(b)
            self.losses_.append(total / max(n, 1))
        self.model_ = model.eval()
        return self

    def anomaly_score(self, X):
        m = self.model_
        return self._map(X, lambda x: ((m(x) - x) ** 2).mean((1, 2))).astype(np.float64)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Flattened bottleneck features (for KDE on learned features)."""
        return self._map(X, lambda x: self.model_.encoder(x).flatten(1))


class GANomaly1dDetector(_TorchDetector):
    """SemiFlow stage 1 (adversarial reconstruction) used as a detector on its own.

    Losses as SemiFlow's stage 1: generator w_rec*MSE(G(x), x) + w_adv*MSE(D(x), D(G(x)));
    discriminator 0.5*[BCE(D(x), 1) + BCE(D(G(x)), 0)]. score="latent" is GANomaly's
    ||GE(x) - GE(G(x))||^2 (mean over latent units); score="recon" the bytes' MSE.
    """

    def __init__(self, config: dict | None = None, epochs: int = 5, score: str = "latent",
                 length: int | None = None, max_train: int | None = 50000,
                 device: str = "cpu", seed: int = 0):
        self.config = config
        self.epochs = epochs
        self.score = score
        self.length = length
        self.max_train = max_train
        self.device = device
        self.seed = seed

    def fit(self, X, X_val=None):
        if self.score not in ("latent", "recon"):
            raise ValueError(f"ganomaly1d: score must be latent or recon, got {self.score!r}")
        self._fit_length(X)
        cfg = SemiFlowConfig.from_dict({**(self.config or {}), "length": self.length})
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        X = subsample(X, self.max_train, self.seed)
        dev = _device(self.device)
        enc, dec, disc = Encoder(cfg).to(dev), Decoder(cfg).to(dev), Discriminator(cfg).to(dev)
        betas = (cfg.beta1, 0.999)
        opt_g = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), cfg.lr,
                                 betas=betas)
        opt_d = torch.optim.Adam(disc.parameters(), cfg.lr, betas=betas)
        self.losses_ = []
        for _ in range(self.epochs):
            enc.train(), dec.train(), disc.train()
            tot, n = 0.0, 0
            for b in _batches(len(X), cfg.batch_size, rng):
                if len(b) < 2:
                    continue
                x = self._tensor(X[b]).to(dev)
                fake = dec(enc(x))
                rec = F.mse_loss(fake, x)
                adv = F.mse_loss(torch.sigmoid(disc(fake)), torch.sigmoid(disc(x)).detach())
                g_loss = cfg.w_rec * rec + cfg.w_adv * adv
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                real_logit, fake_logit = disc(x), disc(fake.detach())
                d_loss = 0.5 * (
                    F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                    + F.binary_cross_entropy_with_logits(fake_logit,
                                                         torch.zeros_like(fake_logit)))
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                tot, n = tot + rec.item() * len(b), n + len(b)
            self.losses_.append(tot / max(n, 1))
        self.config_ = cfg
        self.encoder_, self.decoder_ = enc.eval(), dec.eval()
        self.discriminator_ = disc.eval()
        return self

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder_(x)
        fake = self.decoder_(z)
        if self.score == "recon":
            return ((fake - x) ** 2).mean((1, 2))
        return ((self.encoder_(fake) - z) ** 2).flatten(1).mean(1)

    def anomaly_score(self, X):
        return self._map(X, self._score).astype(np.float64)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """The frozen stage-1 encoder's features, flattened (DFKDE-style KDE input)."""
        return self._map(X, lambda x: self.encoder_(x).flatten(1))
