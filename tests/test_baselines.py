"""Baseline detectors: the shared estimator surface, separation on synthetic bytes, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from semiflow.detector.baselines.classic import (
    IsolationForestDetector,
    KDEDetector,
    load_detector,
    save_detector,
)
from semiflow.detector.baselines.deep import AutoencoderDetector, GANomaly1dDetector
from semiflow.detector.registry import DETECTORS, detector_class, make_detector, parse_names

torch.set_num_threads(1)
L = 64
TINY_GAN = {"enc_channels": [8, 16], "dec_channels": [16, 8], "latent_channels": 4,
            "batch_size": 32}


def _data(seed: int = 0, n: int = 400, n_anom: int = 60):
    """Normal rows: a fixed 'header' plus low-valued noise; anomalies: uniform random bytes."""
    rng = np.random.default_rng(seed)
    head = rng.integers(0, 256, 20)
    normal = rng.integers(0, 30, (n, L))
    normal[:, :20] = head
    anom = rng.integers(0, 256, (n_anom, L))
    return normal.astype(np.uint8), anom.astype(np.uint8)


def _fast_params(name: str) -> dict:
    return {"iforest": {"n_estimators": 50}, "ocsvm": {"n_components": 50, "pca_dims": 10},
            "pca": {"n_components": 5}, "kde": {"features": "raw", "pca_dims": 4},
            "ae": {"channels": (8, 16), "epochs": 10, "batch_size": 32, "lr": 3e-3},
            "ganomaly1d": {"config": TINY_GAN, "epochs": 8, "score": "recon"},
            "semiflow": None}[name]


BASELINES = [n for n in DETECTORS if not n.startswith("semiflow")]  # tested in their own files


@pytest.mark.parametrize("name", BASELINES)
def test_surface_and_separation(name):
    normal, anom = _data()
    train, held = normal[:300], normal[300:]
    det = make_detector(name, seed=0, **_fast_params(name))
    assert det.fit(train) is det
    s_norm, s_anom = det.anomaly_score(held), det.anomaly_score(anom)
    assert s_norm.shape == (len(held),) and s_anom.shape == (len(anom),)
    assert np.isfinite(s_norm).all() and np.isfinite(s_anom).all()
    np.testing.assert_allclose(det.score_samples(anom), -s_anom)
    y = np.r_[np.zeros(len(held)), np.ones(len(anom))]
    assert roc_auc_score(y, np.r_[s_norm, s_anom]) > 0.9, name
    # learned state carries a trailing underscore; parameters stay as given
    assert any(k.endswith("_") for k in vars(det))
    assert det.get_params()["seed"] == 0


@pytest.mark.parametrize("name", BASELINES)
def test_unfitted_raises(name):
    with pytest.raises((RuntimeError, ValueError, AttributeError)):
        make_detector(name, **_fast_params(name)).anomaly_score(_data()[0][:5])


def test_seeded_fits_agree():
    normal, anom = _data()
    a = IsolationForestDetector(n_estimators=30, seed=3).fit(normal).anomaly_score(anom)
    b = IsolationForestDetector(n_estimators=30, seed=3).fit(normal).anomaly_score(anom)
    np.testing.assert_array_equal(a, b)
    d1 = AutoencoderDetector(channels=(8,), epochs=1, seed=1).fit(normal).anomaly_score(anom)
    d2 = AutoencoderDetector(channels=(8,), epochs=1, seed=1).fit(normal).anomaly_score(anom)
    np.testing.assert_allclose(d1, d2, rtol=1e-5)


def test_ganomaly_latent_score_and_losses():
    normal, anom = _data()
    det = GANomaly1dDetector(config=TINY_GAN, epochs=3, score="latent", seed=0).fit(normal)
    assert len(det.losses_) == 3 and det.losses_[-1] < det.losses_[0]
    s = det.anomaly_score(anom)
    assert s.shape == (len(anom),) and np.isfinite(s).all() and (s >= 0).all()
    emb = det.embed(anom[:7])
    assert emb.shape == (7, det.config_.latent_dim)
    with pytest.raises(ValueError):
        GANomaly1dDetector(config=TINY_GAN, score="bogus").fit(normal)


def test_kde_on_frozen_encoder_features():
    normal, anom = _data()
    gan = GANomaly1dDetector(config=TINY_GAN, epochs=2, seed=0).fit(normal[:300])
    kde = KDEDetector(features="encoder", embedder=gan, pca_dims=4).fit(normal[:300])
    s_norm, s_anom = kde.anomaly_score(normal[300:]), kde.anomaly_score(anom)
    assert s_norm.mean() < s_anom.mean()
    with pytest.raises(ValueError, match="embedder"):
        KDEDetector(features="encoder").fit(normal)


def test_save_load_round_trip(tmp_path):
    normal, anom = _data()
    det = IsolationForestDetector(n_estimators=20).fit(normal)
    path = tmp_path / "iforest.joblib"
    save_detector(det, path)
    np.testing.assert_array_equal(load_detector(path).anomaly_score(anom),
                                  det.anomaly_score(anom))
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a saved detector"):
        load_detector(bad)


def test_registry():
    assert set(DETECTORS) == {"semiflow", "semiflow-nll", "iforest", "ocsvm", "pca", "kde",
                              "ae", "ganomaly1d"}
    assert make_detector("semiflow-nll", seed=3).score == "flow-nll"
    with pytest.raises(ValueError, match="unknown detector"):
        detector_class("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_detector("iforest", bogus=1)
    assert parse_names("all") == list(DETECTORS)
    assert parse_names("pca, iforest") == ["pca", "iforest"]
    sf = make_detector("semiflow", seed=7)   # seed goes to random_state
    assert sf.random_state == 7
    for name in DETECTORS:
        cls = detector_class(name)
        for method in ("fit", "anomaly_score", "score_samples"):
            assert callable(getattr(cls, method))
