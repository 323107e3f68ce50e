"""PyTorch models over token windows (batch_first everywhere), and their training loop.

Language models (unsupervised) take the `window` tokens BEFORE a flow and return logits for
the flow's token: the target is never part of the input, so no model can peek at it.
Window classifiers (supervised) take the window ending with the flow and return 2 logits.
Both families share the backbones: CLSTM (methods.md section 2) and a small causal Transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

MODELS = ("clstm", "transformer")


class CLSTMBackbone(nn.Module):
    """Embedding -> 2x Conv1d(k3) -> 2-layer BiLSTM -> last-step features (2*hidden)."""

    def __init__(self, vocab_size: int, embed: int = 100, conv: int = 100, hidden: int = 50):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        # Left padding only: position t's conv features depend on tokens <= t (causal convs).
        self.convs = nn.ModuleList([nn.Conv1d(embed, conv, 3), nn.Conv1d(conv, conv, 3)])
        self.lstm = nn.LSTM(conv, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)  # [B, E, W]
        for conv in self.convs:
            h = torch.relu(conv(nn.functional.pad(h, (2, 0))))
        out, _ = self.lstm(h.transpose(1, 2))  # [B, W, 2H], batch_first
        half = out.shape[-1] // 2
        # forward direction at the last step + backward direction at the first step:
        # both summarise the whole window (which holds only tokens before the target).
        return torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=-1)


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine encoding added along the SEQUENCE axis (dim 1 of [B, W, D])."""

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]].unsqueeze(0)


class TransformerBackbone(nn.Module):
    """Small causal Transformer encoder; features = the last position's output."""

    def __init__(self, vocab_size: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 ff: int = 128, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = SinusoidalPositions(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def sequence_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, W] -> [B, W, D]; position t attends to positions <= t only."""
        w = x.shape[1]
        mask = torch.triu(torch.full((w, w), float("-inf"), device=x.device), diagonal=1)
        h = self.pos(self.embed(x) * math.sqrt(self.out_dim))
        return self.norm(self.encoder(h, mask=mask, is_causal=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequence_features(x)[:, -1]


class WindowModel(nn.Module):
    """Backbone + MLP head: next-token logits (n_out = vocab) or class logits (n_out = 2)."""

    def __init__(self, backbone: nn.Module, n_out: int, hidden: int = 128):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(backbone.out_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(kind: str, vocab_size: int, supervised: bool = False, **kw) -> WindowModel:
    """A language model (supervised=False) or a 2-class window classifier."""
    if kind == "clstm":
        backbone = CLSTMBackbone(vocab_size, **kw)
    elif kind == "transformer":
        backbone = TransformerBackbone(vocab_size, **kw)
    else:
        raise ValueError(f"unknown model {kind!r} (choose from {', '.join(MODELS)})")
    return WindowModel(backbone, 2 if supervised else vocab_size)


def fit_windows(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 5,
                batch_size: int = 256, lr: float = 2e-3, seed: int = 42, device: str = "cpu",
                class_weight: np.ndarray | None = None,
                progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Cross-entropy training on (window, target) pairs; returns the mean loss per epoch.

    Kept outside the module (plain loop, seeded); progress(epoch, epochs, loss) is called
    after each epoch so the caller decides how to show it.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32,
                                                                device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    xt = torch.as_tensor(np.array(x, dtype=np.int64))
    yt = torch.as_tensor(np.array(y, dtype=np.int64))
    history = []
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if progress:
            progress(ep + 1, epochs, history[-1])
    model.eval()
    return history


@torch.inference_mode()
def window_scores(model: nn.Module, x: np.ndarray, y: np.ndarray | None = None, *,
                  supervised: bool = False, batch_size: int = 4096,
                  device: str = "cpu") -> np.ndarray:
    """Per-window anomaly score: -log p(actual next token) (LM) or p(malicious) (classifier)."""
    model.to(device).eval()
    out = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.array(x[i:i + batch_size], np.int64)).to(device)
        logp = torch.log_softmax(model(xb).float(), dim=-1)
        if supervised:
            s = logp[:, 1].exp()
        else:
            yb = torch.from_numpy(np.array(y[i:i + batch_size], np.int64)).to(device)
            s = -logp.gather(1, yb[:, None])[:, 0]
        out[i:i + len(xb)] = s.cpu().numpy()
    return out
