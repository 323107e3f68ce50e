"""Name -> detector class, for every detector the evaluate command can train.

DETECTORS fit on packet rows X[n_packets, L] (flow score = aggregate of packet scores);
FLOW_DETECTORS fit on flow samples X[n_flows, K, L] and score flows directly (their class says
level = "flow"; training.evaluate_run honours it). CAPTURE_DETECTORS need every packet's
metadata of a whole capture, not flow samples, so evaluate cannot run them: their own entry
point is named with them.

Classes are resolved on first use (dotted paths), so listing names imports neither torch nor
the SemiFlow model, and detector modules never import this one (no import cycles).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

DETECTORS: dict[str, str] = {
    "semiflow": "semiflow.detector.models.semiflow:SemiFlowDetector",
    "semiflow-nll": "semiflow.detector.models.semiflow_nll:SemiFlowNLLDetector",
    "iforest": "semiflow.detector.baselines.classic:IsolationForestDetector",
    "ocsvm": "semiflow.detector.baselines.classic:OneClassSVMDetector",
    "pca": "semiflow.detector.baselines.classic:PCAReconstructionDetector",
    "kde": "semiflow.detector.baselines.classic:KDEDetector",
    "ae": "semiflow.detector.baselines.deep:AutoencoderDetector",
    "ganomaly1d": "semiflow.detector.baselines.deep:GANomaly1dDetector",
}
FLOW_DETECTORS: dict[str, str] = {
    "knn": "semiflow.detector.baselines.knn:KNNDetector",
}
# name -> (class, the entry point that evaluates it on captures)
CAPTURE_DETECTORS: dict[str, tuple[str, str]] = {
    "kitsune": ("semiflow.detector.baselines.kitsune:Kitsune",
                "python -m semiflow.training.kitsune_eval"),
}

# Detectors whose fitted instances expose encoder features (embed/encode), best first:
# KDE(features="encoder") borrows the frozen encoder of one fitted on the same split.
EMBEDDERS = ("semiflow", "ganomaly1d")


def detector_class(name: str) -> type:
    """The class registered under name; ValueError naming the choices otherwise."""
    path = DETECTORS.get(name) or FLOW_DETECTORS.get(name)
    if path is None:
        hint = ""
        if name in CAPTURE_DETECTORS:
            hint = f" ({name} scores whole captures: run {CAPTURE_DETECTORS[name][1]})"
        raise ValueError(f"unknown detector {name!r}{hint}; choose from "
                         f"{', '.join([*DETECTORS, *FLOW_DETECTORS])}")
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


def make_detector(name: str, seed: int | None = None, **params: Any):
    """An unfitted detector; seed goes to whichever of seed/random_state the class takes."""
    cls = detector_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if seed is not None:
        key = "seed" if "seed" in accepted else "random_state"
        params.setdefault(key, seed)
    unknown = set(params) - set(accepted)
    if unknown:
        raise ValueError(f"detector {name}: unknown parameter(s) {sorted(unknown)}")
    return cls(**params)


def parse_names(spec: str) -> list[str]:
    """'semiflow,iforest,knn' or 'all' -> validated names, in the given order.

    'all' is the packet-level set (DETECTORS); flow-level ones are named explicitly."""
    names = list(DETECTORS) if spec.strip() == "all" else [
        n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in DETECTORS and n not in FLOW_DETECTORS:
            detector_class(n)  # raises, naming the choices
    if not names:
        raise ValueError("no detector named")
    return names
