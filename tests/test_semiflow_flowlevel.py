"""Flow-level SemiFlow: header metadata by meaning, services, fit/score, artifact round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semiflow.detector.artifact import META_FILE, load_artifact, save_flow_artifact
from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import (
    FlowNetConfig,
    learn_services,
    packet_meta,
    service_index,
    service_keys,
)
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.scoring import load_scorer
from semiflow.detector.threshold import calibrate_threshold

torch.set_num_threads(1)
TINY = FlowNetConfig(length=128, k=4, byte_channels=(4, 8, 8), packet_dim=8, hidden=32,
                     latent_dim=4, flow_blocks=2, flow_hidden=16, cls_hidden=(8,),
                     epochs=(4, 4, 2), min_service_flows=5, batch_size=32)
SPEC = FlowSampleSpec(k=4, l=128, selection="all")
SYN, SYNACK, ACK, PSHACK = 0x02, 0x12, 0x10, 0x18


def row(sport, dport, flags, payload=b"", proto=6):
    r = np.zeros(128, np.uint8)
    n = 40 + len(payload)
    r[:10] = [0x45, 0, n >> 8, n & 255, 0, 0, 0x40, 0, 64, proto]
    r[60:64] = [sport >> 8, sport & 255, dport >> 8, dport & 255]
    r[72] = 0x50
    r[73] = flags
    r[120:120 + len(payload)] = np.frombuffer(payload[:8], np.uint8)
    return r


def http_flow(rng, port=80):
    c = int(rng.integers(40000, 60000))
    body = b"GET /" + bytes(rng.integers(97, 123, 3).astype(np.uint8))
    return np.stack([row(c, port, SYN), row(port, c, SYNACK), row(c, port, ACK),
                     row(c, port, PSHACK, body)])


def scan_flow(rng, port):
    c = int(rng.integers(40000, 60000))
    return np.stack([row(c, port, SYN), row(port, c, 0x14), np.zeros(128, np.uint8),
                     np.zeros(128, np.uint8)])


def flows(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([http_flow(rng) for _ in range(n)])


def test_packet_meta_reads_headers_by_meaning():
    x = flows(1)
    m = packet_meta(x)[0]
    assert m.shape == (4, 14)
    assert m[:, 0].tolist() == [1, 1, 1, 1]                     # present
    assert m[:, 1].tolist() == [0, 1, 0, 0]                     # direction from the ports
    assert m[3, 2] > m[0, 2] == pytest.approx(np.log2(41) / 16)  # log IP length
    assert m[:, 3].tolist() == [1, 1, 1, 1] and m[:, 4:6].sum() == 0   # tcp
    assert m[0, 6:].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]        # SYN bit
    assert m[1, 6:].tolist() == [0, 1, 0, 0, 1, 0, 0, 0]        # SYN + ACK bits
    empty = packet_meta(scan_flow(np.random.default_rng(0), 22)[None])[0]
    assert empty[2:].abs().sum() == 0                           # empty slots are all zero


def test_services_learnt_and_unseen_ones_are_other():
    x = flows(30)
    keys = service_keys(x)
    assert (keys == 6 * 65536 + 80).all()
    cfg = TINY
    assert learn_services(x, cfg) == (6 * 65536 + 80,)
    scan = np.stack([scan_flow(np.random.default_rng(1), 22)])
    assert service_index(service_keys(scan), (6 * 65536 + 80,)).tolist() == [1]


def test_fit_scores_odd_flows_higher_and_is_reproducible():
    X, Xv = flows(192), flows(48, seed=1)
    det = FlowSemiFlowDetector(TINY, random_state=0).fit(X, Xv)
    stages = [h["stage"] for h in det.history_]
    assert "reconstruction" in stages and "flow" in stages and "classifier" not in stages
    rec = [h["train_loss"] for h in det.history_ if h["stage"] == "reconstruction"]
    assert rec[-1] < rec[0]
    rng = np.random.default_rng(5)
    odd = np.stack([scan_flow(rng, p) for p in range(1, 21)])
    normal = flows(20, seed=7)
    s_n, s_o = det.anomaly_score(normal), det.anomaly_score(odd)
    assert s_n.dtype == np.float64 and np.isfinite(s_n).all()
    assert np.median(s_o) > np.max(s_n)                      # every scan above every normal
    again = FlowSemiFlowDetector(TINY, random_state=0).fit(X, Xv)
    np.testing.assert_allclose(again.anomaly_score(normal), s_n, rtol=1e-5)
    parts = det.score_parts(normal)
    assert set(parts) == {"nll", "rec", "nll+rec"}
    with pytest.raises(ValueError, match="flow samples"):
        det.anomaly_score(normal[:, :, :100].reshape(20, -1))
    with pytest.raises(ValueError, match="unknown score"):
        FlowSemiFlowDetector(TINY, score="radius").fit(X, Xv)


def test_classifier_score_trains_the_third_stage():
    det = FlowSemiFlowDetector(TINY, score="classifier", epochs=1, random_state=0).fit(
        flows(64), flows(16, seed=1))
    assert [h["stage"] for h in det.history_] == ["reconstruction", "flow", "classifier"]
    assert np.isfinite(det.anomaly_score(flows(5, seed=2))).all()


def test_flow_artifact_round_trip_and_scorer(tmp_path):
    det = FlowSemiFlowDetector(TINY, epochs=2, random_state=0).fit(flows(96), flows(32, 1))
    calib = det.anomaly_score(flows(200, seed=3))
    thr = calibrate_threshold(calib, 1e-2, "flow")
    path = save_flow_artifact(tmp_path / "m", det, SPEC, thr, {"note": "test"})
    meta = json.loads((path / META_FILE).read_text())
    assert meta["format_version"] == 2 and meta["level"] == "flow"
    art = load_artifact(path)
    assert art.level == "flow" and art.score_kind == "nll+rec" and art.config == det.config_
    scorer = load_scorer(path, device="cpu")
    samples = np.concatenate([flows(3, seed=9), scan_flow(np.random.default_rng(2), 7)[None]])
    n_sel = np.array([4, 0, 4, 2])
    got = scorer.score_flows(samples, n_sel)
    want = det.anomaly_score(samples)
    assert np.isnan(got[1])                                   # nothing selected: unscored
    np.testing.assert_allclose(got[[0, 2, 3]], want[[0, 2, 3]], rtol=1e-4, atol=1e-3)
    assert scorer.verdicts(got)[1] == "unscored" and scorer.threshold == thr.value
    np.testing.assert_allclose(scorer.score_flows(samples[:, :3], np.array([3, 3, 3, 2]))[:3],
                               det.anomaly_score(np.concatenate(
                                   [samples[:3, :3], np.zeros((3, 1, 128), np.uint8)], 1)),
                               rtol=1e-4, atol=1e-3)           # fewer than K slots: padded
    with pytest.raises(ValueError, match="flow-level"):
        scorer.score_packets(samples[0])


def test_flow_artifact_errors_are_one_clear_line(tmp_path):
    det = FlowSemiFlowDetector(TINY, epochs=1, random_state=0).fit(flows(64), flows(16, 1))
    path = save_flow_artifact(tmp_path / "m", det, SPEC)
    meta = json.loads((path / META_FILE).read_text())
    with pytest.raises(ValueError, match="K=4"):
        save_flow_artifact(tmp_path / "bad", det, FlowSampleSpec(k=8, l=128))
    (path / META_FILE).write_text(json.dumps({**meta, "score": "entropy"}))
    with pytest.raises(ValueError, match="score kind"):
        load_artifact(path)
    (path / META_FILE).write_text(json.dumps({**meta, "config": {**meta["config"],
                                                                 "latent_dim": 5}}))
    with pytest.raises(ValueError, match="does not fit"):
        load_artifact(path)
    (path / META_FILE).write_text(json.dumps({**meta, "spec": {**meta["spec"], "k": 8}}))
    with pytest.raises(ValueError, match="K=4"):
        load_artifact(path)
    (path / META_FILE).write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(ValueError, match="format version 3"):
        load_artifact(path)
