"""Explanations for flow-level SemiFlow: which packets, header fields, payload ranges and
header metadata drove a whole flow's score.

A flow-level model (detector/models/semiflow_flowlevel.py) scores the first K packets of a flow
together (default "nll+rec": the latent's NLL plus the reconstruction error, each
standardised). Its inputs are three: the K x L bytes scaled to [0, 1], per-packet header
metadata (present, direction, IP length, TCP/UDP/ICMP, TCP flag bits) and a one-hot service.
The metadata and service are computed from the bytes by integer ops (shifts, compares,
table look-ups) that have no useful gradient, so they are attributed as inputs of their own
and reported by name, next to the byte fields they are read from.

Integrated gradients (Sundararajan et al. 2017) of the score w.r.t. all three inputs, from
a baseline the model finds normal and that is as close to the flow as possible (found by
descending the score with an L1 penalty on the change, as Sipple 2020 does for anomaly
detectors): attributions say which differences from "this flow, made normal" raise the
score, and sum (completeness) to score(flow) - score(baseline). Empty slots (a flow with
fewer than K packets) are inputs too: "pkt5 absent" means the model expected more packets.
An all-zero baseline (an empty flow) scores far above most flows and would turn
attributions into "why this is less odd than nothing"; the model's plain reconstruction of
an odd flow was tried and often scores higher than the flow itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from semiflow.detector.models.semiflow_flownet import flow_inputs, service_keys
from semiflow.detector.sample.fields import field_map, field_of
from semiflow.detector.sample.frame import PAYLOAD_OFFSET

METHODS = ("integrated-gradients", "grad-x-input")
BASELINES = ("nearby-normal", "zero")
# names of the metadata groups (columns of semiflow_flownet.packet_meta) and the byte field
# each is read from (for the reader: "meta.tcp_flags of pkt 3" is tcp byte 13 of that row)
META_GROUPS = (("meta.present", (0,)), ("meta.direction", (1,)), ("meta.ip_length", (2,)),
               ("meta.proto", (3, 4, 5)), ("meta.tcp_flags", tuple(range(6, 14))))
_PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}


def _score_fn(det):
    """score(rows, meta, service one-hot) of a fitted FlowSemiFlowDetector, differentiable in
    all three (the encoder's forward with a soft one-hot; the same arithmetic as _parts)."""
    cfg, enc, dec, flow = det.config_, det.encoder_, det.decoder_, det.flow_
    stats = det.stats_

    def fn(rows: torch.Tensor, meta: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        b, k, length = rows.shape
        codes = enc.packet(rows.reshape(b * k, 1, length)).view(b, k, -1)
        e = enc.mlp(torch.cat([torch.cat([codes, meta], -1).flatten(1), onehot], 1))
        r_hat, m_hat, s_logits = dec(e)
        parts = {"rec": cfg.w_bytes * ((r_hat - rows) ** 2).mean((1, 2))
                 + cfg.w_meta * ((m_hat - meta) ** 2).mean((1, 2))
                 - cfg.w_service * (onehot * F.log_softmax(s_logits, 1)).sum(1)}
        if det.score != "rec":
            parts["nll"] = flow.nll_per_flow(e).float()
        if det.score in parts:
            return parts[det.score]
        return sum((parts[k] - m) / s for k, (m, s) in stats.items() if k in ("nll", "rec"))
    return fn


def score_target(det) -> float:
    """A typical normal score: the held-out normal median (0 for "nll+rec")."""
    return 0.0 if det.score == "nll+rec" else float(det.stats_[det.score][0])


def nearby_normal(det, fn, rows: torch.Tensor, meta: torch.Tensor, onehot: torch.Tensor,
                  iters: int = 150, lr: float = 0.03, l1: float = 1.0
                  ) -> tuple[torch.Tensor, ...]:
    """A baseline the model finds normal, as close to the flow as it can be (Sipple 2020):
    descend score + l1 * |change| from the flow itself, inputs kept in their ranges, until
    the score reaches a typical normal score. Sparse (L1) changes keep what is normal about
    the flow in the baseline, so attributions land on what had to change."""
    target = score_target(det)
    r = rows.clone().requires_grad_(True)
    m = meta.clone().requires_grad_(True)
    theta = (onehot * 8.0).clone().requires_grad_(True)
    opt = torch.optim.Adam([r, m, theta], lr=lr)
    n_in = rows.numel() + meta.numel() + onehot.numel()
    best = (rows, meta, onehot)
    with torch.enable_grad():
        for _ in range(iters):
            p = torch.softmax(theta, 1)
            score = fn(r, m, p)
            best = (r.detach().clone(), m.detach().clone(), p.detach().clone())
            if float(score.detach()[0]) <= target:
                break
            dist = ((r - rows).abs().sum() + (m - meta).abs().sum()
                    + (p - onehot).abs().sum()) / n_in
            loss = score.sum() / max(abs(float(score.detach()[0])), 1.0) + l1 * dist * 100
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                r.clamp_(0, 1)
                m.clamp_(0, 1)
    return best


def _fit_sample(det, sample: np.ndarray, n_selected: int) -> np.ndarray:
    """uint8[K', L'] -> uint8[K, cfg.length] as score_flow_samples feeds it (slots past
    n_selected zeroed, missing slots added)."""
    cfg = det.config_
    x = np.zeros((cfg.k, cfg.length), np.uint8)
    src = np.asarray(sample, np.uint8)[: min(int(n_selected), cfg.k), : cfg.length]
    x[: len(src), : src.shape[1]] = src
    return x


def attribute_flow(det, sample: np.ndarray, n_selected: int,
                   method: str = "integrated-gradients", steps: int = 32,
                   baseline: str = "nearby-normal") -> dict:
    """Attributions of one flow's score: bytes float32[K, length], meta float32[K, N_META],
    service float32[n_services], plus score, baseline_score and the service index/key.

    Runs single-threaded on the CPU: one flow's batches are tiny, and on a busy 2-core host
    torch's thread hand-off made each explanation ~15x slower (measured 12 s vs 0.7 s)."""
    threads = torch.get_num_threads()
    if det.device_.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _attribute_flow(det, sample, n_selected, method, steps, baseline)
    finally:
        torch.set_num_threads(threads)


def _attribute_flow(det, sample: np.ndarray, n_selected: int, method: str, steps: int,
                    baseline: str) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose from {BASELINES}")
    if method == "grad-x-input":
        baseline = "zero"                  # gradient x input = one step from zero
    for m in (det.encoder_, det.decoder_, det.flow_):
        m.eval()
    cfg, dev = det.config_, det.device_
    x = _fit_sample(det, sample, n_selected)[None]
    rows, meta, svc = flow_inputs(x, cfg, dev)
    onehot = F.one_hot(svc, cfg.n_services).float()
    fn = _score_fn(det)
    with torch.no_grad():
        if baseline == "zero":
            base = (torch.zeros_like(rows), torch.zeros_like(meta), torch.zeros_like(onehot))
        else:
            base = nearby_normal(det, fn, rows, meta, onehot)
        score = float(fn(rows, meta, onehot)[0])
        base_score = float(fn(*base)[0])
    inputs = (rows, meta, onehot)
    if method == "grad-x-input":
        alphas = torch.ones(1, device=dev)
    else:
        alphas = (torch.arange(steps, device=dev, dtype=torch.float32) + 0.5) / steps
    grads = [torch.zeros_like(t) for t in inputs]
    chunk = 16
    for i in range(0, len(alphas), chunk):
        a = alphas[i:i + chunk]
        path = [(b0 + a.view(-1, *([1] * (t.dim() - 1))) * (t - b0)).requires_grad_(True)
                for t, b0 in zip(inputs, base)]
        with torch.enable_grad():
            out = fn(*path)
            gs = torch.autograd.grad(out.sum(), path)
        for acc, g in zip(grads, gs):
            acc += g.sum(0, keepdim=True)
    attr = [(g / len(alphas) * (t - b0))[0].detach().cpu().numpy().astype(np.float32)
            for g, t, b0 in zip(grads, inputs, base)]
    if not cfg.w_bytes:
        attr[0][:] = 0.0
    return {"bytes": attr[0], "meta": attr[1], "service": attr[2], "score": score,
            "baseline_score": base_score, "baseline": baseline,
            "service_index": int(svc[0]), "service_key": int(service_keys(x)[0]),
            "rows": x}


def service_name(key: int, known: bool) -> str:
    proto, port = divmod(int(key), 65536)
    name = _PROTO.get(proto, f"proto{proto}")
    return (f"{name}/{port}" if proto in (6, 17) else name) + ("" if known else " (unseen)")


@dataclass
class FlowLevelExplanation:
    """One flow-level explanation; the same surface as explain.FlowExplanation (driver,
    field_totals, top_bytes, summary, to_dict) so the CLI, notices and plots share code."""

    uid: str
    rows: np.ndarray                 # uint8[K, L]: the selected packets, then empty slots
    attributions: np.ndarray         # float32[K, L], score units per byte
    meta_attributions: np.ndarray    # float32[K, N_META]
    service_attribution: float
    service: str
    score: float                     # the flow's score (as the scorer's)
    baseline_score: float            # score of the baseline (the nearby normal point)
    method: str
    baseline: str = "nearby-normal"
    directions: np.ndarray | None = None
    nearest: list[dict] = field(default_factory=list)
    n_selected: int = -1             # slots past it are absent packets
    level: str = "flow"
    aggregate: str = "flow"

    def __post_init__(self) -> None:
        if self.n_selected < 0:
            self.n_selected = len(self.rows)

    @property
    def packet_scores(self) -> np.ndarray:
        """Per packet: its bytes' plus its metadata's attribution (score units)."""
        return self.attributions.sum(1) + self.meta_attributions.sum(1)

    @property
    def driver(self) -> int:
        """The packet contributing most to the score."""
        return int(np.argmax(self.packet_scores)) if len(self.rows) else -1

    def meta_totals(self) -> list[dict]:
        """Metadata attributions per packet and group (meta.tcp_flags, meta.direction, ...)."""
        out = []
        for p in range(len(self.rows)):
            for name, cols in META_GROUPS:
                out.append({"packet": p, "field": name, "start": -1, "end": -1,
                            "attribution": float(self.meta_attributions[p, list(cols)].sum())})
        return out

    def field_totals(self, packet: int | None = None) -> list[dict]:
        """Every packet's named header fields, 16-byte payload ranges and metadata groups,
        each absent packet as one item (the model expected more packets), and the service;
        largest attribution first (packet: only that packet's items)."""
        out: list[dict] = []
        for p in range(len(self.rows)) if packet is None else [packet]:
            row, a = self.rows[p], self.attributions[p]
            if p >= self.n_selected or not row.any():
                out.append({"packet": p, "field": "absent", "start": 0, "end": len(row),
                            "attribution": float(a.sum() + self.meta_attributions[p].sum())})
                continue
            for f in field_map(row):
                if f.name != "payload":
                    out.append({"packet": p, "field": f.name, "start": f.start, "end": f.end,
                                "attribution": float(a[f.start:f.end].sum())})
                    continue
                end = max(PAYLOAD_OFFSET + 16, _extent(row))
                for s in range(PAYLOAD_OFFSET, min(end, len(row)), 16):
                    e = min(s + 16, len(row))
                    out.append({"packet": p, "start": s, "end": e,
                                "field": f"payload[{s - PAYLOAD_OFFSET}:{e - PAYLOAD_OFFSET}]",
                                "attribution": float(a[s:e].sum())})
        out += [d for d in self.meta_totals() if (packet is None or d["packet"] == packet)
                and d["packet"] < self.n_selected and self.rows[d["packet"]].any()]
        if packet is None:
            out.append({"packet": None, "field": "service", "start": -1, "end": -1,
                        "attribution": float(self.service_attribution),
                        "value": self.service})
        return sorted(out, key=lambda d: -d["attribution"])

    def top_bytes(self, n: int = 10, packet: int | None = None) -> list[dict]:
        """Bytes with the largest positive attribution, over all packets (or one)."""
        a = self.attributions if packet is None else self.attributions[packet:packet + 1]
        flat = np.argsort(-a, axis=None, kind="stable")[:n]
        out = []
        for j in flat:
            p, o = divmod(int(j), a.shape[1])
            p += packet or 0
            if self.attributions[p, o] > 0:
                out.append({"packet": p, "offset": o, "field": field_of(self.rows[p], o),
                            "value": int(self.rows[p, o]),
                            "attribution": float(self.attributions[p, o])})
        return out

    def summary(self, n: int = 3) -> str:
        """One short line (a notice's $sub): score, and the top items with their packet."""
        tops = [d for d in self.field_totals()[:n] if d["attribution"] > 0]
        parts = ", ".join(_item_name(d) + f" {d['attribution']:+.3g}" for d in tops) or "none"
        return (f"explain flow score {self.score:.2f} (nearby normal "
                f"{self.baseline_score:.2f}, {self.n_selected} pkts): {parts}")

    def to_dict(self, n: int = 10) -> dict:
        return {"uid": self.uid, "level": "flow", "method": self.method,
                "baseline": self.baseline, "score": self.score,
                "baseline_score": self.baseline_score, "driver_packet": self.driver,
                "packet_attributions": [float(s) for s in self.packet_scores],
                "service": self.service, "top_fields": self.field_totals()[:n],
                "top_bytes": self.top_bytes(n), "nearest_normal": self.nearest}


def _item_name(d: dict) -> str:
    if d["field"] == "service":
        return f"service {d.get('value', '')}".rstrip()
    if d["field"] == "absent":
        return f"pkt{d['packet'] + 1} absent"
    return f"pkt{d['packet'] + 1} {d['field']}"


def _extent(row: np.ndarray) -> int:
    nz = np.flatnonzero(row)
    return int(nz[-1]) + 1 if len(nz) else 0


def explain_flow_level(scorer, sample: np.ndarray, n_selected: int, uid: str = "",
                       method: str = "integrated-gradients", steps: int = 32,
                       directions: np.ndarray | None = None,
                       baseline: str = "nearby-normal") -> FlowLevelExplanation:
    """Explain one flow of a flow-level FlowScorer: sample uint8[K, L], n_selected packets."""
    det = scorer.flow_detector
    n = min(int(n_selected), det.config_.k)
    if n == 0:
        raise ValueError(f"flow {uid or '?'} has no selected packet: nothing was scored")
    r = attribute_flow(det, sample, n, method, steps, baseline)
    length, k = det.config_.length, det.config_.k
    src = np.asarray(sample, np.uint8)[:n]
    rows = np.zeros((k, max(src.shape[1], length)), np.uint8)
    rows[:n, : src.shape[1]] = src
    attr = np.zeros(rows.shape, np.float32)
    attr[:, :length] = r["bytes"]
    known = r["service_index"] < len(det.config_.services)
    d = None if directions is None else np.asarray(directions)[:k]
    return FlowLevelExplanation(uid, rows, attr, r["meta"], float(r["service"].sum()),
                                service_name(r["service_key"], known), r["score"],
                                r["baseline_score"], method, r["baseline"], d, n_selected=n)


@torch.no_grad()
def flow_latents(scorer, samples: np.ndarray, n_selected: np.ndarray,
                 batch_size: int = 512) -> np.ndarray:
    """Flow latents float32[m, d] of a flow-level scorer (the space the flow scores in)."""
    det = scorer.flow_detector
    x = np.stack([_fit_sample(det, s, n) for s, n in zip(samples, n_selected)]) \
        if len(samples) else np.zeros((0, det.config_.k, det.config_.length), np.uint8)
    out = [det.encoder_(*flow_inputs(x[i:i + batch_size], det.config_, det.device_))
           .float().cpu().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, det.config_.latent_dim), np.float32)


def nearest_normal_flows(scorer, expl: FlowLevelExplanation, samples: np.ndarray,
                         n_selected: np.ndarray, info: list[dict], k: int = 3) -> list[dict]:
    """The k normal flows nearest to the explained one in the flow latent (L2)."""
    if len(samples) == 0:
        return []
    q = flow_latents(scorer, expl.rows[None], np.array([expl.n_selected]))
    z = flow_latents(scorer, samples, n_selected)
    d = np.sqrt(((z - q) ** 2).sum(1))
    return [{**info[i], "distance": float(d[i])} for i in np.argsort(d, kind="stable")[:k]]
