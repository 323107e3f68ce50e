"""Which bytes drove a flow's score: attributions over packet bytes, named by header field.

A flagged flow is only actionable when an analyst can see WHY: this module attributes each
packet's anomaly log-odds (the classifier's logit margin, as FlowScorer scores) to its input
bytes with integrated gradients (Sundararajan et al. 2017; baseline = the all-zero row, i.e.
"byte absent", which is also what masking a byte means) or gradient x input (cheaper, one
backward pass). Attributions are per byte of the fixed-offset sample row, so they can be
summed per header field (detector/sample/fields.py) and drawn as a heat map over the packets.

Only the encoder and the classifier of a loaded artifact are used (FlowScorer.encoder /
.classifier): an artifact stores no training data, so "nearest normal examples" need a
normal extraction passed in (nearest_normal), and are skipped otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from semiflow.detector.sample.fields import field_map, field_of
from semiflow.detector.sample.frame import IP_REGION, PAYLOAD_OFFSET

METHODS = ("integrated-gradients", "grad-x-input")


def _as_input(rows: np.ndarray, device) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(rows, np.uint8)).to(device).float()
            / 255.0).unsqueeze(1)


def _log_odds(encoder, classifier, x: torch.Tensor) -> torch.Tensor:
    logits = classifier(encoder(x)).float()
    return logits[:, 1] - logits[:, 0]


def attribute(encoder: torch.nn.Module, classifier: torch.nn.Module, rows: np.ndarray,
              method: str = "integrated-gradients", steps: int = 32,
              device: str | torch.device = "cpu", batch_size: int = 256
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions float32[n, L], log-odds float64[n], baseline log-odds float64[n]).

    Attributions are in log-odds units per input byte. For integrated gradients they sum to
    about log-odds(row) - log-odds(all-zero row) (completeness; midpoint Riemann sum).
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError(f"attribute: expected uint8[n, L] rows, got {rows.dtype}{rows.shape}")
    encoder.eval()
    classifier.eval()
    device = torch.device(device)
    n, length = rows.shape
    attr = np.zeros((n, length), np.float32)
    with torch.no_grad():
        x_all = _as_input(rows, device)
        score = _log_odds(encoder, classifier, x_all).double().cpu().numpy() if n else \
            np.zeros(0)
        base = _log_odds(encoder, classifier, torch.zeros_like(x_all[:1])).double().item() \
            if n else 0.0
    alphas = (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps \
        if method == "integrated-gradients" else torch.ones(1, device=device)
    per = max(1, batch_size // len(alphas))
    for i in range(0, n, per):
        x = x_all[i:i + per]                                       # [b, 1, L]
        path = (alphas.view(1, -1, 1, 1) * x.unsqueeze(1)).reshape(-1, 1, length)
        path.requires_grad_(True)
        with torch.enable_grad():
            out = _log_odds(encoder, classifier, path)
            (grad,) = torch.autograd.grad(out.sum(), path)
        g = grad.view(len(x), len(alphas), length).mean(1)
        attr[i:i + len(x)] = (g * x[:, 0]).detach().cpu().numpy()
    return attr, score, np.full(n, base)


@dataclass
class FlowExplanation:
    """Attributions for the selected packets of one flow (row i = the flow's i-th packet)."""

    uid: str
    rows: np.ndarray                 # uint8[n, L]
    attributions: np.ndarray         # float32[n, L], log-odds per byte
    packet_scores: np.ndarray        # log-odds per packet
    baseline_score: float            # log-odds of the all-zero row
    method: str
    aggregate: str = "max"
    directions: np.ndarray | None = None   # 0 orig->resp, 1 back
    nearest: list[dict] = field(default_factory=list)

    @property
    def driver(self) -> int:
        """The packet that set the flow score (max aggregate), else the highest-scoring one."""
        return int(np.argmax(self.packet_scores)) if len(self.packet_scores) else -1

    def top_bytes(self, n: int = 10, packet: int | None = None) -> list[dict]:
        """Bytes with the largest positive attribution (pushing towards anomalous)."""
        pk = self.driver if packet is None else packet
        if pk < 0:
            return []
        a = self.attributions[pk]
        order = np.argsort(-a, kind="stable")[:n]
        return [{"packet": pk, "offset": int(o), "field": field_of(self.rows[pk], int(o)),
                 "value": int(self.rows[pk, o]), "attribution": float(a[o])}
                for o in order if a[o] > 0]

    def field_totals(self, packet: int | None = None) -> list[dict]:
        """Attribution summed per named field of one packet, largest first (payload split
        into 16-byte chunks so 'where in the payload' stays visible)."""
        pk = self.driver if packet is None else packet
        if pk < 0:
            return []
        row, a = self.rows[pk], self.attributions[pk]
        out = []
        for f in field_map(row):
            if f.name == "payload":
                end = max(PAYLOAD_OFFSET, _extent(row))
                for s in range(PAYLOAD_OFFSET, end, 16):
                    e = min(s + 16, end)
                    out.append({"field": f"payload[{s - PAYLOAD_OFFSET}:{e - PAYLOAD_OFFSET}]",
                                "start": s, "end": e, "attribution": float(a[s:e].sum())})
            else:
                out.append({"field": f.name, "start": f.start, "end": f.end,
                            "attribution": float(a[f.start:f.end].sum())})
        return sorted(out, key=lambda d: -d["attribution"])

    def summary(self, n: int = 3) -> str:
        """One short line (a notice's $sub): the driving packet and its top fields."""
        if self.driver < 0:
            return "no packet to explain"
        tops = [d for d in self.field_totals()[:n] if d["attribution"] > 0]
        parts = ", ".join(f"{d['field']} {d['attribution']:+.3g}" for d in tops) or "none"
        return (f"explain pkt {self.driver + 1}/{len(self.packet_scores)} "
                f"log-odds {self.packet_scores[self.driver]:.2f}: {parts}")

    def to_dict(self, n: int = 10) -> dict:
        return {"uid": self.uid, "method": self.method, "driver_packet": self.driver,
                "packet_scores": [float(s) for s in self.packet_scores],
                "baseline_score": self.baseline_score, "top_fields": self.field_totals()[:n],
                "top_bytes": self.top_bytes(n), "nearest_normal": self.nearest}


def _extent(row: np.ndarray) -> int:
    nz = np.flatnonzero(row)
    return int(nz[-1]) + 1 if len(nz) else 0


def explain_flow(scorer, sample: np.ndarray, n_selected: int, uid: str = "",
                 method: str = "integrated-gradients", steps: int = 32,
                 directions: np.ndarray | None = None) -> FlowExplanation:
    """Explain one flow of a FlowScorer's spec: sample uint8[K, L], its first n_selected rows.

    A flow-level scorer gets a FlowLevelExplanation (detector/explain/flow_level.py)."""
    if getattr(scorer, "flow_detector", None) is not None:
        from semiflow.detector.explain.flow_level import explain_flow_level
        return explain_flow_level(scorer, sample, n_selected, uid, method, steps, directions)
    rows = np.asarray(sample, np.uint8)[:int(n_selected)]
    if len(rows) == 0:
        raise ValueError(f"flow {uid or '?'} has no selected packet: nothing was scored")
    attr, scores, base = attribute(scorer.encoder, scorer.classifier, rows, method, steps,
                                   scorer.device)
    d = None if directions is None else np.asarray(directions)[:len(rows)]
    return FlowExplanation(uid, rows, attr, scores, float(base[0]), method,
                           getattr(scorer, "aggregate", "max"), d)


def mask_bytes(rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Copy of rows with the given (row, offset) positions zeroed (the IG baseline)."""
    out = np.array(rows, np.uint8, copy=True)
    pos = np.asarray(positions).reshape(-1, 2)
    out[pos[:, 0], pos[:, 1]] = 0
    return out


@torch.no_grad()
def latents(scorer, rows: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Encoder features float32[n, D] (the space the classifier decides in)."""
    out = []
    for i in range(0, len(rows), batch_size):
        out.append(scorer.encoder(_as_input(rows[i:i + batch_size], scorer.device))
                   .flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def nearest_normal(scorer, expl: FlowExplanation, normal_rows: np.ndarray,
                   normal_info: list[dict], k: int = 3) -> list[dict]:
    """The k normal packets nearest (encoder space, L2) to the flow's driving packet.

    normal_info[i] describes normal_rows[i] (uid, source_file, ...). Cheap when the normal
    set is a capped sample (thousands of rows); the caller decides which normal data.
    """
    if expl.driver < 0 or len(normal_rows) == 0:
        return []
    q = latents(scorer, expl.rows[expl.driver:expl.driver + 1])
    z = latents(scorer, normal_rows)
    d = np.sqrt(((z - q) ** 2).sum(1))
    order = np.argsort(d, kind="stable")[:k]
    return [{**normal_info[i], "distance": float(d[i])} for i in order]


def plot_explanation(expl: FlowExplanation, path=None, max_bytes: int | None = None):
    """Heat map of attributions: headers [0, 120) with fields named, then the payload.

    Red pushes towards anomalous, blue towards normal. Returns the matplotlib Figure (and
    saves a PNG to `path` when given).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    a = expl.attributions
    n = len(a)
    extent = max([_extent(r) for r in expl.rows] + [PAYLOAD_OFFSET + 16])
    width = min(expl.rows.shape[1], max_bytes or 512, max(extent, PAYLOAD_OFFSET + 16))
    lim = float(np.abs(a[:, :width]).max()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 3.2 + 0.5 * n), dpi=90,
                                   gridspec_kw={"height_ratios": [1, 1], "hspace": 0.75})
    im = ax1.imshow(a[:, :PAYLOAD_OFFSET], aspect="auto", cmap="RdBu_r", norm=norm,
                    interpolation="nearest")
    row = expl.rows[0 if getattr(expl, "level", "") == "flow" else max(expl.driver, 0)]
    fields = [f for f in field_map(row) if f.end <= PAYLOAD_OFFSET]
    ax1.set_xticks([(f.start + f.end - 1) / 2 for f in fields])
    ax1.set_xticklabels([f.name.split(".", 1)[-1] for f in fields], rotation=90, fontsize=6)
    regions = ((0, fields[0].name), (IP_REGION, fields[-1].name))
    for f0, label in regions:
        ax1.text(f0, -0.7, label.split(".")[0].upper(), fontsize=8, fontweight="bold", va="bottom")
    for f in fields:
        ax1.axvline(f.start - 0.5, color="#888", lw=0.4)
    ax1.axvline(IP_REGION - 0.5, color="k", lw=1.2)
    what = "flow score" if getattr(expl, "level", "packet") == "flow" else "anomaly log-odds"
    fig.suptitle(f"flow {expl.uid}: attribution of {what} ({expl.method}); "
                 "red = towards anomalous, * = packet that set the score", fontsize=9)
    ax2.imshow(a[:, PAYLOAD_OFFSET:width], aspect="auto", cmap="RdBu_r", norm=norm,
               interpolation="nearest", extent=(-0.5, width - PAYLOAD_OFFSET - 0.5, n - 0.5,
                                                -0.5))
    ax2.set_xlabel("payload byte offset", fontsize=8)
    ax2.set_title("payload", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_yticks(range(n))
        ax.set_yticklabels([_packet_label(expl, i) for i in range(n)], fontsize=7)
    fig.colorbar(im, ax=[ax1, ax2], fraction=0.02, pad=0.01, label="score per byte")
    if path is not None:
        fig.savefig(path, format="png", bbox_inches="tight")
    return fig


def _packet_label(expl: FlowExplanation, i: int) -> str:
    arrow = ""
    if expl.directions is not None and i < len(expl.directions):
        arrow = " ->" if expl.directions[i] == 0 else " <-"
    star = "*" if i == expl.driver else ""
    return f"{star}pkt {i + 1}{arrow} ({expl.packet_scores[i]:.1f})"
