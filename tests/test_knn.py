"""kNN flow-level baseline: the distance it claims, separation, and evaluate's flow-level path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semiflow.detector.baselines.knn import KNNDetector, flow_vectors
from semiflow.detector.registry import FLOW_DETECTORS, detector_class, make_detector, parse_names


def _flows(rng, n: int, k: int = 6, l: int = 300) -> np.ndarray:
    """Normal flows: a fixed 'protocol header' per packet plus low-valued noise; the last
    packets of some flows are missing (zeros), as in real flow samples."""
    head = np.random.default_rng(7).integers(0, 256, (k, 40))
    X = rng.integers(0, 20, (n, k, l))
    X[:, :, :40] = head
    X[rng.random(n) < 0.3, 3:] = 0
    return X.astype(np.uint8)


def test_score_is_mean_distance_to_three_nearest():
    rng = np.random.default_rng(0)
    train, test = _flows(rng, 50), _flows(rng, 5)
    det = KNNDetector().fit(train)
    V, Q = flow_vectors(train, 4, 256), flow_vectors(test, 4, 256)
    assert V.shape == (50, 1024) and V.max() <= 1.0
    D = np.sqrt(((Q[:, None, :].astype(np.float64) - V[None]) ** 2).sum(-1))
    D.sort(1)
    np.testing.assert_allclose(det.anomaly_score(test), D[:, :3].mean(1), rtol=1e-4)
    kth = KNNDetector(aggregate="kth").fit(train).anomaly_score(test)
    np.testing.assert_allclose(kth, D[:, 2], rtol=1e-4)
    np.testing.assert_allclose(det.score_samples(test), -det.anomaly_score(test))


def test_only_first_packets_and_bytes_count():
    rng = np.random.default_rng(1)
    train = _flows(rng, 40)
    det = KNNDetector().fit(train)
    a = train[:3].copy()
    b = a.copy()
    b[:, 4:, :] = 255          # packets past the 4th
    b[:, :, 256:] = 255        # bytes past the 256th
    np.testing.assert_allclose(det.anomaly_score(a), det.anomaly_score(b))
    # shorter samples than n_packets x n_bytes are zero-padded, not rejected
    short = KNNDetector(n_packets=8, n_bytes=512).fit(train[:, :2, :100])
    assert short.anomaly_score(train[:2, :2, :100]).shape == (2,)


def test_unseen_bytes_score_above_held_out_normal():
    rng = np.random.default_rng(2)
    X = _flows(rng, 260)
    train, held = X[:200], X[200:]
    novel = rng.integers(0, 256, (60, 6, 300)).astype(np.uint8)   # bytes never seen
    det = make_detector("knn", seed=0, max_train=150).fit(train)
    s_norm, s_anom = det.anomaly_score(held), det.anomaly_score(novel)
    assert s_anom.min() > s_norm.max()
    assert det.nn_.n_samples_fit_ == 150          # max_train subsample, seeded


def test_registry_and_errors():
    assert detector_class("knn") is KNNDetector and "knn" in FLOW_DETECTORS
    assert parse_names("iforest,knn") == ["iforest", "knn"]
    assert make_detector("knn", seed=3).seed == 3
    with pytest.raises(ValueError, match="flow-level"):
        KNNDetector().fit(np.zeros((10, 64), np.uint8))      # packet rows are refused
    with pytest.raises(RuntimeError):
        KNNDetector().anomaly_score(np.zeros((2, 4, 256), np.uint8))
    with pytest.raises(ValueError, match="kitsune_eval"):
        detector_class("kitsune")                            # capture-level: own entry point


def test_evaluate_split_runs_flow_level_detector(tmp_path):
    """evaluate_split hands knn flow samples; flows without a selected packet stay unscored."""
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.evaluate import Split, load_flow_data
    from semiflow.training.evaluate_run import evaluate_split, flow_samples
    from semiflow.training.extract import extract
    from tests.packets import ether, ip4, tcp, udp, write_pcap

    frames, t = [], 1000.0
    for i in range(30):                       # normal: DNS-like UDP with fixed payload
        t += 1.0
        frames.append((t, bytes(ether(ip4("10.0.0.1", "10.0.0.2", udp(4000 + i, 53, b"\x01\x00"
                                                                          b"query-A" * 4), 17)))))
    for i in range(5):                        # anomalous: random bytes to a new port
        t += 1.0
        pay = np.random.default_rng(i).integers(0, 256, 200).astype(np.uint8).tobytes()
        frames.append((t, bytes(ether(ip4("10.0.0.9", "10.0.0.2", udp(5000 + i, 6666, pay),
                                          17)))))
    t += 1.0                                  # a bare SYN: no payload, nothing selected
    frames.append((t, bytes(ether(ip4("10.0.0.7", "10.0.0.2", tcp(999, 80, flags=2), 6)))))
    write_pcap(tmp_path / "c.pcap", frames)
    extract([str(tmp_path / "c.pcap")], tmp_path / "x",
            FlowSampleSpec(k=4, l=300, selection="payload"))
    data = load_flow_data([tmp_path / "x"])
    f = data.flows
    anom = (f["resp_p"] == 6666).to_numpy()
    syn = (f["n_selected"] == 0).to_numpy()
    normal = np.flatnonzero(~anom & ~syn)
    test = np.r_[normal[20:], np.flatnonzero(anom), np.flatnonzero(syn)]
    y = np.r_[np.zeros(len(normal) - 20), np.ones(anom.sum() + syn.sum())].astype(int)
    split = Split("attacks", "pooled", 0, normal[:15], normal[15:20], test, y)
    data.flows = f.assign(label=np.where(anom | syn, "anomalous", "normal"),
                          source_file=pd.Series(np.arange(len(f))).astype(str))
    X, has, n_pk = flow_samples(data, test, 4, 256)
    assert X.shape == (len(test), 4, 256) and has.sum() == len(test) - 1 and n_pk == has.sum()
    rec = evaluate_split(data, split, ["knn", "pca"], {"pca": {"n_components": 2}})
    knn = next(r for r in rec if r["detector"] == "knn")
    assert knn["unscored"] == {"normal": 0, "anomalous": 1}   # the SYN flow
    assert knn["metrics"]["auroc"] == 1.0 and knn["train_packets"] == 15
