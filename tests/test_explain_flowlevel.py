"""Flow-level explanations: completeness, and a planted anomaly in one known header field
(an unseen TCP flag combination) is ranked first or among the top 3 items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiflow.detector.artifact import save_flow_artifact
from semiflow.detector.explain.flow_level import FlowLevelExplanation
from semiflow.detector.explain.packet_level import explain_flow, plot_explanation
from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import FlowNetConfig
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.scoring import load_scorer
from semiflow.detector.threshold import calibrate_threshold

torch.set_num_threads(1)
CFG = FlowNetConfig(length=128, k=4, byte_channels=(4, 8, 8), packet_dim=8, hidden=32,
                    latent_dim=4, flow_blocks=2, flow_hidden=16, epochs=(8, 6, 1),
                    min_service_flows=5, batch_size=32)
SPEC = FlowSampleSpec(k=4, l=128, selection="all")
SYN, SYNACK, ACK, PSHACK = 0x02, 0x12, 0x10, 0x18


def row(sport, dport, flags, payload=b""):
    r = np.zeros(128, np.uint8)
    n = 40 + len(payload)
    r[:10] = [0x45, 0, n >> 8, n & 255, 0, 0, 0x40, 0, 64, 6]
    r[60:64] = [sport >> 8, sport & 255, dport >> 8, dport & 255]
    r[72], r[73] = 0x50, flags
    r[120:120 + len(payload)] = np.frombuffer(payload[:8], np.uint8)
    return r


def http_flow(rng):
    c = int(rng.integers(40000, 60000))
    body = b"GET /" + bytes(rng.integers(97, 123, 3).astype(np.uint8))
    return np.stack([row(c, 80, SYN), row(80, c, SYNACK), row(c, 80, ACK),
                     row(c, 80, PSHACK, body)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = np.stack([http_flow(rng) for _ in range(400)])
    det = FlowSemiFlowDetector(CFG, random_state=0, device="cpu").fit(X)
    thr = calibrate_threshold(det.anomaly_score(X), 1e-2, "flow")
    path = save_flow_artifact(tmp_path_factory.mktemp("fx") / "model", det, SPEC, thr)
    return path, load_scorer(path, device="cpu")


def test_planted_tcp_flags_ranked_top3_and_complete(model):
    _, scorer = model
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(5):
        x = http_flow(rng)
        x[2, 73] = 0x29                 # FIN|PSH|URG on the third packet: never seen
        s = scorer.score_flows(x[None], np.array([4]))[0]
        e = explain_flow(scorer, x, 4, f"t{trial}")
        assert isinstance(e, FlowLevelExplanation)
        assert abs(e.score - s) < 1e-3 * max(1.0, abs(s))
        total = (e.attributions.sum() + e.meta_attributions.sum() + e.service_attribution)
        gap = e.score - e.baseline_score
        assert abs(total - gap) <= 0.05 * abs(gap) + 0.05, (total, gap)   # completeness
        top = [(d["packet"], d["field"]) for d in e.field_totals()[:3]]
        hits += any(p == 2 and f in ("tcp.offset_flags", "meta.tcp_flags") for p, f in top)
    assert hits >= 4, hits
    assert e.summary().startswith("explain flow score")
    assert "pkt3" in e.summary()


def test_flow_level_plot_dict_and_absent_packets(model, tmp_path):
    path, scorer = model
    x = http_flow(np.random.default_rng(3))
    x[2, 73] = 0x29
    e = explain_flow(scorer, x, 4, "C1")
    assert plot_explanation(e, tmp_path / "h.png") is not None
    assert (tmp_path / "h.png").stat().st_size > 5000
    d = e.to_dict()
    assert d["level"] == "flow" and len(d["packet_attributions"]) == 4
    short = explain_flow(scorer, x[:2], 2, "C2")     # two packets: two absent slots
    assert any(t["field"] == "absent" for t in short.field_totals())
    assert short.n_selected == 2
