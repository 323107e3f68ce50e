"""`semiflow logs train|score|evaluate` end to end on a slice of a real labelled conn.log."""

from __future__ import annotations

import json

import pytest
import torch

from semiflow.cli import main
from semiflow.plugin.zeeklog import read_zeek_log

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sliced(zeek_logs_dir, tmp_path_factory):
    """Header + the first 1500 and last 1000 flows of 008 (benign and malicious dyad-hours)."""
    src = zeek_logs_dir / "008-zeek-mixed" / "data" / "conn.log.labeled"
    lines = src.read_text().splitlines(keepends=True)
    head = [x for x in lines[:10] if x.startswith("#")]
    data = [x for x in lines if not x.startswith("#")]
    d = tmp_path_factory.mktemp("logs")
    train, test = d / "train.log", d / "test.log"
    train.write_text("".join(head + data[:1500]))
    test.write_text("".join(head + data[-1000:] + ["broken\tline\n"]))
    return train, test


def test_train_score_evaluate(sliced, tmp_path, capsys):
    train, test = sliced
    model = tmp_path / "model"
    assert main(["logs", "train", str(train), "-o", str(model), "--tokenizer", "port",
                 "--epochs", "2", "-q"]) == 0
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()
    out = capsys.readouterr().out
    assert "threshold" in out

    assert main(["logs", "score", str(test), "--model", str(model), "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 malformed line" in out
    dyad = read_zeek_log(tmp_path / "o" / "semiflow_dyad.log")
    text = (tmp_path / "o" / "semiflow_dyad.log").read_text()
    for h in ("#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
              "#unset_field\t-", "#path\tsemiflow_dyad", "#open\t", "#fields\tts\thost_a",
              "#types\ttime\taddr", "#close\t"):
        assert h in text
    assert len(dyad) > 10 and dyad["n_flows"].sum() == 1000
    assert set(dyad["verdict"]) <= {"anomalous", "normal"}
    assert all(len(u) >= 1 for u in dyad["top_uids"])
    flows = read_zeek_log(test)
    assert set(u for us in dyad["top_uids"] for u in us) <= set(flows["uid"])
    notices = read_zeek_log(tmp_path / "o" / "notice.log")
    n_anom = int((dyad["verdict"] == "anomalous").sum())
    assert len(notices) == n_anom > 0
    assert set(notices["note"]) == {"SemiFlow::Anomalous_Dyad_Hour"}

    assert main(["logs", "score", str(test), "--model", str(model), "-o", str(tmp_path / "j"),
                 "--json", "-q"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "j" / "semiflow_dyad.log").read_text().splitlines()]
    assert len(rows) == len(dyad) and {"ts", "host_a", "host_b", "score", "threshold",
                                       "verdict", "top_tokens", "top_uids"} <= set(rows[0])
    capsys.readouterr()

    assert main(["logs", "evaluate", str(test), "--model", str(model), "--json", "-q"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["malicious"] > 0 and 0.0 <= m["auroc"] <= 1.0
    assert m["dyad_hours"] == len(dyad)


def test_bad_model_and_missing_log_are_one_line_errors(sliced, tmp_path, capsys):
    train, _ = sliced
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("not json")
    assert main(["logs", "score", str(train), "--model", str(tmp_path / "bad"), "-q"]) == 2
    assert "not a valid semiflow log model" in capsys.readouterr().err
    assert main(["logs", "train", str(tmp_path / "missing.log"), "-o", str(tmp_path / "m"),
                 "-q"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_messages_threads_and_base_rate(sliced, tmp_path, capsys):
    """The calibration line counts dyad-hours as dyad-hours (flows apart); --threads caps
    torch; evaluate prints the base rate (what precision flagging everything would get)."""
    import re
    train, test = sliced
    before = torch.get_num_threads()
    try:
        assert main(["logs", "train", str(train), "-o", str(tmp_path / "m"), "--tokenizer",
                     "port", "--epochs", "1", "--threads", "1", "-q"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    m = re.search(r"on (\d+) held-out normal dyad-hours, (\d+) flows", out)
    assert m, out
    assert 0 < int(m.group(1)) < int(m.group(2))  # several flows per dyad-hour here
    assert main(["logs", "evaluate", str(test), "--model", str(tmp_path / "m"), "-q"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"dyad-hours (\d+) \(malicious (\d+), base rate ([0-9.]+)", out)
    assert m, out
    assert float(m.group(3)) == pytest.approx(int(m.group(2)) / int(m.group(1)), abs=1e-4)
    assert main(["logs", "train", str(train), "-o", str(tmp_path / "m2"), "--threads", "0",
                 "-q"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_train_with_the_fpr_counted_in_flows(sliced, tmp_path, capsys):
    """--fpr-unit flow: the windows above the threshold hold <= target of the held-out flows,
    and the model remembers the unit; with `upper` it is one clear error line."""
    from semiflow.detector.logs.detector import LogLMDetector

    train, _ = sliced
    model = tmp_path / "m"
    assert main(["logs", "train", str(train), "-o", str(model), "--tokenizer", "port",
                 "--epochs", "1", "--fpr-unit", "flow", "--target-fpr", "0.05", "-q"]) == 0
    det = LogLMDetector.load(model)
    assert det.fpr_unit == "flow"
    capsys.readouterr()
    assert main(["logs", "train", str(train), "-o", str(tmp_path / "u"), "--tokenizer", "port",
                 "--epochs", "1", "--fpr-unit", "flow", "--calibration", "upper", "-q"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantile" in err[0]
