"""End to end on a small slice of the corpus: extract -> train -> score -> Zeek logs.

The real, checkable claim: flows of labelled-anomalous captures (never seen in training)
score higher on average than flows of held-out normal captures.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from semiflow.cli import main as cli_main
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.scoring import load_scorer
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.plugin.zeeklog_writer import ZeekLogWriter
from semiflow.training.extract import extract
from semiflow.training.labels import Manifest

torch.set_num_threads(1)
NORMAL_FAMILIES = ("benign-web", "benign-dns", "benign-mail")
ANOMALOUS_FAMILIES = ("malformed", "webattack", "malware-c2")


def _pick(corpus_dir, label, families, n, lo, hi):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m = m[(m["source"] == "ntop/nDPI") & (m["label"] == label) & m["family"].isin(families)
          & m["flows"].between(lo, hi)].sort_values("file")
    files = [str(corpus_dir / f) for f in m["file"] if (corpus_dir / f).is_file()]
    return files[:n]


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    normal = _pick(corpus_dir, "normal", NORMAL_FAMILIES, 14, 2, 25)
    anomalous = _pick(corpus_dir, "anomalous", ANOMALOUS_FAMILIES, 8, 1, 40)
    assert len(normal) >= 7 and len(anomalous) >= 3
    manifest = Manifest(corpus_dir / "manifest.csv")
    spec = FlowSampleSpec(selection="payload")   # the packet-level path
    extract(normal, tmp / "normal.flows", spec, manifest=manifest)
    extract(anomalous, tmp / "anomalous.flows", spec, manifest=manifest)
    rc = cli_main(["train", str(tmp / "normal.flows"), str(tmp / "anomalous.flows"),
                   "-o", str(tmp / "model"), "--epochs", "3", "--device", "cpu", "--seed", "1",
                   "--max-flows-per-file", "20", "--level", "packet", "-q"])
    assert rc == 0
    return tmp, normal, anomalous


def _flow_scores(scorer, store_dir, files=None):
    store = FlowStore.open(store_dir)
    f = store.flows
    keep = np.ones(len(f), bool) if files is None else f["source_file"].isin(files).to_numpy()
    scores = scorer.score_flows(np.asarray(store.samples)[keep],
                                f["n_selected"].to_numpy()[keep])
    return scores[~np.isnan(scores)]


def test_anomalies_score_higher_than_held_out_normal(trained):
    tmp, _, _ = trained
    scorer = load_scorer(tmp / "model", device="cpu")
    prov = json.loads((tmp / "model" / "provenance.json").read_text())
    held_out = [d["file"] for part in ("val", "calib") for d in prov["data_files"][part]]
    train_files = {d["file"] for d in prov["data_files"]["train"]}
    assert held_out and not (set(held_out) & train_files)      # split by capture file
    assert all(d["sha256"] and len(d["sha256"]) == 64 for d in prov["data_files"]["train"])
    normal = _flow_scores(scorer, tmp / "normal.flows", held_out)
    anomalous = _flow_scores(scorer, tmp / "anomalous.flows")
    assert len(normal) >= 3 and len(anomalous) >= 3
    assert anomalous.mean() > normal.mean(), (anomalous.mean(), normal.mean())
    # the anomalies were reported on, never fitted
    assert prov["anomalous_files_for_report_only"]
    assert not set(prov["anomalous_files_for_report_only"]) & train_files
    assert prov["metrics"]["threshold"]["target_fpr"] == 1e-3
    assert "anomaly_report" in prov["metrics"]


def test_train_with_flow_nll_score(trained, tmp_path):
    tmp, _, _ = trained
    rc = cli_main(["train", str(tmp / "normal.flows"), "-o", str(tmp_path / "m"), "--epochs",
                   "1", "--device", "cpu", "--seed", "1", "--max-flows-per-file", "5",
                   "--score", "flow-nll", "--level", "packet", "-q"])
    assert rc == 0
    meta = json.loads((tmp_path / "m" / "semiflow-model.json").read_text())
    assert meta["score"] == "flow-nll"
    scorer = load_scorer(tmp_path / "m", device="cpu")
    scores = _flow_scores(scorer, tmp / "normal.flows")
    assert len(scores) and np.isfinite(scores).all()
    assert scorer.threshold == pytest.approx(meta["threshold"]["value"])


@pytest.mark.parametrize("as_json", [False, True])
def test_score_writes_zeek_logs(trained, tmp_path, capsys, as_json):
    tmp, normal, anomalous = trained
    out = tmp_path / "out"
    args = ["score", normal[0], anomalous[0], "--model", str(tmp / "model"), "-o", str(out),
            "--device", "cpu", "-q"] + (["--json"] if as_json else [])
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "flows:" in printed and "semiflow.log" in printed
    log = read_zeek_log(out / "semiflow.log")
    notices = read_zeek_log(out / "notice.log")
    if not as_json:
        head = (out / "semiflow.log").read_text().splitlines()
        assert head[0] == "#separator \\x09" and head[4] == "#path\tsemiflow"
        assert head[6].split("\t")[1:4] == ["ts", "uid", "id.orig_h"]
        assert head[-1].startswith("#close\t")
        nhead = (out / "notice.log").read_text().splitlines()
        assert "note\tmsg\tsub\tsrc\tdst\tp\tn\tpeer_descr\tactions\temail_dest" in nhead[6]
    assert len(log) > 0
    assert set(log["status"]) <= {"scored", "no_payload", "unparsed"}
    scored = log["status"] == "scored"
    assert log.loc[scored, "score"].notna().all() and log.loc[~scored, "score"].isna().all()
    flagged = (log["verdict"] == "anomalous").sum()
    assert flagged == len(notices)
    if len(notices):
        assert set(notices["note"]) == {"SemiFlow::Anomalous_Flow"}
        assert set(notices["uid"]) <= set(log["uid"])


def test_zeeklog_writer_escapes_and_round_trips(tmp_path):
    fields = [("ts", "time"), ("s", "string"), ("n", "count"), ("d", "double"),
              ("tags", "set[string]"), ("ok", "bool")]
    with ZeekLogWriter(tmp_path / "x.log", "x", fields, open_time=0) as w:
        w.write({"ts": 1.5, "s": "a\tb\\c", "n": 3, "d": 0.25, "tags": ["p", "q"], "ok": True})
        w.write({"ts": 2.0, "s": "", "n": None, "d": float("nan"), "tags": [], "ok": False})
        w.write({"ts": 3.0, "s": "-"})
        with pytest.raises(ValueError, match="unknown field"):
            w.write({"nope": 1})
    lines = (tmp_path / "x.log").read_text().splitlines()
    assert lines[8] == "1.500000\ta\\x09b\\x5cc\t3\t0.250000\tp,q\tT"
    assert lines[9] == "2.000000\t(empty)\t-\t-\t(empty)\tF"
    assert lines[10].split("\t")[1] == "\\x2d"       # a literal "-" is not the unset marker
    df = read_zeek_log(tmp_path / "x.log")
    assert list(df["n"].isna()) == [False, True, True] and df["d"].iloc[0] == 0.25
    with ZeekLogWriter(tmp_path / "y.log", "y", fields, json=True) as w:
        w.write({"ts": 1.5, "s": "é", "n": None, "tags": ["p"], "ok": True})
    obj = json.loads((tmp_path / "y.log").read_text())
    assert obj == {"ts": 1.5, "s": "é", "tags": ["p"], "ok": True}
