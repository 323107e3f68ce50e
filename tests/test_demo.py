"""`python -m semiflow.demo` on the shipped lab sample: the per-family table (every family),
the benign false-positive line and explained top flows are printed. Uses the bundled model
when it is flow-level, else a small one trained here on the sample's earlier benign flows."""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from semiflow.cli_score import default_model_dir
from semiflow.demo import lab_sample, main

torch.set_num_threads(1)


def _small_model(tmp_path):
    from semiflow.detector.artifact import save_flow_artifact
    from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
    from semiflow.detector.models.semiflow_flownet import FlowNetConfig
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.detector.threshold import calibrate_threshold
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels

    cap, labels = lab_sample()
    spec = FlowSampleSpec(k=8, l=128, selection="all")
    extract([str(cap)], tmp_path / "flows", spec, conn_labels=ConnLogLabels([labels]))
    st = FlowStore.open(tmp_path / "flows")
    ben = st.flows[st.flows["label"] == "normal"].sort_values("ts")
    X = np.asarray(st.samples[ben.index.to_numpy()[: len(ben) // 2]])
    cfg = FlowNetConfig(length=128, byte_channels=(4, 8, 8), packet_dim=8, hidden=64,
                        latent_dim=8, flow_blocks=2, flow_hidden=32, epochs=(6, 4, 1),
                        min_service_flows=5)
    det = FlowSemiFlowDetector(cfg, random_state=0, device="cpu").fit(X[:-120], X[-120:])
    thr = calibrate_threshold(det.anomaly_score(X[-120:]), 1e-2, "flow")
    return save_flow_artifact(tmp_path / "model", det, spec, thr)


def test_demo_prints_family_table(tmp_path, capsys):
    bundled = default_model_dir()
    meta = json.loads((bundled / "semiflow-model.json").read_text())
    model = bundled if meta.get("level") == "flow" else _small_model(tmp_path)
    assert main(["-o", str(tmp_path / "out"), "--model", str(model), "--top", "3"]) == 0
    out = capsys.readouterr().out
    families = ["dir_bruteforce", "dns_tunnel", "http_exfiltration", "icmp_tunnel",
                "nmap_syn_scan", "sql_injection", "ssh_bruteforce", "syn_flood"]
    for fam in families:
        assert re.search(rf"^\s+{fam}\s+\d+\s+\d+\s+\d+\s+[\d.]+\s+recall$", out, re.M), fam
    assert re.search(r"^\s+all attacks\s+1258\s", out, re.M)
    assert re.search(r"benign: \d+ false positives of 1388 flows \(FP rate [\d.]+\)", out)
    assert "calibrated threshold" in out
    assert (tmp_path / "out" / "semiflow.log").exists()
    assert (tmp_path / "out" / "notice.log").exists()
    if "top flagged flows" in out and "explain flow score" not in out:
        raise AssertionError("flagged flows printed without explanations")
