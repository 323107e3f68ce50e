"""`semiflow models`: immutable versions, promote/rollback with history, diff on real flows."""

from __future__ import annotations

import json
import os
import shutil
import stat
from importlib import resources
from pathlib import Path

import pytest

from semiflow.cli import main
from semiflow.model_store import ModelStore

BUNDLED = Path(str(resources.files("semiflow") / "data" / "model"))
SAMPLE = Path(str(resources.files("semiflow") / "data" / "lab-sample"))


def variant(tmp: Path, name: str, threshold_factor: float) -> Path:
    """The bundled model under another version name with its threshold moved: another
    legitimate artifact (same weights, another operating point)."""
    d = tmp / name
    shutil.copytree(BUNDLED, d)
    meta = json.loads((d / "semiflow-model.json").read_text())
    meta["model_version"] = name
    meta["threshold"]["value"] *= threshold_factor
    (d / "semiflow-model.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def sample_flows(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "sample.flows"
    assert main(["extract", str(SAMPLE / "capture.pcap.gz"), "-l", "256", "-o", str(out),
                 "-q"]) == 0  # the bundled model's spec
    return out


def test_add_is_immutable_and_idempotent(tmp_path, capsys):
    store_dir = tmp_path / "store"
    assert main(["models", "add", str(store_dir), str(BUNDLED), "--reason", "first"]) == 0
    store = ModelStore(store_dir)
    [v] = store.versions()
    assert v.level == "flow" and v.threshold is not None
    assert main(["models", "add", str(store_dir), str(BUNDLED)]) == 0  # same content: no-op
    assert len(store.versions()) == 1 and len(store.history()) == 1
    files = list(v.path.iterdir())
    assert files and all(not (f.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
                         for f in files)
    # same name, other content: refused
    clash = variant(tmp_path, v.name, 2.0)
    capsys.readouterr()
    assert main(["models", "add", str(store_dir), str(clash)]) == 2
    assert "exists with other content" in capsys.readouterr().err


def test_promote_rollback_history_and_tamper(tmp_path, capsys):
    store_dir = tmp_path / "store"
    v1 = ModelStore.open_or_create(store_dir).add(BUNDLED, reason="initial")
    v2 = ModelStore(store_dir).add(variant(tmp_path, "semiflow-test-v2", 1.5), reason="retrain")
    assert main(["models", "promote", str(store_dir), v1, "--reason", "go live",
                 "--who", "alice"]) == 0
    assert main(["models", "promote", str(store_dir), v2, "--reason", "weekly retrain"]) == 0
    store = ModelStore(store_dir)
    assert store.current() == v2 and store.current_path() == store.path(v2)
    capsys.readouterr()
    assert main(["models", "list", str(store_dir)]) == 0
    listing = capsys.readouterr().out
    assert f"* {v2}" in listing and f"  {v1}" in listing
    assert main(["models", "rollback", str(store_dir), "--reason", "too many alerts"]) == 0
    assert store.current() == v1
    capsys.readouterr()
    assert main(["models", "rollback", str(store_dir), "--reason", "again"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    hist = store.history()
    assert [h["action"] for h in hist] == ["add", "add", "promote", "promote", "rollback"]
    assert hist[2]["who"] == "alice" and hist[2]["reason"] == "go live"
    assert hist[4]["version"] == v1 and hist[4]["previous"] == v2
    assert all(h["ts"] > 0 for h in hist)
    assert main(["models", "show", str(store_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v1 and shown["current"] and len(shown["history"]) == 3

    # a version edited after it was added is refused, with one line
    f = store.path(v2) / "semiflow-model.json"
    os.chmod(store.path(v2), 0o755)
    os.chmod(f, 0o644)
    f.write_text(f.read_text().replace('"level"', '"level" ', 1))
    assert main(["models", "promote", str(store_dir), v2, "--reason", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed after it was added" in err[0]
    assert store.current() == v1


def test_diff_scores_both_on_the_same_flows(tmp_path, sample_flows, capsys):
    store = ModelStore.open_or_create(tmp_path / "store")
    v1 = store.add(BUNDLED)
    v2 = store.add(variant(tmp_path, "semiflow-test-strict", 1.3))
    store.promote(v1, "live")
    assert main(["models", "diff", str(store.root), "current", v2, "--data", str(sample_flows),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["a"] == v1 and d["b"] == v2 and d["flows"] > 1000
    assert d["spearman"] == pytest.approx(1.0)             # same weights, same ranking
    assert d["threshold_b"] == pytest.approx(1.3 * d["threshold_a"])
    assert 0 < d["flagged_b"] <= d["flagged_a"] and d["only_b"] == 0
    assert sum(b["flagged_a"] for b in d["per_bucket"]) == d["flagged_a"]
    assert main(["models", "diff", str(store.root), v1, v2, "--data", str(sample_flows)]) == 0
    assert "Jaccard" in capsys.readouterr().out


def test_world_writable_store_is_refused(tmp_path, capsys):
    store_dir = tmp_path / "store"
    ModelStore.open_or_create(store_dir)
    os.chmod(store_dir, 0o777)
    assert main(["models", "list", str(store_dir)]) == 2
    assert "world-writable" in capsys.readouterr().err

