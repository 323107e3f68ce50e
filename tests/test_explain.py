"""Explanations: shapes, completeness, field names, and a real check of faithfulness —
zeroing the top-attributed bytes lowers a packet's anomaly score more than zeroing as many
random bytes of the same packet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiflow.cli import main as cli_main
from semiflow.detector.artifact import save_artifact
from semiflow.detector.explain.packet_level import (
    attribute,
    explain_flow,
    mask_bytes,
    nearest_normal,
    plot_explanation,
)
from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_model import SemiFlowConfig
from semiflow.detector.sample.fields import field_map, field_of, offset_names, row_layout
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.scoring import load_scorer
from semiflow.detector.threshold import Threshold
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.training.extract import extract
from semiflow.training.labels import Manifest

torch.set_num_threads(1)
NORMAL = ["alicloud.pcap", "chrome.pcap", "firefox.pcap", "http_ipv6.pcap", "ocsp.pcapng",
          "ookla.pcap", "pluralsight.pcap", "no_sni.pcap"]
ANOMALOUS = ["WebattackSQLinj.pcap", "crynet.pcap", "emotet.pcap", "malware.pcap", "xss.pcap"]


@pytest.fixture(scope="module")
def fitted(corpus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    nd = corpus_dir / "pcaps" / "ndpi"
    m = Manifest(corpus_dir / "manifest.csv")
    spec = FlowSampleSpec()
    extract([str(nd / f) for f in NORMAL], tmp / "normal.flows", spec, manifest=m)
    extract([str(nd / f) for f in ANOMALOUS], tmp / "anom.flows", spec, manifest=m)
    st = FlowStore.open(tmp / "normal.flows")
    X, _ = st.samples.packet_rows(np.arange(len(st.flows)))
    det = SemiFlowDetector(SemiFlowConfig(epochs=(3, 3, 8), noise_sigma=0.5), device="cpu",
                           random_state=0).fit(X[:800])
    s = det.anomaly_score(X)
    save_artifact(tmp / "model", det.encoder_, det.classifier_, det.config_, spec,
                  threshold=Threshold(float(np.quantile(s, 0.9)), 0.1, 0.1, len(s)))
    return tmp, load_scorer(tmp / "model", device="cpu")


def test_field_map_names_fixed_offsets():
    tcp4 = np.zeros(1600, np.uint8)
    tcp4[0], tcp4[9], tcp4[120] = 0x45, 6, 0x47
    assert row_layout(tcp4) == (4, 6)
    assert field_of(tcp4, 8) == "ipv4.ttl" and field_of(tcp4, 12) == "ipv4.src"
    assert field_of(tcp4, 62) == "tcp.dport" and field_of(tcp4, 73) == "tcp.offset_flags"
    assert field_of(tcp4, 125) == "payload[+5]"
    udp6 = np.zeros(1600, np.uint8)
    udp6[0], udp6[6] = 0x60, 17
    assert field_of(udp6, 7) == "ipv6.hop_limit" and field_of(udp6, 66) == "udp.checksum"
    names = offset_names(udp6)
    assert len(names) == 1600 and names[60] == "udp.sport" and names[119] == "udp.padding"
    spans = field_map(udp6)
    assert spans[-1].name == "payload" and spans[-1].start == 120
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))        # no overlap
    assert row_layout(np.zeros(1600, np.uint8)) == (0, 0)


def test_explanation_shapes_and_completeness(fitted):
    tmp, scorer = fitted
    st = FlowStore.open(tmp / "anom.flows")
    i = int(np.flatnonzero(st.flows["n_selected"].to_numpy() >= 2)[0])
    n = int(st.flows["n_selected"].iloc[i])
    e = explain_flow(scorer, st.samples[i], n, st.flows["uid"].iloc[i],
                     directions=st.pkt_dir[i])
    assert e.rows.shape == (n, 1600) and e.attributions.shape == (n, 1600)
    np.testing.assert_allclose(e.packet_scores, scorer.score_packets(e.rows), atol=1e-4)
    # integrated gradients: attributions sum to score - baseline score (midpoint rule)
    gap = e.packet_scores - e.baseline_score
    assert (np.abs(e.attributions.sum(1) - gap) <= 0.02 + 0.05 * np.abs(gap)).all(), \
        (e.attributions.sum(1), gap)
    assert 0 <= e.driver < n and e.driver == int(np.argmax(e.packet_scores))
    assert (e.attributions[e.rows == 0] == 0).all()     # zero bytes = baseline: no credit
    tops = e.field_totals()
    assert {t["field"] for t in tops} >= {"ipv4.ttl", "tcp.dport"} or \
        {t["field"] for t in tops} >= {"ipv4.ttl", "udp.dport"}
    assert e.summary().startswith("explain pkt")
    d = e.to_dict()
    assert d["uid"] == e.uid and len(d["packet_scores"]) == n
    gxi, s, _ = attribute(scorer.encoder, scorer.classifier, e.rows, "grad-x-input")
    assert gxi.shape == e.attributions.shape
    fig = plot_explanation(e, tmp / "heat.png")
    assert (tmp / "heat.png").stat().st_size > 5000 and fig is not None
    near = nearest_normal(scorer, e, FlowStore.open(tmp / "normal.flows").samples.packet_rows(
        np.arange(20))[0], [{"uid": str(k)} for k in range(10_000)], k=3)
    assert len(near) == 3 and near[0]["distance"] <= near[-1]["distance"]


def test_masking_top_bytes_lowers_score_more_than_random(fitted):
    tmp, scorer = fitted
    st = FlowStore.open(tmp / "anom.flows")
    rows, _ = st.samples.packet_rows(np.flatnonzero(st.flows["n_selected"].to_numpy() > 0))
    rng = np.random.default_rng(0)
    rows = rows[rng.choice(len(rows), min(24, len(rows)), replace=False)]
    attr, f0, _ = attribute(scorer.encoder, scorer.classifier, rows)
    k, wins, d_top, d_rand = 16, 0, [], []
    for r in range(len(rows)):
        nz = np.flatnonzero(rows[r])
        if len(nz) < 4 * k:
            continue
        top = np.argsort(-attr[r])[:k]
        masked_top = mask_bytes(rows[r:r + 1], np.stack([np.zeros(k, int), top], 1))
        rand = [mask_bytes(rows[r:r + 1], np.stack([np.zeros(k, int),
                                                    rng.choice(nz, k, replace=False)], 1))
                for _ in range(5)]
        drop_top = f0[r] - scorer.score_packets(masked_top)[0]
        drop_rand = np.mean(f0[r] - scorer.score_packets(np.concatenate(rand)))
        d_top.append(drop_top)
        d_rand.append(drop_rand)
        wins += drop_top > drop_rand
    assert len(d_top) >= 8
    assert np.mean(d_top) > np.mean(d_rand) and np.mean(d_top) > 0
    assert wins >= 0.75 * len(d_top), (wins, len(d_top))


def test_explain_cli_and_score_explain(fitted, corpus_dir, capsys):
    tmp, scorer = fitted
    st = FlowStore.open(tmp / "anom.flows")
    uid = st.flows.loc[st.flows["n_selected"] > 0, "uid"].iloc[0]
    png = tmp / "cli.png"
    assert cli_main(["explain", "--uid", uid, "--model", str(tmp / "model"), "--extract",
                     str(tmp / "anom.flows"), "--png", str(png), "--normal",
                     str(tmp / "normal.flows")]) == 0
    out = capsys.readouterr().out
    assert f"flow {uid}" in out and "top fields" in out and "nearest normal" in out
    assert png.stat().st_size > 5000
    assert cli_main(["explain", "--uid", "Cnope", "--model", str(tmp / "model"), "--extract",
                     str(tmp / "anom.flows")]) == 2
    cap = str(corpus_dir / "pcaps" / "ndpi" / "emotet.pcap")
    assert cli_main(["score", cap, "--model", str(tmp / "model"), "-o", str(tmp / "s1"),
                     "--explain", "-q"]) == 0
    notices = read_zeek_log(tmp / "s1" / "notice.log")
    assert len(notices) >= 1
    assert notices["sub"].str.startswith("explain pkt").all()
    assert cli_main(["score", cap, "--model", str(tmp / "model"), "-o", str(tmp / "s2"),
                     "-q"]) == 0
    assert read_zeek_log(tmp / "s2" / "notice.log")["sub"].str.startswith("model=").all()
