"""SemiFlow's networks as plain torch.nn modules (Dang et al., arXiv 2403.10550).

Encoder/Decoder/Discriminator learn a representation of normal packets by adversarial
reconstruction; the invertible Flow maps that representation to N(0, I) and back, which is how
pseudo-anomalies are made; the Classifier separates normal from pseudo-anomalous
representations. Inference needs only Encoder + Classifier. Sizes come from SemiFlowConfig.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SemiFlowConfig:
    """Every size and training constant of SemiFlow; `paper()` is the published configuration."""

    length: int = 1600                      # bytes per packet row (= the spec's L)
    enc_channels: tuple[int, ...] = (8, 16, 32, 64)
    latent_channels: int = 16
    dec_channels: tuple[int, ...] = (64, 32, 16, 8)
    flow_blocks: int = 4
    flow_hidden: int = 256                  # 0 = the latent dimension (the paper's d -> d)
    flow_clamp: float = 1.5
    cls_channels: int = 32
    cls_hidden: tuple[int, ...] = (128, 64)
    noise_mu: float = 0.0                   # pseudo-anomaly noise in the flow's N(0, I) space
    noise_sigma: float = 0.05               # (measured: docs/model.md, "Pseudo-anomaly noise")
    noise_sigma_max: float = 1.0            # > noise_sigma: sigma log-uniform in between
    pseudo_ratio: float = 0.5               # pseudo-anomalies per normal sample in a batch
    w_rec: float = 50.0
    w_adv: float = 1.0
    lr: float = 1e-3
    beta1: float = 0.5
    batch_size: int = 64
    epochs: tuple[int, int, int] = (8, 8, 8)  # stage 1 (G/D), stage 2 (flow), stage 3 (classifier)
    patience: int = 3
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("enc_channels", "dec_channels", "cls_hidden", "epochs"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.epochs) != 3:
            raise ValueError("config: epochs must give three stages")
        if self.latent_length() < 2:
            raise ValueError(f"config: length {self.length} too short for "
                             f"{len(self.enc_channels)} encoder layers")

    @classmethod
    def small(cls, **kw) -> SemiFlowConfig:
        """Trains on a CPU in minutes; artifact well under 1 MB."""
        return cls(**kw)

    @classmethod
    def paper(cls, **kw) -> SemiFlowConfig:
        """The reference shapes: latent 70x49, 8 flow blocks with d -> d subnets (~141M)."""
        base = dict(length=1600, enc_channels=(16, 32, 64, 128), latent_channels=70,
                    dec_channels=(4096, 2048, 1024, 512), flow_blocks=8, flow_hidden=0,
                    cls_channels=140, cls_hidden=(1024, 256, 128), noise_mu=5.0,
                    noise_sigma=15.0, noise_sigma_max=0.0, epochs=(100, 100, 100), patience=10)
        base.update(kw)
        return cls(**base)

    @classmethod
    def named(cls, name: str, **kw) -> SemiFlowConfig:
        if name not in ("small", "paper"):
            raise ValueError(f"unknown config {name!r}; choose small or paper")
        return getattr(cls, name)(**kw)

    def latent_length(self) -> int:
        n = self.length
        for _ in self.enc_channels:
            n = (n + 2 - 4) // 2 + 1
        return (n - 4) // 2 + 1

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.latent_length()

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SemiFlowConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def _conv_stack(cfg: SemiFlowConfig, out_channels: int) -> nn.Sequential:
    """GANomaly-style strided conv stack, no bias: length halves per layer."""
    ch = cfg.enc_channels
    layers: list[nn.Module] = [nn.Conv1d(1, ch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    for a, b in zip(ch[:-1], ch[1:]):
        layers += [nn.Conv1d(a, b, 4, 2, 1, bias=False), nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv1d(ch[-1], out_channels, 4, 2, 0, bias=False))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x float[B, 1, L] in [0, 1] -> latent float[B, C, T]."""

    def __init__(self, cfg: SemiFlowConfig):
        super().__init__()
        self.net = _conv_stack(cfg, cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """latent -> reconstruction in [0, 1] (sigmoid, matching the inputs' range)."""

    def __init__(self, cfg: SemiFlowConfig):
        super().__init__()
        ch = cfg.dec_channels
        layers: list[nn.Module] = [nn.ConvTranspose1d(cfg.latent_channels, ch[0], 4, 2, 0,
                                                      bias=False),
                                   nn.BatchNorm1d(ch[0]), nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose1d(a, b, 4, 2, 1, bias=False), nn.BatchNorm1d(b),
                       nn.ReLU(True)]
        layers.append(nn.ConvTranspose1d(ch[-1], 1, 4, 2, 1, bias=False))
        self.net = nn.Sequential(*layers)
        self.length = cfg.length

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(z)
        n = y.shape[-1]
        if n > self.length:
            y = y[..., : self.length]
        elif n < self.length:
            y = F.pad(y, (0, self.length - n))
        return torch.sigmoid(y)


class Discriminator(nn.Module):
    """Encoder-shaped critic; returns P(real) per sample (mean over positions) and features."""

    def __init__(self, cfg: SemiFlowConfig):
        super().__init__()
        self.net = _conv_stack(cfg, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).mean(1)   # a logit; sigmoid it for P(real)


class CouplingBlock(nn.Module):
    """Affine coupling + global affine + fixed permutation, exactly invertible.

    x1, x2 = split(x); (s, t) = 0.1 * subnet(x1); x2' = x2 * exp(clamp * tanh(s)) + t;
    y = permute(softplus(g) * [x1, x2'] + b). The tanh clamp bounds each scale to
    exp(+-clamp), which keeps the inverse (used for pseudo-anomalies) finite.
    """

    def __init__(self, dim: int, hidden: int, clamp: float, perm_seed: int):
        super().__init__()
        self.d1 = dim // 2
        self.d2 = dim - self.d1
        hidden = hidden or dim
        self.subnet = nn.Sequential(nn.Linear(self.d1, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 2 * self.d2))
        self.clamp = clamp
        # softplus(raw) = 1 at init: the global affine starts as the identity.
        self.global_raw = nn.Parameter(torch.full((dim,), math.log(math.e - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(dim))
        g = torch.Generator().manual_seed(perm_seed)
        perm = torch.randperm(dim, generator=g)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _st(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 0.1 * self.subnet(x1)
        s, t = a[:, : self.d2], a[:, self.d2:]
        return self.clamp * torch.tanh(s), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.d1], x[:, self.d1:]
        s, t = self._st(x1)
        y = torch.cat([x1, x2 * torch.exp(s) + t], 1)
        scale = F.softplus(self.global_raw)
        y = y * scale + self.global_offset
        logdet = s.sum(1) + torch.log(scale).sum()
        return y[:, self.perm], logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y[:, self.inv_perm]
        y = (y - self.global_offset) / F.softplus(self.global_raw)
        y1, y2 = y[:, : self.d1], y[:, self.d1:]
        s, t = self._st(y1)
        return torch.cat([y1, (y2 - t) * torch.exp(-s)], 1)


class Flow(nn.Module):
    """Stack of coupling blocks on the flattened latent: e -> z ~ N(0, I), and back."""

    def __init__(self, cfg: SemiFlowConfig):
        super().__init__()
        dim = cfg.latent_dim
        self.blocks = nn.ModuleList(
            CouplingBlock(dim, cfg.flow_hidden, cfg.flow_clamp, perm_seed=cfg.seed * 1000 + i)
            for i in range(cfg.flow_blocks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for b in self.blocks:
            x, ld = b(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for b in reversed(self.blocks):
            z = b.inverse(z)
        return z

    @staticmethod
    def nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per dimension under N(0, I)."""
        d = z.shape[1]
        ll = -0.5 * (z ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi) + logdet
        return (-ll / d).mean()


class Classifier(nn.Module):
    """latent float[B, C, T] -> logits[B, 2] (0 = normal, 1 = anomalous)."""

    def __init__(self, cfg: SemiFlowConfig):
        super().__init__()
        c, cc = cfg.latent_channels, cfg.cls_channels
        self.features = nn.Sequential(
            nn.Conv1d(c, cc, 3, 1, 1), nn.ReLU(), nn.BatchNorm1d(cc),
            nn.Conv1d(cc, cc, 3, 1, 1), nn.ReLU(), nn.BatchNorm1d(cc),
            nn.MaxPool1d(2))
        width = cc * (cfg.latent_length() // 2)
        layers: list[nn.Module] = []
        for h in cfg.cls_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2))
        self.mlp = nn.Sequential(*layers)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(e).flatten(1))


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
