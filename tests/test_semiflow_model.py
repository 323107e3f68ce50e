"""SemiFlow networks and estimator: shapes, an exact flow inverse, learning, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_model import (
    Classifier,
    CouplingBlock,
    Decoder,
    Discriminator,
    Encoder,
    Flow,
    SemiFlowConfig,
    count_parameters,
)
from semiflow.detector.models.semiflow_nll import SemiFlowNLLDetector

torch.set_num_threads(1)

TINY = SemiFlowConfig(length=256, enc_channels=(4, 8, 8, 16), latent_channels=8,
                      dec_channels=(16, 8, 8, 4), flow_blocks=3, flow_hidden=32,
                      cls_channels=8, cls_hidden=(16,), batch_size=32, epochs=(3, 3, 3),
                      patience=5)


def tiny_rows(n: int, seed: int = 0) -> np.ndarray:
    """Header-like rows: a fixed prefix with a few varying bytes, zero padding after."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, TINY.length), np.uint8)
    X[:, :20] = [0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6] + [0] * 10
    X[:, 2:4] = rng.integers(0, 255, (n, 2))
    X[:, 60:64] = rng.integers(0, 4, (n, 4))
    X[:, 120:120 + 40] = rng.integers(97, 123, (n, 40))   # ascii-ish payload
    return X


def test_small_config_shapes():
    cfg = SemiFlowConfig.small()
    x = torch.rand(3, 1, cfg.length)
    e = Encoder(cfg)(x)
    assert e.shape == (3, cfg.latent_channels, cfg.latent_length())
    assert Decoder(cfg)(e).shape == x.shape
    assert Discriminator(cfg)(x).shape == (3,)
    assert Classifier(cfg)(e).shape == (3, 2)
    z, logdet = Flow(cfg)(e.flatten(1))
    assert z.shape == (3, cfg.latent_dim) and logdet.shape == (3,)
    rec = Decoder(cfg)(e).detach()
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0   # matches the [0, 1] inputs


def test_paper_config_shapes_and_inference_size():
    cfg = SemiFlowConfig.paper()
    assert (cfg.latent_channels, cfg.latent_length()) == (70, 49)
    assert cfg.flow_blocks == 8
    enc, cls = Encoder(cfg), Classifier(cfg)
    assert enc(torch.rand(2, 1, 1600)).shape == (2, 70, 49)
    # The paper's inference network (encoder + classifier) has about 3.9M parameters.
    assert 3.8e6 < count_parameters(enc, cls) < 4.0e6
    # One flow block's subnet is d/2 -> d -> d with d = 3430 (the reference's ~17.6M/block).
    block = CouplingBlock(cfg.latent_dim, cfg.flow_hidden, cfg.flow_clamp, 0)
    assert 17.5e6 < count_parameters(block.subnet) < 17.8e6


def _perturbed_flow(dim: int, blocks: int = 4) -> Flow:
    cfg = SemiFlowConfig(length=256, enc_channels=(4, 8, 8, 16), latent_channels=1,
                         flow_blocks=blocks, flow_hidden=16)
    flow = Flow(cfg)
    # Replace the latent size and move every parameter away from its (near-identity) init.
    flow.blocks = torch.nn.ModuleList(CouplingBlock(dim, 16, 1.5, i) for i in range(blocks))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return flow.double()


def test_flow_inverse_round_trip():
    flow = _perturbed_flow(dim=101)
    x = torch.randn(64, 101, dtype=torch.float64) * 3
    z, _ = flow(x)
    assert not torch.allclose(z, x, atol=1e-2)           # the flow does something
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)
    assert torch.allclose(flow(flow.inverse(z))[0], z, atol=1e-4)
    # The model's own float32 flow, as trained, on latent-scale inputs.
    flow32 = Flow(TINY).eval()
    x32 = torch.randn(64, TINY.latent_dim)
    with torch.no_grad():
        assert torch.allclose(flow32.inverse(flow32(x32)[0]), x32, atol=1e-4)


def test_flow_logdet_matches_jacobian():
    flow = _perturbed_flow(dim=7, blocks=3)
    x = torch.randn(1, 7, dtype=torch.float64)
    _, logdet = flow(x)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], x[0])
    assert abs(float(torch.linalg.slogdet(jac)[1]) - float(logdet[0].detach())) < 1e-8


def test_losses_decrease_on_tiny_dataset():
    X = tiny_rows(256)
    det = SemiFlowDetector(TINY, random_state=1).fit(X, tiny_rows(64, seed=1))
    hist = det.history_
    for stage in ("reconstruction", "flow", "classifier"):
        losses = [h["train_loss"] for h in hist if h["stage"] == stage]
        assert len(losses) == 3, stage
        assert losses[-1] < losses[0], (stage, losses)
    cls = [h for h in hist if h["stage"] == "classifier"]
    # held-out normal vs fresh pseudo-anomalies; the default noise mixture reaches down to
    # sigma = 0.05, pseudo-anomalies nearly on top of normal ones, so far from 1.0 but well
    # above chance (0.5)
    assert cls[-1]["val_pseudo_auroc"] > 0.75


def test_flow_nll_score_option():
    X, Xv = tiny_rows(128), tiny_rows(32, seed=3)
    a = SemiFlowDetector(TINY, epochs=1, random_state=5).fit(X, Xv)
    b = SemiFlowDetector(TINY, epochs=1, random_state=5, score="flow-nll").fit(X, Xv)
    test = np.concatenate([tiny_rows(20, seed=9), np.random.default_rng(0).integers(
        0, 256, (20, TINY.length)).astype(np.uint8)])
    s = b.anomaly_score(test)
    assert s.dtype == np.float64 and np.isfinite(s).all() and s.std() > 0
    with torch.no_grad():                       # = the stage-2 training loss, per row
        z, logdet = b.flow_(b._latent(torch.from_numpy(test)).flatten(1))
        nll = float(Flow.nll(z, logdet))
    assert abs(s.mean() + 0.5 * np.log(2 * np.pi) - nll) < 1e-4
    c = SemiFlowNLLDetector(TINY, epochs=1, random_state=5).fit(X, Xv)   # the same, by class
    np.testing.assert_array_equal(c.anomaly_score(test), s)
    np.testing.assert_array_equal(a.anomaly_probability(test), b.anomaly_probability(test))
    with pytest.raises(ValueError, match="unknown score"):
        SemiFlowDetector(TINY, score="radius").fit(X, Xv)


def test_noise_scales_fixed_or_log_uniform():
    det = SemiFlowDetector(TINY, epochs=1, random_state=0).fit(tiny_rows(64), tiny_rows(16, 1))
    sig = det._noise_scales(20000, det._gen(7)).flatten().numpy()
    lo, hi = TINY.noise_sigma, TINY.noise_sigma_max
    assert lo < hi and sig.min() >= lo * (1 - 1e-6) and sig.max() <= hi * (1 + 1e-6)
    logs = (np.log(sig) - np.log(lo)) / (np.log(hi) - np.log(lo))   # uniform on [0, 1]
    assert abs(logs.mean() - 0.5) < 0.02 and abs(np.median(sig) - np.sqrt(lo * hi)) < 0.02
    det.config_ = SemiFlowConfig.from_dict({**TINY.to_dict(), "noise_sigma": 2.0,
                                            "noise_sigma_max": 0.0})
    assert det._noise_scales(5, det._gen(7)) == 2.0     # the paper's fixed-sigma mode
    e = det._latent(torch.from_numpy(tiny_rows(8)))
    fake = det.pseudo_anomalies(e, det._gen(8))
    assert fake.shape == e.shape and torch.isfinite(fake).all() and not torch.equal(fake, e)


def test_scores_reproducible_and_api():
    X, Xv = tiny_rows(128), tiny_rows(32, seed=3)
    a = SemiFlowDetector(TINY, epochs=1, random_state=5).fit(X, Xv)
    b = SemiFlowDetector(TINY, epochs=1, random_state=5).fit(X, Xv)
    test = tiny_rows(20, seed=9)
    sa = a.anomaly_score(test)
    assert sa.shape == (20,) and sa.dtype == np.float64 and np.isfinite(sa).all()
    p = a.anomaly_probability(test)                 # log-odds -> P(anomalous), same order
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-sa)), rtol=1e-12)
    assert (np.diff(p[np.argsort(sa)]) >= 0).all()
    np.testing.assert_array_equal(sa, b.anomaly_score(test))
    np.testing.assert_array_equal(a.score_samples(test), -sa)
    assert a.encode(test).shape == (20, TINY.latent_dim)
    assert a.reconstruction_error(test).shape == (20,)
    with pytest.raises(ValueError, match="shape"):
        a.anomaly_score(np.zeros((2, 100), np.uint8))
    with pytest.raises(ValueError, match="not fitted"):
        SemiFlowDetector(TINY).anomaly_score(test)


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    X, Xv = tiny_rows(96), tiny_rows(32, seed=2)
    cfg = SemiFlowConfig.from_dict({**TINY.to_dict(), "epochs": [2, 2, 2]})
    full = SemiFlowDetector(cfg, random_state=3).fit(X, Xv)

    calls = {"n": 0}
    original = SemiFlowDetector._epoch_flow

    def crash_second_flow_epoch(self, Xt, epoch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, Xt, epoch)

    ckpt = tmp_path / "ck.pt"
    monkeypatch.setattr(SemiFlowDetector, "_epoch_flow", crash_second_flow_epoch)
    with pytest.raises(KeyboardInterrupt):
        SemiFlowDetector(cfg, random_state=3, checkpoint=ckpt).fit(X, Xv)
    monkeypatch.setattr(SemiFlowDetector, "_epoch_flow", original)
    assert ckpt.exists()
    resumed = SemiFlowDetector(cfg, random_state=3, checkpoint=ckpt, resume=True).fit(X, Xv)
    test = tiny_rows(16, seed=7)
    np.testing.assert_allclose(resumed.anomaly_score(test), full.anomaly_score(test),
                               rtol=1e-6, atol=1e-9)
    assert [h["epoch"] for h in resumed.history_] == [h["epoch"] for h in full.history_]
