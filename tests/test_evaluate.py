"""Evaluation: metrics against independent computations, file-level benchmark splits, e2e."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from semiflow.training.evaluate import (
    calibrate_threshold,
    check_split,
    flow_metrics,
    group_metrics,
    make_splits,
    tpr_at_fpr,
)

torch.set_num_threads(1)


def _known_case():
    """1000 negatives at 0..999; positives at known places relative to them."""
    neg = np.arange(1000, dtype=float)
    pos = np.r_[np.full(30, 1000.5), np.full(20, 998.5), np.full(25, 991.5), np.full(25, 100.5)]
    y = np.r_[np.zeros(1000), np.ones(100)].astype(int)
    return y, np.r_[neg, pos], neg, pos


def test_auroc_and_tpr_against_hand_computation():
    y, s, neg, pos = _known_case()
    # AUROC = P(score_pos > score_neg), counted pair by pair (no ties here)
    auroc = np.mean([(p > neg).mean() for p in pos])
    m = flow_metrics(y, s)
    assert m["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert m["auroc"] == pytest.approx((30 + 20 * .999 + 25 * .992 + 25 * .101) / 100)
    # FPR <= 1e-3 allows one negative (999) above the threshold: positives >= 998.5 -> 50%
    assert m["tpr@0.001"] == pytest.approx(0.5)
    # FPR <= 1e-2 allows 10 negatives (990..999): the 991.5 group joins -> 75%
    assert m["tpr@0.01"] == pytest.approx(0.75)
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.3)
    assert m["auprc"] == pytest.approx(average_precision_score(y, s))
    assert (m["n_normal"], m["n_anomalous"]) == (1000, 100)


def test_threshold_metrics_and_calibration():
    y, s, neg, _ = _known_case()
    m = flow_metrics(y, s, threshold=995.0)
    tp, fp = 50, 4                       # positives above 995: 1000.5, 998.5; negatives 996..999
    prec, rec = tp / (tp + fp), tp / 100
    assert m["precision"] == pytest.approx(prec)
    assert m["recall"] == pytest.approx(rec)
    assert m["f1"] == pytest.approx(2 * prec * rec / (prec + rec))
    assert m["fpr"] == pytest.approx(4 / 1000)
    for fpr in (1e-3, 1e-2, 0.1):
        thr = calibrate_threshold(neg, fpr)
        assert (neg > thr).mean() <= fpr
    rng = np.random.default_rng(0)
    held = rng.normal(size=20000)
    thr = calibrate_threshold(held[:10000], 0.01)
    assert abs((held[10000:] > thr).mean() - 0.01) < 0.004   # holds on fresh normal scores
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([np.nan]), 0.01)


def test_one_class_test_set_gives_nan_not_crash():
    m = flow_metrics(np.zeros(5, int), np.arange(5.0), threshold=2.0)
    assert np.isnan(m["auroc"]) and np.isnan(m["tpr@0.001"])
    assert m["fpr"] == pytest.approx(2 / 5)


def test_group_metrics_recall_per_family():
    frame = pd.DataFrame({"family": ["a", "a", "a", "b", "b", "n", "n"],
                          "y": [1, 1, 1, 1, 1, 0, 0], "score": [5, 1, 6, 0, 0, 3, 0]})
    g = group_metrics(frame, "family", threshold=2.0)
    assert g["a"]["recall"] == pytest.approx(2 / 3)
    assert g["b"]["recall"] == 0.0
    assert g["n"]["fpr"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def manifest_flows(corpus_dir):
    """One row per manifest flow (file-level labels): enough to build and check splits."""
    m = pd.read_csv(corpus_dir / "manifest.csv", dtype=str, keep_default_na=False)
    n = m["flows"].astype(int).clip(lower=1)
    f = m.loc[m.index.repeat(n)].reset_index(drop=True)
    return f.rename(columns={"file": "source_file"})[["source_file", "label", "family",
                                                       "source"]]


@pytest.mark.parametrize("bench", ["attacks", "vpn", "malformed"])
@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_by_file(manifest_flows, bench, seed):
    f = manifest_flows
    splits = make_splits(f, bench, seed=seed, cap_per_file=30)
    assert splits[0].fold == "pooled"
    for sp in splits:
        check_split(f, sp)        # raises if a file is in two parts or an anomaly in train/val
        parts = [set(f["source_file"].iloc[p]) for p in (sp.train, sp.val, sp.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (
            parts[1] & parts[2])
        assert len(sp.train) and len(sp.val) and sp.y_test.sum() and (sp.y_test == 0).sum()
        per_file = f.iloc[sp.test].groupby("source_file").size()
        assert per_file.max() <= 30
        anom_rows = f.iloc[sp.test[sp.y_test == 1]]
        train_rows = f.iloc[sp.train]
        if bench == "vpn":
            assert set(f["source"].iloc[np.r_[sp.train, sp.test]]) == {"ntop/nDPI"}
            assert set(anom_rows["family"]) <= {"vpn", "tor"}
            assert not train_rows["family"].isin(["vpn", "tor"]).any()
        elif bench == "malformed":
            assert set(anom_rows["family"]) == {"malformed"}
        else:
            assert "malformed" not in set(anom_rows["family"])
            assert (anom_rows["label"] == "anomalous").all()
        if sp.fold.startswith("loso:"):
            held = sp.fold[5:]
            assert held not in set(train_rows["source"]) | set(f["source"].iloc[sp.val])
            assert set(anom_rows["source"]) == {held}
    if bench == "attacks":
        folds = {s.fold for s in splits}
        assert {"loso:ntop/nDPI", "loso:401trg/detections"} <= folds
    # another seed moves files between parts
    other = make_splits(f, bench, seed=seed + 10, cap_per_file=30)[0]
    assert set(f["source_file"].iloc[other.train]) != set(f["source_file"].iloc[splits[0].train])


def test_unknown_benchmark(manifest_flows):
    with pytest.raises(ValueError, match="unknown benchmark"):
        make_splits(manifest_flows, "nope")


@pytest.fixture(scope="module")
def tiny_extract(corpus_dir, tmp_path_factory):
    """A slice of nDPI: small normal application captures plus a few VPN captures."""
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.extract import extract
    from semiflow.training.labels import Manifest
    m = pd.read_csv(corpus_dir / "manifest.csv", dtype=str, keep_default_na=False)
    m = m[(m["source"] == "ntop/nDPI") & (m["label"] == "normal")]
    m = m[m["packets"].astype(int).between(5, 400)]
    normal = m[~m["family"].isin(["vpn", "tor"])].sort_values("file").head(24)
    vpn = m[m["family"] == "vpn"].sort_values("file").head(5)
    files = [str(corpus_dir / f) for f in pd.concat([normal, vpn])["file"]]
    out = tmp_path_factory.mktemp("tiny") / "flows"
    extract(files, out, FlowSampleSpec(), manifest=Manifest(corpus_dir / "manifest.csv"))
    return out


def test_evaluate_end_to_end(tiny_extract, tmp_path):
    from semiflow.cli import main
    from semiflow.plugin.flowstore import FlowStore
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    rc = main(["evaluate", str(tiny_extract), "--detectors", "iforest,pca", "--benchmark",
               "vpn", "--seeds", "0,1", "--cap-per-file", "10", "--json", str(out_json),
               "--html", str(out_html), "-q"])
    assert rc == 0
    blob = json.loads(out_json.read_text())
    runs = blob["runs"]
    assert {r["detector"] for r in runs} == {"iforest", "pca"}
    assert {r["seed"] for r in runs} == {0, 1}
    flows = FlowStore.open(tiny_extract).flows
    for r in runs:
        m = r["metrics"]
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["auprc"] <= 1.0
        assert m["n_anomalous"] + r["unscored"]["anomalous"] > 0
        # every test flow is either scored or counted unscored, never dropped
        assert (m["n_normal"] + m["n_anomalous"] + r["unscored"]["normal"]
                + r["unscored"]["anomalous"]) == r["test_flows"]
        assert set(r["per_family"]) <= set(flows["family"])
    assert len(blob["summary"]) == 2
    page = out_html.read_text()
    assert page.count("data:image/png;base64,") == 2       # ROC + histograms, one split
    assert "http://" not in page and "https://" not in page


def test_evaluate_unscored_flows_are_counted(tiny_extract):
    """Flows without a sample are reported as unscored, with the right labels."""
    from semiflow.training.evaluate import load_flow_data
    from semiflow.training.evaluate_run import evaluate_split
    data = load_flow_data([tiny_extract])
    split = make_splits(data.flows, "vpn", seed=0, cap_per_file=None)[0]
    rec = evaluate_split(data, split, ["iforest"], {"iforest": {"n_estimators": 20}})[0]
    nsel = data.flows["n_selected"].to_numpy()[split.test]
    y = split.y_test
    assert rec["unscored"] == {"normal": int(((nsel == 0) & (y == 0)).sum()),
                               "anomalous": int(((nsel == 0) & (y == 1)).sum())}
    assert rec["metrics"]["n_normal"] == int(((nsel > 0) & (y == 0)).sum())


def test_evaluate_model_as_is(tiny_extract, tmp_path):
    """--model: a saved artifact (its own threshold) and a joblib baseline, no refitting."""
    from semiflow.cli import main
    from semiflow.detector.artifact import inference_modules, save_artifact
    from semiflow.detector.baselines.classic import IsolationForestDetector, save_detector
    from semiflow.detector.models.semiflow_model import SemiFlowConfig
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.detector.threshold import Threshold
    from semiflow.plugin.flowstore import FlowStore
    spec = FlowStore.open(tiny_extract).spec
    cfg = SemiFlowConfig.small(length=spec.l, enc_channels=(4, 8, 8, 8), latent_channels=4,
                               cls_channels=4, cls_hidden=(8,))
    torch.manual_seed(0)
    enc, cls = inference_modules(cfg)
    art = save_artifact(tmp_path / "model", enc, cls, cfg, spec,
                        Threshold(value=0.5, target_fpr=1e-3, achieved_fpr=0.0, n_normal=10))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tiny_extract), "--model", str(art), "--benchmark", "vpn",
                 "--json", str(out), "-q"]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["detector"] == "model" and run["threshold_from"] == "stored"
    assert run["metrics"]["threshold"] == 0.5 and run["fit_seconds"] == 0.0
    X = np.random.default_rng(0).integers(0, 40, (200, spec.l)).astype(np.uint8)
    save_detector(IsolationForestDetector(n_estimators=10).fit(X), tmp_path / "if.joblib")
    assert main(["evaluate", str(tiny_extract), "--model", str(tmp_path / "if.joblib"),
                 "--benchmark", "vpn", "--json", str(out), "-q"]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["threshold_from"].startswith("validation")
    other = FlowSampleSpec(k=spec.k, l=spec.l, mask=("addresses", "ports"))
    save_artifact(tmp_path / "model2", enc, cls, cfg, other)
    assert main(["evaluate", str(tiny_extract), "--model", str(tmp_path / "model2"),
                 "--benchmark", "vpn", "-q"]) == 2          # mismatched spec: clear error


def test_benchmarks_that_do_not_apply_are_skipped_up_front(tiny_extract, tmp_path, capsys):
    """tiny_extract holds normal and VPN flows only: attacks and malformed cannot be built.
    `--benchmark all` runs vpn, says what it skipped and why, and writes the JSON."""
    from semiflow.cli import main
    out = tmp_path / "r.json"
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", str(tiny_extract), "--detectors", "pca", "--cap-per-file",
                     "10", "--json", str(out), "--threads", "1", "-q"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    text = capsys.readouterr().out
    assert "skipped: benchmark attacks needs" in text and "found" in text
    assert "skipped: benchmark malformed needs" in text
    blob = json.loads(out.read_text())
    assert blob["benchmarks"] == ["vpn"] and set(blob["skipped"]) == {"attacks", "malformed"}
    assert {r["benchmark"] for r in blob["runs"]} == {"vpn"}
    assert main(["evaluate", str(tiny_extract), "--benchmark", "attacks", "--detectors",
                 "pca", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "benchmark attacks needs" in err


@pytest.fixture(scope="module")
def lab_extract(tmp_path_factory):
    """The bundled lab sample, labelled per flow by its conn.log (benign and 8 attacks)."""
    from pathlib import Path

    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels
    data = Path(__file__).resolve().parent.parent / "semiflow" / "data" / "lab-sample"
    out = tmp_path_factory.mktemp("lab") / "flows"
    extract([str(data / "capture.pcap.gz")], out, FlowSampleSpec(),
            conn_labels=ConnLogLabels([data / "labels.conn.log.gz"]))
    return out


def test_evaluate_train_on_one_extraction_test_on_another(tiny_extract, lab_extract, tmp_path,
                                                          capsys):
    from semiflow.cli import main
    from semiflow.plugin.flowstore import FlowStore
    out = tmp_path / "t.json"
    assert main(["evaluate", "--train", str(tiny_extract), "--test", str(lab_extract),
                 "--detectors", "iforest,pca", "--param", "iforest.n_estimators=20",
                 "--json", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "fit on the normal flows of --train" in text and "± " not in text
    blob = json.loads(out.read_text())
    assert blob["benchmarks"] == ["train-test"] and blob["skipped"] == {}
    runs = blob["runs"]
    assert {r["detector"] for r in runs} == {"iforest", "pca"}
    lab = FlowStore.open(lab_extract).flows
    tiny = FlowStore.open(tiny_extract).flows
    n_anom = int((lab["label"] == "anomalous").sum())
    n_norm = int((lab["label"] == "normal").sum())
    for r in runs:
        m, u = r["metrics"], r["unscored"]
        assert (m["n_anomalous"] + u["anomalous"], m["n_normal"] + u["normal"]) == (n_anom,
                                                                                   n_norm)
        assert r["train_flows"] + r["val_flows"] == int((tiny["label"] == "normal").sum())
        assert 0.0 <= m["auroc"] <= 1.0
    assert main(["evaluate", "--train", str(lab_extract), "--test", str(lab_extract),
                 "--detectors", "pca", "-q"]) == 2
    assert "in both --train and --test" in capsys.readouterr().err
    assert main(["evaluate", "--train", str(lab_extract), "--detectors", "pca"]) == 2
    assert "--train and --test go together" in capsys.readouterr().err


def test_one_seed_table_has_plain_values_and_bold_only_against_others():
    from semiflow.training.evaluate_run import markdown_table

    def row(det, auroc, seeds, sd):
        return {"benchmark": "b", "fold": "pooled", "detector": det, "seeds": seeds,
                "auroc_mean": auroc, "auroc_std": sd, "fit_seconds_mean": 1.0}
    one = pd.DataFrame([row("a", 0.9, 1, np.nan)])
    text = markdown_table(one, metrics=("auroc",))
    assert "| b | pooled | a | 0.900 | 1.0 |" in text and "**" not in text
    two = pd.DataFrame([row("a", 0.9, 1, np.nan), row("c", 0.7, 1, np.nan)])
    text = markdown_table(two, metrics=("auroc",))
    assert "**0.900**" in text and "| c | 0.700 |" in text and "±" not in text
    seeds = pd.DataFrame([row("a", 0.9, 3, 0.01), row("c", 0.7, 3, 0.02)])
    assert "**0.900 ± 0.010**" in markdown_table(seeds, metrics=("auroc",))
