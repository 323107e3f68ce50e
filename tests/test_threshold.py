"""Threshold calibration achieves its false-positive rate on synthetic scores."""

from __future__ import annotations

import numpy as np
import pytest

from semiflow.detector.threshold import Threshold, calibrate_threshold, rates_at


@pytest.mark.parametrize("target", [1e-3, 1e-2, 0.05])
def test_achieves_target_fpr_on_calibration_and_fresh_scores(target):
    rng = np.random.default_rng(0)
    calib = rng.normal(size=200_000)
    t = calibrate_threshold(calib, target)
    assert t.target_fpr == target and t.n_normal == 200_000 and t.resolved
    assert t.achieved_fpr <= target
    assert t.achieved_fpr >= target - 2 / 200_000       # as close as the data allows
    assert t.achieved_fpr == pytest.approx(np.mean(calib > t.value))
    fresh = rng.normal(size=200_000)                   # same distribution, never seen
    fpr = rates_at(t.value, fresh)["fpr"]
    sd = np.sqrt(target * (1 - target) / 200_000)
    assert abs(fpr - target) < 5 * sd + 2 / 200_000
    anomalous = rng.normal(loc=4.0, size=10_000)
    assert rates_at(t.value, fresh, anomalous)["tpr"] > 0.5


def test_nan_scores_are_ignored_and_ties_never_exceed_target():
    scores = np.r_[np.zeros(990), np.ones(10), np.full(50, np.nan)]
    t = calibrate_threshold(scores, 1e-3)
    assert t.n_normal == 1000
    assert t.achieved_fpr <= 1e-3
    assert t.value == 1.0              # ten tied maxima: only a threshold at 1.0 keeps FPR <= 1e-3


def test_small_calibration_set_is_flagged_unresolved():
    t = calibrate_threshold(np.linspace(0, 1, 100), 1e-3)
    assert not t.resolved and t.value == 1.0 and t.achieved_fpr == 0.0
    assert t.to_dict()["resolved"] is False


def test_round_trip_and_bad_input():
    t = calibrate_threshold(np.arange(5000.0), 1e-3, aggregate="mean")
    assert Threshold.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="FPR"):
        calibrate_threshold(np.arange(10.0), 0.0)
    with pytest.raises(ValueError, match="no scored normal"):
        calibrate_threshold(np.full(3, np.nan))
    with pytest.raises(ValueError, match="malformed"):
        Threshold.from_dict({"value": 1.0})
