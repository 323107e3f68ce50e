"""Flow-level SemiFlow artifacts: the same directory layout as detector/artifact.py.

semiflow-model.json says `"level": "flow"` and `"format_version": 2` (a reader that knows
only version 1 stops with one line: "format version 2 not supported"), holds a FlowNetConfig
(with the learnt service vocabulary), the score ("nll+rec", "nll" or "rec") and the held-out
normal statistics that put nll and rec on one scale. model.safetensors holds encoder.*,
decoder.* and flow.* (the flow's latent standardisation included): scoring by "rec" needs
the decoder, "nll" the flow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semiflow.detector.models.semiflow_flowlevel import FLOW_SCORES, FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import (
    FlowDecoder,
    FlowEncoder,
    FlowNetConfig,
    LatentFlow,
)
from semiflow.detector.sample.spec import FlowSampleSpec

FLOW_FORMAT_VERSION = 2
ARTIFACT_SCORES = tuple(s for s in FLOW_SCORES if s != "classifier")


def flow_modules(cfg: FlowNetConfig) -> dict[str, torch.nn.Module]:
    return {"encoder": FlowEncoder(cfg), "decoder": FlowDecoder(cfg), "flow": LatentFlow(cfg)}


def check_spec(spec: FlowSampleSpec, cfg: FlowNetConfig) -> None:
    if spec.k != cfg.k or spec.l < cfg.length:
        raise ValueError(f"flow-level model wants K={cfg.k} and L >= {cfg.length}, the spec "
                         f"has K={spec.k}, L={spec.l}")


def flow_meta_and_tensors(det: FlowSemiFlowDetector, spec: FlowSampleSpec
                          ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON fields and tensors of a fitted detector (artifact.save_artifact writes them)."""
    if not hasattr(det, "stats_"):
        raise ValueError("flow-level SemiFlow is not fitted")
    if det.score not in ARTIFACT_SCORES:
        raise ValueError(f"a flow-level artifact scores with one of {ARTIFACT_SCORES}, "
                         f"not {det.score!r}")
    check_spec(spec, det.config_)
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, m in (("encoder", det.encoder_), ("decoder", det.decoder_),
                               ("flow", det.flow_))
               for k, v in m.state_dict().items()}
    meta = {"format_version": FLOW_FORMAT_VERSION, "level": "flow",
            "config": det.config_.to_dict(), "score": det.score,
            "score_stats": {k: list(v) for k, v in det.stats_.items()}}
    return meta, tensors


def detector_from_tensors(cfg: FlowNetConfig, score: str, stats: dict,
                          tensors: dict[str, torch.Tensor], wname: str,
                          device: torch.device | str = "cpu") -> FlowSemiFlowDetector:
    """A fitted FlowSemiFlowDetector from artifact weights; ValueError when they do not fit."""
    if score not in ARTIFACT_SCORES:
        raise ValueError(f"model artifact: unknown flow-level score {score!r}")
    det = FlowSemiFlowDetector(cfg, score=score, device=str(device))
    det.config_, det.device_ = cfg, torch.device(device)
    mods = flow_modules(cfg)
    from semiflow.detector.artifact import (
        _load_into,  # lazy: artifact.py imports this module lazily too
    )
    for prefix, mod in mods.items():
        _load_into(mod, tensors, prefix, Path(wname))
        mod.to(det.device_).eval()
    det.encoder_, det.decoder_, det.flow_ = mods["encoder"], mods["decoder"], mods["flow"]
    det.classifier_ = None
    try:
        det.stats_ = {k: (float(v[0]), float(v[1])) for k, v in stats.items()}
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as e:
        raise ValueError(f"model artifact: malformed score_stats ({e!r})") from e
    if not all(np.isfinite(m) and np.isfinite(s) and s > 0 for m, s in det.stats_.values()):
        raise ValueError("model artifact: score_stats need a finite mean and a positive "
                         "finite scale")
    if score == "nll+rec" and not {"nll", "rec"} <= set(det.stats_):
        raise ValueError("model artifact: score nll+rec needs score_stats for nll and rec")
    return det


def score_flow_samples(det: FlowSemiFlowDetector, samples: np.ndarray,
                       n_selected: np.ndarray) -> np.ndarray:
    """Flow scores for samples uint8[m, <= K, L]; NaN where nothing was selected."""
    cfg = det.config_
    m, k = samples.shape[:2]
    out = np.full(m, np.nan)
    ok = np.asarray(n_selected) > 0
    if not ok.any():
        return out
    x = samples[ok, :, : cfg.length]  # a copy (boolean index): the caller's array is kept
    if k < cfg.k:
        x = np.concatenate([x, np.zeros((len(x), cfg.k - k, x.shape[2]), np.uint8)], 1)
    # slots past n_selected are zero in a well-formed sample; make sure of it (zeroing only
    # those slots: the live scorer calls this ~50,000 flows/s)
    drop = np.arange(cfg.k)[None, :] >= np.asarray(n_selected)[ok][:, None]
    if drop.any():
        x[drop] = 0
    with torch.inference_mode():
        out[ok] = det.anomaly_score(x)
    return out
