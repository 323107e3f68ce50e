"""Name -> detector class, for every packet-level detector the evaluate command can train.

Classes are resolved on first use (dotted paths), so listing names imports neither torch nor
the SemiFlow model, and detector modules never import this one (no import cycles).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

DETECTORS: dict[str, str] = {
    "semiflow": "semiflow.detector.semiflow:SemiFlowDetector",
    "semiflow-nll": "semiflow.detector.semiflow_nll:SemiFlowNLLDetector",
    "iforest": "semiflow.detector.baselines:IsolationForestDetector",
    "ocsvm": "semiflow.detector.baselines:OneClassSVMDetector",
    "pca": "semiflow.detector.baselines:PCAReconstructionDetector",
    "kde": "semiflow.detector.baselines:KDEDetector",
    "ae": "semiflow.detector.baselines_deep:AutoencoderDetector",
    "ganomaly1d": "semiflow.detector.baselines_deep:GANomaly1dDetector",
}

# Detectors whose fitted instances expose encoder features (embed/encode), best first:
# KDE(features="encoder") borrows the frozen encoder of one fitted on the same split.
EMBEDDERS = ("semiflow", "ganomaly1d")


def detector_class(name: str) -> type:
    """The class registered under name; ValueError naming the choices otherwise."""
    try:
        path = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose from "
                         f"{', '.join(DETECTORS)}") from None
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
    """'semiflow,iforest' or 'all' -> validated names, in the given order."""
    names = list(DETECTORS) if spec.strip() == "all" else [
        n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in DETECTORS:
            detector_class(n)  # raises, naming the choices
    if not names:
        raise ValueError("no detector named")
    return names
