"""SemiFlow scored by its flow's density instead of its classifier.

Same training (all three stages); anomaly_score = the flow's NLL per latent dimension
(score="flow-nll"), which ranked the corpus benchmarks better than the classifier's log-odds
(docs/model.md). A class of its own so that code choosing detectors by class -- a registry
entry next to the classifier-scored SemiFlowDetector -- can offer both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_model import SemiFlowConfig


class SemiFlowNLLDetector(SemiFlowDetector):
    """SemiFlow scored by its flow's density (score="flow-nll"), for code that picks
    detectors by class (e.g. a registry entry next to the classifier-scored one)."""

    def __init__(self, config: SemiFlowConfig | str = "small", epochs: int | None = None,
                 device: str | None = None, amp: str = "bf16", random_state: int | None = None,
                 checkpoint: str | Path | None = None, resume: bool = False,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 score: str = "flow-nll"):
        super().__init__(config, epochs, device, amp, random_state, checkpoint, resume,
                         progress, log, score)
