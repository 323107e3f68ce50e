"""Artifact round trip, scorer behaviour, and clear errors for corrupt or mismatched artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semiflow.detector.artifact import (
    META_FILE,
    WEIGHTS_FILE,
    load_artifact,
    save_artifact,
    sha256_file,
)
from semiflow.detector.models.semiflow import flow_nll_scores, packet_scores
from semiflow.detector.models.semiflow_model import Classifier, Encoder, Flow, SemiFlowConfig
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.scoring import load_scorer
from semiflow.detector.threshold import calibrate_threshold

torch.set_num_threads(1)
CFG = SemiFlowConfig(length=128, enc_channels=(4, 8, 8), latent_channels=4, cls_channels=4,
                     cls_hidden=(8,))
SPEC = FlowSampleSpec(k=4, l=128)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    enc, cls = Encoder(CFG).eval(), Classifier(CFG).eval()
    with torch.no_grad():       # non-trivial BatchNorm statistics must survive the trip
        for m in cls.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    thr = calibrate_threshold(np.linspace(0, 1, 5000), 1e-3)
    path = save_artifact(tmp_path / "model", enc, cls, CFG, SPEC, thr, "max",
                         {"data_files": [{"file": "x.pcap", "sha256": "00"}]})
    return path, enc, cls, thr


def rows(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 128)).astype(np.uint8)


def test_round_trip_scores_identically(saved):
    path, enc, cls, thr = saved
    art = load_artifact(path)
    assert art.config == CFG and art.spec == SPEC and art.threshold == thr
    assert art.aggregate == "max" and art.provenance["data_files"][0]["file"] == "x.pcap"
    scorer = load_scorer(path, device="cpu")
    assert scorer.spec == SPEC and scorer.threshold == thr.value
    assert scorer.model_name == "semiflow" and scorer.model_version.startswith("semiflow-")
    X = rows(50)
    expected = packet_scores(enc, cls, X, torch.device("cpu"))
    np.testing.assert_allclose(scorer.score_packets(X), expected, rtol=1e-6)


def test_scores_are_log_odds_and_older_probability_artifacts_still_load(saved):
    path, enc, cls, _ = saved
    meta = json.loads((path / META_FILE).read_text())
    assert meta["score"] == "log-odds"
    X = rows(40, seed=4)
    logit = load_scorer(path, device="cpu").score_packets(X)
    with torch.no_grad():
        raw = cls(enc(torch.from_numpy(X).float().div(255).unsqueeze(1)))
    np.testing.assert_allclose(logit, (raw[:, 1] - raw[:, 0]).double().numpy(), atol=1e-5)
    del meta["score"]            # as written before the log-odds change: P(anomalous) scores
    (path / META_FILE).write_text(json.dumps(meta))
    old = load_scorer(path, device="cpu")
    assert old.score_kind == "probability"
    np.testing.assert_allclose(old.score_packets(X), 1 / (1 + np.exp(-logit)), rtol=1e-9)
    meta["score"] = "entropy"
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="score kind"):
        load_artifact(path)


def test_flow_nll_artifact_stores_the_flow_and_scores_with_it(tmp_path):
    torch.manual_seed(1)
    enc, cls, flow = Encoder(CFG).eval(), Classifier(CFG).eval(), Flow(CFG).eval()
    with torch.no_grad():            # a non-identity flow, so a lost weight would show
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(ValueError, match="flow"):
        save_artifact(tmp_path / "bad", enc, cls, CFG, SPEC, score="flow-nll")
    path = save_artifact(tmp_path / "model", enc, cls, CFG, SPEC, None, "max",
                         score="flow-nll", flow=flow)
    scorer = load_scorer(path, device="cpu")
    assert scorer.score_kind == "flow-nll" and np.isnan(scorer.threshold)
    X = rows(30, seed=2)
    want = flow_nll_scores(enc, flow, X, torch.device("cpu"))
    np.testing.assert_allclose(scorer.score_packets(X), want, rtol=1e-6)
    assert not np.allclose(want, packet_scores(enc, cls, X, torch.device("cpu")))
    plain = save_artifact(tmp_path / "plain", enc, cls, CFG, SPEC)     # no flow stored
    meta = json.loads((plain / META_FILE).read_text())
    meta["score"] = "flow-nll"
    (plain / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="flow"):
        load_artifact(plain)


def test_score_flows_aggregates_and_leaves_empty_flows_unscored(saved):
    path, enc, cls, _ = saved
    scorer = load_scorer(path, device="cpu")
    samples = rows(12).reshape(3, 4, 128)
    n_sel = np.array([2, 0, 4])
    flow = scorer.score_flows(samples, n_sel)
    pk = packet_scores(enc, cls, samples.reshape(12, 128), torch.device("cpu")).reshape(3, 4)
    assert flow[0] == pytest.approx(pk[0, :2].max())
    assert np.isnan(flow[1])                               # unscored, never "normal"
    assert flow[2] == pytest.approx(pk[2].max())
    v = scorer.verdicts(np.array([np.nan, scorer.threshold, scorer.threshold + 1e-9]))
    assert list(v) == ["unscored", "normal", "anomalous"]
    with pytest.raises(ValueError, match="spec"):
        scorer.score_flows(rows(10).reshape(1, 10, 128), np.array([1]))   # K=10 > spec's 4


def test_weights_are_safetensors_not_pickle(saved):
    path = saved[0]
    head = (path / WEIGHTS_FILE).read_bytes()[:16]
    assert not head.startswith(b"\x80")                    # no pickle protocol marker
    meta = json.loads((path / META_FILE).read_text())
    assert meta["weights"]["sha256"] == sha256_file(path / WEIGHTS_FILE)
    assert meta["spec"]["k"] == 4 and meta["threshold"]["target_fpr"] == 1e-3


def _rewrite_meta(path, **changes):
    meta = json.loads((path / META_FILE).read_text())
    for k, v in changes.items():
        meta[k] = v
    (path / META_FILE).write_text(json.dumps(meta))


def test_corrupt_weights(saved):
    path = saved[0]
    w = path / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_artifact(path)


def test_truncated_weights_with_matching_hash(saved):
    path = saved[0]
    w = path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:40])
    _rewrite_meta(path, weights={"file": WEIGHTS_FILE, "sha256": sha256_file(w)})
    with pytest.raises(ValueError, match="cannot read"):
        load_artifact(path)


def test_config_that_does_not_fit_the_weights(saved):
    path = saved[0]
    meta = json.loads((path / META_FILE).read_text())
    _rewrite_meta(path, config={**meta["config"], "latent_channels": 5})
    with pytest.raises(ValueError, match="does not fit"):
        load_artifact(path)


def test_scorer_that_fails_as_it_is_built_is_a_clear_error(saved, monkeypatch):
    """On CUDA the GPU path warms up every batch shape while the scorer is built: a model
    that cannot run fails there, and says so in one line like the one-sample check."""
    import semiflow.detector.scoring as scoring

    def broken(self, *a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    monkeypatch.setattr(scoring.FlowScorer, "__init__", broken)
    with pytest.raises(ValueError, match="cannot score a sample of its own spec.*illegal") as e:
        load_scorer(saved[0])
    assert "\n" not in str(e.value)


def test_spec_mismatch_and_bad_files(saved, tmp_path):
    path = saved[0]
    meta = json.loads((path / META_FILE).read_text())
    _rewrite_meta(path, spec={**meta["spec"], "l": 1600})
    with pytest.raises(ValueError, match="does not match"):
        load_artifact(path)
    _rewrite_meta(path, spec=meta["spec"], format_version=99)
    with pytest.raises(ValueError, match="format version"):
        load_artifact(path)
    (path / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_artifact(path)
    (path / META_FILE).unlink()
    with pytest.raises(ValueError, match="missing"):
        load_scorer(path)
    with pytest.raises(ValueError, match="not a directory"):
        load_artifact(tmp_path / "nowhere")
