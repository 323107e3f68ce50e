"""FlowScorer: a loaded artifact ready for inference (encoder + classifier, batched).

The serving loop and `semiflow score` both go through here: packets -> log-odds of
"anomalous" (P(anomalous) for artifacts older than the log-odds change),
flows -> aggregate of their packets' scores (NaN when the flow had no selected packet: such
a flow is unscored, never "normal"), verdicts against the artifact's threshold.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from semiflow.detector.aggregate import aggregate_flow_scores
from semiflow.detector.artifact import (
    Artifact,
    build_flow,
    build_flow_detector,
    build_modules,
    load_artifact,
)
from semiflow.detector.models.flow_inference import GPU_BATCH
from semiflow.detector.models.semiflow_inference import (
    flow_nll_scores,
    packet_scores,
    probability,
    resolve_device,
)
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.threshold import Threshold

VERDICT_ANOMALOUS = "anomalous"
VERDICT_NORMAL = "normal"
VERDICT_UNSCORED = "unscored"


class FlowScorer:
    def __init__(self, artifact: Artifact, device: str | torch.device | None = None,
                 batch_size: int = 4096, amp: str = "off", compile: bool = False,
                 gpu_path: bool = True):
        self.artifact = artifact
        self.device = resolve_device(device)
        self.batch_size = batch_size
        # flow-level artifacts (docs/model.md) score whole flows; no packet encoder/classifier
        self.flow_detector = (build_flow_detector(artifact, self.device)
                              if artifact.level == "flow" else None)
        if self.flow_detector is not None:
            self.encoder = self.classifier = self.flow = None
            if self.device.type == "cuda" and gpu_path:   # large batches, overlapped copies
                self.flow_detector.use_gpu_scorer(max(batch_size, GPU_BATCH), amp,
                                                  compile)
            return
        self.encoder, self.classifier = build_modules(artifact, self.device)
        self.flow = build_flow(artifact, self.device) if artifact.score_kind == "flow-nll" \
            else None

    @property
    def spec(self) -> FlowSampleSpec:
        return self.artifact.spec

    @property
    def threshold(self) -> float:
        """The alert threshold (NaN when the artifact has none: nothing is ever flagged)."""
        t = self.artifact.threshold
        return float(t.value) if t is not None else float("nan")

    @property
    def threshold_info(self) -> Threshold | None:
        return self.artifact.threshold

    @property
    def aggregate(self) -> str:
        return self.artifact.aggregate

    @property
    def model_name(self) -> str:
        return self.artifact.model_name

    @property
    def model_version(self) -> str:
        return self.artifact.model_version

    @property
    def score_kind(self) -> str:
        """'log-odds' (P(anomalous) = sigmoid(score)), 'flow-nll' (the flow's NLL per
        dimension) or 'probability' (older artifacts)."""
        return self.artifact.score_kind

    def score_packets(self, rows: np.ndarray) -> np.ndarray:
        """Scores (in the artifact's score kind, as its threshold) for rows uint8[n, L]."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.spec.l or rows.dtype != np.uint8:
            raise ValueError(f"score_packets: expected uint8[n, {self.spec.l}], "
                             f"got {rows.dtype}{list(rows.shape)}")
        if len(rows) == 0:
            return np.zeros(0, np.float64)
        if self.flow_detector is not None:
            raise ValueError("score_packets: this is a flow-level model; it scores whole flows "
                             "(score_flows)")
        with torch.inference_mode():
            if self.flow is not None:
                return flow_nll_scores(self.encoder, self.flow, rows, self.device,
                                       self.batch_size)
            s = packet_scores(self.encoder, self.classifier, rows, self.device,
                              self.batch_size)
        return probability(s) if self.score_kind == "probability" else s

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray:
        """Flow scores for samples uint8[m, K, L]; NaN where n_selected == 0."""
        samples = np.asarray(samples)
        n_sel = np.asarray(n_selected, dtype=np.int64).reshape(-1)
        k, l = self.spec.k, self.spec.l
        if samples.ndim != 3 or samples.shape[2] != l or samples.shape[1] > k \
                or samples.dtype != np.uint8:
            raise ValueError(f"score_flows: expected uint8[m, <= {k}, {l}] (the model's spec), "
                             f"got {samples.dtype}{list(samples.shape)}")
        if len(n_sel) != len(samples):
            raise ValueError(f"score_flows: {len(samples)} samples but {len(n_sel)} counts")
        if (n_sel < 0).any() or (n_sel > samples.shape[1]).any():
            raise ValueError("score_flows: n_selected out of range")
        if self.flow_detector is not None:
            from semiflow.detector.models.semiflow_flowartifact import score_flow_samples
            return score_flow_samples(self.flow_detector, samples, n_sel)
        m = len(samples)
        mask = np.arange(samples.shape[1])[None, :] < n_sel[:, None]
        flow_idx = np.broadcast_to(np.arange(m)[:, None], mask.shape)[mask]
        rows = samples[mask]
        return aggregate_flow_scores(self.score_packets(rows), flow_idx, m, self.aggregate)

    def verdicts(self, scores: np.ndarray) -> np.ndarray:
        """'anomalous' above the threshold, 'normal' at or below it, 'unscored' for NaN."""
        s = np.asarray(scores, dtype=np.float64)
        out = np.full(s.shape, VERDICT_NORMAL, dtype=object)
        out[np.isnan(s)] = VERDICT_UNSCORED
        if not np.isnan(self.threshold):
            out[~np.isnan(s) & (s > self.threshold)] = VERDICT_ANOMALOUS
        return out


def load_scorer(path: str | os.PathLike, device: str | torch.device | None = None,
                batch_size: int = 4096, amp: str = "off", compile: bool = False,
                gpu_path: bool = True) -> FlowScorer:
    """Load an artifact directory for inference (CUDA if available, else CPU).

    The model scores one empty sample of its own spec before it is handed out: an artifact
    whose config fits its weights but not its input (a corrupt length, say) fails here, as
    a ValueError, rather than on every flow of a running service. On CUDA a flow-level model
    scores through detector/models/flow_inference.py: `amp` "bf16" autocasts its byte encoder and
    decoder (on the lab's 39,335 flows it flipped 3 verdicts of the bundled model, median
    score change 0.039 against a threshold of 15.0: benchmarks/score_speed.py), `compile`
    captures it as CUDA graphs; `gpu_path` False keeps the plain loop (an A/B switch)."""
    artifact = load_artifact(path)
    spec = artifact.spec
    try:   # (the GPU path warms up every batch shape as it is built: inside the guard too)
        scorer = FlowScorer(artifact, device=device, batch_size=batch_size, amp=amp,
                            compile=compile, gpu_path=gpu_path)
        s = scorer.score_flows(np.zeros((1, spec.k, spec.l), np.uint8), np.ones(1, np.int64))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"model artifact: {path} cannot score a sample of its own spec "
                         f"(K={spec.k}, L={spec.l}): {type(e).__name__}: {first}") from e
    if not np.isfinite(s).all():
        raise ValueError(f"model artifact: {path} cannot score: it scores a sample of its "
                         f"own spec as {s[0]} (corrupt weights?)")
    return scorer
