"""The baselines behind SemiFlow's fit/score surface: classic (BaseDetector, Isolation Forest,
One-Class SVM, PCA; save/load), deep, knn, kitsune.

Imported as semiflow.detector.baselines: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""

import importlib
import importlib.util


def __getattr__(name: str):
    """Detectors saved with joblib before the move name their classes
    semiflow.detector.baselines.<Class>: load them from classic. A submodule not imported yet
    is left to the import system (`from ... import kitsune` must not load classic's sklearn)."""
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    classic = importlib.import_module(f"{__name__}.classic")
    try:
        return getattr(classic, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
