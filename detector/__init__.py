"""The core: the flow-sample spec, models, artifacts, scoring. Imports nothing else of ours.

Imported as semiflow.detector: pyproject.toml maps it to this repository's detector/ folder,
which tools that read imports cannot follow. Subpackages: sample, models, baselines, logs,
serving, lifecycle, explain.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that lived directly in detector/ until the subpackages: their old names still import
# (the same module object), so detectors pickled by joblib under those names still load. The
# old baselines, serving, lifecycle and explain modules are the packages of those names now
# (baselines answers for its old classes itself).
MOVED = {
    "spec": "sample.spec",
    "frame": "sample.frame",
    "fields": "sample.fields",
    "tunnel": "sample.tunnel",
    "semiflow": "models.semiflow",
    "semiflow_model": "models.semiflow_model",
    "semiflow_nll": "models.semiflow_nll",
    "semiflow_inference": "models.semiflow_inference",
    "semiflow_flowlevel": "models.semiflow_flowlevel",
    "semiflow_flownet": "models.semiflow_flownet",
    "semiflow_flowartifact": "models.semiflow_flowartifact",
    "flow_inference": "models.flow_inference",
    "train_loop": "models.train_loop",
    "baselines_deep": "baselines.deep",
    "baselines_knn": "baselines.knn",
    "kitsune": "baselines.kitsune",
    "kitsune_features": "baselines.kitsune_features",
    "log_baselines": "logs.baselines",
    "log_detector": "logs.detector",
    "log_models": "logs.models",
    "log_threshold": "logs.threshold",
    "log_tokens": "logs.tokens",
    "serving_zmq": "serving.zmq_scorer",
    "drift": "lifecycle.drift",
    "model_compare": "lifecycle.compare",
    "explain_flowlevel": "explain.flow_level",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        old = name.rpartition(".")[2]
        if name == f"{__name__}.{old}" and old in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module) -> None:
        pass                                      # the new module has run already


if not any(isinstance(f, _OldNames) for f in sys.meta_path):
    sys.meta_path.append(_OldNames())
