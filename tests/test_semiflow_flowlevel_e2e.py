"""Flow-level SemiFlow end to end: extract (selection "all") -> fit -> artifact -> `semiflow
score` writes Zeek logs in which every flow, handshake-only ones included, has a score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from semiflow.cli import main as cli_main
from semiflow.detector.artifact import save_flow_artifact
from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import FlowNetConfig
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.threshold import calibrate_threshold
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.training.extract import extract

torch.set_num_threads(1)
CFG = FlowNetConfig(length=128, k=8, byte_channels=(4, 8, 8), packet_dim=8, hidden=32,
                    latent_dim=4, flow_blocks=2, flow_hidden=16, epochs=(2, 2, 1),
                    min_service_flows=3)


def test_flow_level_artifact_scores_captures(corpus_dir, tmp_path):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m = m[(m["source"] == "ntop/nDPI") & (m["label"] == "normal")
          & m["flows"].between(2, 25)].sort_values("file")
    files = [str(corpus_dir / f) for f in m["file"] if (corpus_dir / f).is_file()][:12]
    assert len(files) >= 6
    spec = FlowSampleSpec(k=8, l=128, selection="all")
    extract(files[:-2], tmp_path / "train.flows", spec)
    store = FlowStore.open(tmp_path / "train.flows")
    X = np.asarray(store.samples)[store.flows["n_selected"].to_numpy() > 0]
    det = FlowSemiFlowDetector(CFG, random_state=0).fit(X)
    thr = calibrate_threshold(det.anomaly_score(X), 1e-2, "flow")
    model = save_flow_artifact(tmp_path / "model", det, spec, thr)
    out = tmp_path / "out"
    assert cli_main(["score", *files[-2:], "--model", str(model), "-o", str(out),
                     "--device", "cpu", "-q"]) == 0
    log = read_zeek_log(out / "semiflow.log")
    assert len(log) > 0 and (log["status"] == "scored").all()   # selection all: no no_payload
    assert log["score"].notna().all()
    assert set(log["verdict"]) <= {"normal", "anomalous"}
