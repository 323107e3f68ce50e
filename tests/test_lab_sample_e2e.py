"""End to end on the shipped lab-made sample (semiflow/data/lab-sample: benign traffic, then
eight attack families, per-flow labels): `semiflow train` with its defaults fits the benign
flows only (split by time: the earliest 70% train, the latest 30% validate and calibrate),
then the model scores the attack flows against the held-out benign flows it never fitted. A
real, checkable claim: attack flows outrank benign flows, far beyond what a random scorer
reaches.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from semiflow.cli import main as cli_main
from semiflow.detector.models.semiflow_inference import auroc
from semiflow.detector.scoring import load_scorer
from semiflow.plugin.flowstore import FlowStore

SAMPLE = Path(str(resources.files("semiflow") / "data" / "lab-sample"))


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labsample")
    assert cli_main(["extract", str(SAMPLE / "capture.pcap.gz"), "--conn-labels",
                     str(SAMPLE / "labels.conn.log.gz"), "-o", str(tmp / "sample.flows"),
                     "-q"]) == 0
    assert cli_main(["train", str(tmp / "sample.flows"), "-o", str(tmp / "model"),
                     "--device", "cpu", "--epochs", "8", "--seed", "3", "-q"]) == 0
    return tmp


def test_trained_on_benign_flows_with_the_default_level(sample_run):
    meta = json.loads((sample_run / "model" / "semiflow-model.json").read_text())
    assert meta.get("level") == "flow"
    assert meta["spec"]["selection"] == "all"
    prov = json.loads((sample_run / "model" / "provenance.json").read_text())
    assert prov["split"] == "auto" and prov["parts"]["train"]["flows"] >= 600
    assert prov["parts"]["train"]["ts_max"] <= prov["parts"]["val"]["ts_min"]
    # the drift reference (detector/lifecycle/drift.py) from the held-out benign flows
    ref = json.loads((sample_run / "model" / "reference.json").read_text())
    assert ref["flows"] == prov["parts"]["val"]["flows"] + prov["parts"]["calib"]["flows"]


def test_attack_flows_outrank_held_out_benign_flows(sample_run):
    store = FlowStore.open(sample_run / "sample.flows")
    flows = store.flows
    prov = json.loads((sample_run / "model" / "provenance.json").read_text())
    held_out = ((flows["label"] == "normal") &
                (flows["ts"] >= prov["parts"]["val"]["ts_min"])).to_numpy()
    attack = (flows["label"] == "anomalous").to_numpy()
    assert attack.sum() >= 1000 and held_out.sum() >= 300
    scorer = load_scorer(sample_run / "model", device="cpu")
    n_sel = flows["n_selected"].to_numpy().astype(np.int64)
    scores = scorer.score_flows(np.asarray(store.samples[:]), n_sel)
    assert np.isfinite(scores[attack | held_out]).all()   # selection "all": all judged
    y = np.r_[np.zeros(held_out.sum()), np.ones(attack.sum())]
    a = auroc(y, np.r_[scores[held_out], scores[attack]])
    # A random scorer sits at 0.5 +- ~0.02 with these counts; demand far more.
    assert a > 0.9, a
    fams = flows["family"].to_numpy()
    for fam in ("nmap_syn_scan", "syn_flood", "dns_tunnel"):
        m = attack & (fams == fam)
        assert auroc(np.r_[np.zeros(held_out.sum()), np.ones(m.sum())],
                     np.r_[scores[held_out], scores[m]]) > 0.9, fam
