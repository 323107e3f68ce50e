"""detector/ grouped into subpackages: the old flat module names still import, and detectors
saved with joblib under them still load."""

import importlib
import subprocess
import sys

import joblib
import numpy as np
import pytest

from semiflow.detector import MOVED
from semiflow.detector.baselines import classic, knn
from semiflow.detector.baselines.classic import load_detector


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_name_is_the_moved_module(old):
    moved = importlib.import_module(f"semiflow.detector.{MOVED[old]}")
    assert importlib.import_module(f"semiflow.detector.{old}") is moved


def test_unknown_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("semiflow.detector.no_such_module")
    with pytest.raises(AttributeError):
        importlib.import_module("semiflow.detector.baselines").NoSuchDetector  # noqa: B018


@pytest.mark.parametrize("cls, old_module, shape", [
    (classic.IsolationForestDetector, "semiflow.detector.baselines", (64, 32)),  # a package now
    (knn.KNNDetector, "semiflow.detector.baselines_knn", (64, 4, 32)),           # flow samples
])
def test_detector_pickled_under_its_old_module_loads(tmp_path, monkeypatch, cls, old_module,
                                                      shape):
    X = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    det = cls().fit(X)
    monkeypatch.setattr(cls, "__module__", old_module)   # as a file saved before the move
    joblib.dump(det, tmp_path / "old.joblib")
    assert old_module.encode() in (tmp_path / "old.joblib").read_bytes()
    monkeypatch.undo()
    back = load_detector(tmp_path / "old.joblib")
    assert type(back) is cls
    np.testing.assert_allclose(back.anomaly_score(X), det.anomaly_score(X))


def test_importing_one_baseline_does_not_load_the_others():
    """The package's answer for old class names must not run on submodule imports."""
    code = ("import sys\nfrom semiflow.detector.baselines import kitsune\n"
            "print('sklearn' in sys.modules, 'semiflow.detector.baselines.classic' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
