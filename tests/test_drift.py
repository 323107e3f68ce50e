"""Drift signals on the shipped lab sample: the same traffic is stable, a changed mix is not."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from semiflow.cli import main
from semiflow.detector.lifecycle.drift import DriftMonitor, DriftReference, psi
from semiflow.detector.scoring import load_scorer
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.evaluate_lab import score_store_rows

BUNDLED = Path(str(resources.files("semiflow") / "data" / "model"))
SAMPLE = Path(str(resources.files("semiflow") / "data" / "lab-sample"))


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    ref = np.array([50.0, 30, 20])
    assert psi(ref, ref * 7) == pytest.approx(0.0, abs=1e-9)
    assert 0 < psi(ref, [45, 33, 22]) < psi(ref, [20, 30, 50]) < psi(ref, [0, 0, 100])
    assert np.isnan(psi(ref, [0, 0, 0]))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("drift") / "s.flows"
    assert main(["extract", str(SAMPLE / "capture.pcap.gz"), "--conn-labels",
                 str(SAMPLE / "labels.conn.log.gz"), "-l", "256", "-o", str(out), "-q"]) == 0
    st = FlowStore.open(out)
    scorer = load_scorer(BUNDLED, device="cpu")

    def data(rows):
        return (np.asarray(st.samples.rows(rows))[:, :8, :256],
                st.flows["n_selected"].to_numpy()[rows], score_store_rows(scorer, st, rows))
    return st.flows, data


def judge(ref: DriftReference, parts) -> object:
    m = DriftMonitor(ref, window_s=60.0, min_flows=100)
    reports = []
    for t, (x, n, s) in enumerate(parts):
        reports += m.update(float(t) * 10, x, n, s)
    last = m.flush()
    return reports + ([last] if last else [])


def test_same_traffic_is_stable_changed_mix_and_attacks_drift(sample, tmp_path):
    flows, data = sample
    benign = np.flatnonzero((flows["label"] == "normal").to_numpy())
    benign = benign[np.argsort(flows["ts"].to_numpy()[benign], kind="stable")]
    ref = DriftReference.build(*data(benign[::2]))
    ref.save(tmp_path)
    again = DriftReference.load(tmp_path)
    assert again.services == ref.services and again.flows == ref.flows > 600
    # the other half, fed in 4 batches inside one 60 s window: nothing drifted
    other = benign[1::2]
    [rep] = judge(again, [data(p) for p in np.array_split(other, 4)])
    assert rep.flows == len(other) and rep.drifted == [], rep.psi
    # no DNS any more (a shifted share of services): the service mix drifts
    tcp = other[(flows["proto"].to_numpy()[other] != "udp")]
    [rep] = judge(again, [data(tcp)])
    assert "service" in rep.drifted
    # attack traffic: the score distribution drifts
    attack = np.flatnonzero((flows["label"] == "anomalous").to_numpy())
    [rep] = judge(again, [data(attack)])
    assert "score" in rep.drifted and rep.psi["score"] > 1.0


def test_windows_close_on_time_and_small_windows_are_not_judged(sample):
    flows, data = sample
    benign = np.flatnonzero((flows["label"] == "normal").to_numpy())
    ref = DriftReference.build(*data(benign))
    m = DriftMonitor(ref, window_s=60.0, min_flows=100)
    x, n, s = data(benign[:300])
    assert m.update(0.0, x, n, s) == []
    [closed] = m.update(61.0, x[:10], n[:10], s[:10])       # the first window closes
    assert closed.flows == 300 and closed.start == 0.0 and closed.end == 61.0
    assert m.flush() is None                                  # 10 flows: too few to judge


def test_training_writes_the_reference_into_the_artifact():
    ref = DriftReference.load(BUNDLED)
    assert ref is not None and ref.flows >= 1000 and len(ref.score_edges) == 9
    assert set(ref.counts) >= {"score", "service", "unscored", "payload_bytes"}
