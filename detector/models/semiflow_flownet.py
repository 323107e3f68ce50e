"""Flow-level SemiFlow networks: one sample = the first K packets of a flow, together.

The packet-level method (detector/models/semiflow_model.py) scores each packet alone and takes the
max over a flow; the lab measurements (docs/model.md, "Flow-level SemiFlow") showed that this
misses what makes most attacks odd: the sequence (directions, sizes, which packets carry
payload at all) and the combination of packets. Here every packet row (bytes, scaled to
[0, 1]) goes through a shared strided-conv byte encoder; its code is joined with packet
metadata read from the row itself (present, direction, IP length -- no side channel, so the
live path's K x L samples are enough) and an MLP maps the K packets to one flow latent.
The decoder reconstructs bytes and metadata; the invertible Flow of the method maps the
(standardised) latent to N(0, I); a small MLP classifier can be trained on pseudo-anomalies
made in that space, as in the method.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from semiflow.detector.models.semiflow_model import CouplingBlock, Flow

N_META = 14         # per packet: present, direction, log IP length, tcp/udp/icmp, 8 TCP flags


@dataclass(frozen=True)
class FlowNetConfig:
    """Sizes and training constants of flow-level SemiFlow (all small: CPU minutes)."""

    length: int = 256                       # bytes per packet row used (<= the spec's L)
    k: int = 8                              # packets per flow sample (= the spec's K)
    byte_channels: tuple[int, ...] = (8, 16, 32, 32)
    packet_dim: int = 32                    # code per packet from the byte encoder
    hidden: int = 256
    latent_dim: int = 32
    w_bytes: float = 1.0                    # weight of the byte reconstruction; 0 = the
                                            # bytes are not used at all (metadata only)
    w_meta: float = 10.0                    # weight of the metadata reconstruction
    services: tuple[int, ...] = ()          # service vocabulary (service_keys), set by fit
    max_services: int = 32                  # at most this many services in the vocabulary
    min_service_flows: int = 20             # a service needs this many training flows
    w_service: float = 1.0                  # weight of the service's cross-entropy
    flow_blocks: int = 6
    flow_hidden: int = 128
    flow_clamp: float = 1.5
    cls_hidden: tuple[int, ...] = (128, 64)
    noise_sigma: float = 0.05
    noise_sigma_max: float = 1.0
    pseudo_ratio: float = 0.5
    lr: float = 1e-3
    batch_size: int = 64
    epochs: tuple[int, int, int] = (12, 12, 6)
    patience: int = 3
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("byte_channels", "cls_hidden", "epochs", "services"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.epochs) != 3:
            raise ValueError("flow-level config: epochs must give three stages")
        if self.length < 120:
            raise ValueError("flow-level config: length must cover the IP and transport "
                             f"headers (>= 120 bytes), got {self.length}")
        if self.code_length() < 1:
            raise ValueError(f"flow-level config: length {self.length} too short for "
                             f"{len(self.byte_channels)} byte-encoder layers")

    @property
    def n_services(self) -> int:
        return len(self.services) + 1       # + "other": a service unseen in training

    def code_length(self) -> int:
        return self.length // (2 ** len(self.byte_channels))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def named(cls, name: str, **kw) -> FlowNetConfig:
        """"default", or "cpu": 128 bytes per packet and three byte-encoder layers, 2.3x
        the default's scoring speed on our 2-core CPU (benchmarks/score_speed.py)."""
        presets = {"default": {}, "cpu": {"length": 128, "byte_channels": (8, 16, 32)}}
        if name not in presets:
            raise ValueError(f"unknown flow-level config {name!r}; choose "
                             f"{' or '.join(presets)}")
        return cls(**{**presets[name], **kw})

    @classmethod
    def from_dict(cls, d: dict) -> FlowNetConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"flow-level config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def _proto(x: torch.Tensor) -> torch.Tensor:
    """IP protocol / IPv6 next header of rows x long[..., L] (0 for an empty slot)."""
    ver = x[..., 0] >> 4
    return torch.where(ver == 6, x[..., 6], torch.where(ver == 4, x[..., 9],
                                                        torch.zeros_like(ver)))


def packet_meta(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8[m, K, L] flow samples -> float[m, K, N_META] read from the rows' own headers.

    present (IP version nibble set); direction: 1 when the ports are those of the first
    packet swapped (TCP/UDP; 0 otherwise, e.g. ICMP); log IP length / 16 (IPv4 total length,
    IPv6 payload length + 40); TCP, UDP, ICMP one-hot; the 8 TCP flag bits (fields by
    meaning: a SYN and a SYN-ACK differ by one bit here, by 16/255 as a scaled byte).
    """
    x = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X).long()
    ver = x[..., 0] >> 4
    present = (ver == 4) | (ver == 6)
    v4_len = x[..., 2] * 256 + x[..., 3]
    v6_len = x[..., 4] * 256 + x[..., 5] + 40
    ip_len = torch.where(ver == 6, v6_len, torch.where(ver == 4, v4_len, torch.zeros_like(
        v4_len)))
    sport = x[..., 60] * 256 + x[..., 61]
    dport = x[..., 62] * 256 + x[..., 63]
    back = (sport == dport[:, :1]) & (dport == sport[:, :1]) & (sport != dport)
    proto = _proto(x)
    tcp, udp = proto == 6, proto == 17
    icmp = (proto == 1) | (proto == 58)
    flags = (x[..., 73:74] >> torch.arange(8, device=x.device)) & 1
    flags = flags * tcp.unsqueeze(-1)
    cols = [present, back & present, torch.log2(1.0 + ip_len.float()) / 16.0, tcp, udp, icmp]
    return torch.cat([torch.stack([c.float() for c in cols], -1), flags.float()], -1)


def service_keys(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """long[m]: the flow's service, proto * 65536 + min(sport, dport) of its first packet
    (ICMP: proto * 65536; the service port is the lower one, as in the flow-record models)."""
    x = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    first = x[:, 0, :64].long()  # the header bytes it reads, not the whole sample widened
    proto = _proto(first)
    sport = first[:, 60] * 256 + first[:, 61]
    dport = first[:, 62] * 256 + first[:, 63]
    port = torch.where((proto == 6) | (proto == 17), torch.minimum(sport, dport),
                       torch.zeros_like(sport))
    return proto * 65536 + port


def service_index(keys: torch.Tensor, services: tuple[int, ...]) -> torch.Tensor:
    """Index of each key in the service vocabulary; len(services) = unseen ("other")."""
    out = torch.full_like(keys, len(services))
    for i, s in enumerate(services):
        out.masked_fill_(keys == s, i)      # (no boolean indexing: no host sync)
    return out


class GroupedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose training statistics come from fixed groups of `group` rows ("ghost
    batches"), not from whatever batch one process holds: a DistributedDataParallel rank
    normalises over its share of the global batch only, so without fixed groups the model
    trained depends on the number of GPUs (one H200 at batch 8192 reached val rec 0.15 where
    two reached 0.016; docs/scale.md). 0 = the whole batch. Same parameters and buffers as
    nn.BatchNorm1d (artifacts load either way); evaluation is unchanged. The running
    statistics move as far per batch as nn.BatchNorm1d's do (the momentum is shared out over
    the groups), whatever the number of groups."""

    group: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.group <= 0 or len(x) <= self.group
                or self.momentum is None or not self.track_running_stats):
            return super().forward(x)
        parts = x.split(self.group)
        self.num_batches_tracked.add_(1)
        m = 1.0 - (1.0 - self.momentum) ** (1.0 / len(parts))
        return torch.cat([nn.functional.batch_norm(
            p, self.running_mean, self.running_var, self.weight, self.bias, True, m, self.eps)
            for p in parts])


def set_norm_group(module: nn.Module, rows: int) -> None:
    """Training BatchNorm statistics over groups of `rows` rows in every layer of module."""
    for m in module.modules():
        if isinstance(m, GroupedBatchNorm1d):
            m.group = max(0, int(rows))


class PacketEncoder(nn.Module):
    """uint8-scaled rows float[B, 1, L] -> codes float[B, packet_dim] (shared by K slots)."""

    def __init__(self, cfg: FlowNetConfig):
        super().__init__()
        ch = cfg.byte_channels
        layers: list[nn.Module] = [nn.Conv1d(1, ch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv1d(a, b, 4, 2, 1, bias=False), GroupedBatchNorm1d(b),
                       nn.LeakyReLU(0.2)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(ch[-1] * cfg.code_length(), cfg.packet_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class PacketDecoder(nn.Module):
    """codes float[B, packet_dim] -> rows float[B, 1, L] in [0, 1]."""

    def __init__(self, cfg: FlowNetConfig):
        super().__init__()
        ch = tuple(reversed(cfg.byte_channels))
        self.shape = (ch[0], cfg.code_length())
        self.fc = nn.Linear(cfg.packet_dim, ch[0] * cfg.code_length())
        layers: list[nn.Module] = []
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose1d(a, b, 4, 2, 1, bias=False), GroupedBatchNorm1d(b),
                       nn.ReLU(True)]
        layers.append(nn.ConvTranspose1d(ch[-1], 1, 4, 2, 1, bias=False))
        self.deconv = nn.Sequential(*layers)
        self.length = cfg.length

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        y = self.deconv(torch.relu(self.fc(c)).view(-1, *self.shape))
        n = y.shape[-1]
        if n != self.length:
            y = y[..., : self.length] if n > self.length else nn.functional.pad(
                y, (0, self.length - n))
        return torch.sigmoid(y)


class FlowEncoder(nn.Module):
    """(rows float[B, K, L] in [0, 1], meta float[B, K, N_META]) -> latent float[B, d]."""

    def __init__(self, cfg: FlowNetConfig):
        super().__init__()
        self.k = cfg.k
        self.packet = PacketEncoder(cfg)
        self.n_services = cfg.n_services
        width = cfg.k * (cfg.packet_dim + N_META) + cfg.n_services
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(cfg.hidden, cfg.latent_dim))

    def forward(self, rows: torch.Tensor, meta: torch.Tensor, svc: torch.Tensor
                ) -> torch.Tensor:
        b, k, length = rows.shape
        codes = self.packet(rows.reshape(b * k, 1, length)).view(b, k, -1)
        onehot = nn.functional.one_hot(svc, self.n_services).float()
        return self.mlp(torch.cat([torch.cat([codes, meta], -1).flatten(1), onehot], 1))


class FlowDecoder(nn.Module):
    """latent float[B, d] -> (rows float[B, K, L] and meta float[B, K, N_META] in [0, 1],
    service logits float[B, n_services])."""

    def __init__(self, cfg: FlowNetConfig):
        super().__init__()
        self.k, self.pd = cfg.k, cfg.packet_dim
        self.n_packet = cfg.k * (cfg.packet_dim + N_META)
        self.mlp = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(True),
                                 nn.Linear(cfg.hidden, self.n_packet + cfg.n_services))
        self.packet = PacketDecoder(cfg)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.mlp(e)
        h = out[:, : self.n_packet].reshape(len(e), self.k, self.pd + N_META)
        rows = self.packet(h[..., : self.pd].reshape(-1, self.pd))
        return (rows.view(len(e), self.k, -1), torch.sigmoid(h[..., self.pd:]),
                out[:, self.n_packet:])


class LatentFlow(Flow):
    """The method's coupling-block flow on a standardised flow latent of dimension d."""

    def __init__(self, cfg: FlowNetConfig):
        nn.Module.__init__(self)
        self.blocks = nn.ModuleList(
            CouplingBlock(cfg.latent_dim, cfg.flow_hidden, cfg.flow_clamp,
                          perm_seed=cfg.seed * 1000 + i) for i in range(cfg.flow_blocks))
        self.register_buffer("mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("std", torch.ones(cfg.latent_dim))

    def standardise(self, e: torch.Tensor) -> torch.Tensor:
        return (e - self.mean) / self.std

    def nll_per_flow(self, e: torch.Tensor) -> torch.Tensor:
        """NLL per dimension of raw latents e[B, d] (the standardisation's log-det included,
        a constant, so scores stay comparable), float64."""
        z, logdet = self(self.standardise(e))
        z = z.double()
        d = z.shape[1]
        const = torch.log(self.std.double()).sum()   # (a tensor: no host sync per batch)
        return (0.5 * (z * z).sum(1) - logdet.double() + const) / d


class LatentClassifier(nn.Module):
    """flow latent float[B, d] (standardised) -> logits[B, 2] (0 normal, 1 pseudo-anomaly)."""

    def __init__(self, cfg: FlowNetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.latent_dim
        for h in cfg.cls_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2))
        self.mlp = nn.Sequential(*layers)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(e)


def flow_inputs(X: np.ndarray | torch.Tensor, cfg: FlowNetConfig, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8[m, K, L'] -> (rows float[m, K, cfg.length] in [0, 1], meta float[m, K, N_META],
    service index long[m])."""
    x = X.to(device) if isinstance(X, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(X)).to(device)
    meta = packet_meta(x)
    svc = service_index(service_keys(x), cfg.services)
    rows = x[..., : cfg.length].float() / 255.0
    if cfg.w_bytes == 0:
        rows = torch.zeros_like(rows)
    if rows.shape[-1] < cfg.length:
        rows = nn.functional.pad(rows, (0, cfg.length - rows.shape[-1]))
    return rows, meta, svc


def learn_services(X: np.ndarray, cfg: FlowNetConfig) -> tuple[int, ...]:
    """The training flows' most frequent services (at least min_service_flows flows each)."""
    keys, counts = np.unique(service_keys(X).numpy(), return_counts=True)
    return learn_services_from_counts(dict(zip(keys.tolist(), counts.tolist())), cfg)


def learn_services_from_counts(counts: dict[int, int], cfg: FlowNetConfig) -> tuple[int, ...]:
    """learn_services from {service key: flows} (a streamed training set counts as it reads)."""
    keys = np.array(sorted(counts), dtype=np.int64)
    n = np.array([counts[k] for k in keys], dtype=np.int64)
    order = np.argsort(-n, kind="stable")
    return tuple(int(keys[i]) for i in order[: cfg.max_services]
                 if n[i] >= cfg.min_service_flows)


def log_uniform(n: int, lo: float, hi: float, generator: torch.Generator,
                device: torch.device) -> torch.Tensor | float:
    if hi <= lo:
        return lo
    u = torch.rand((n, 1), generator=generator, device=device)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
