"""Models learn a repeating pattern and score a broken one higher; causality; save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from semiflow.detector.logs.detector import LogLMDetector
from semiflow.detector.logs.models import SinusoidalPositions, TransformerBackbone

torch.set_num_threads(1)

PATTERN = [100, 1_000, 100_000]  # protobytes tokens t6, t9, t16


def _conn(n_hours: int, broken: set[int] = frozenset(), start_hour: int = 0,
          n_dyads: int = 4, swapped: set[int] = frozenset()) -> pd.DataFrame:
    """Each dyad-hour: 12 flows cycling PATTERN; in `broken` hours one flow is odd (an
    unseen size), in `swapped` hours one flow is a known size in the wrong place."""
    rows = []
    for h in range(start_hour, start_hour + n_hours):
        for d in range(n_dyads):
            for i in range(12):
                b = PATTERN[(i + 1) % 3] if h in swapped and i == 7 else PATTERN[i % 3]
                bad = h in broken and i == 7
                rows.append({"ts": h * 3600.0 + i * 60 + d, "uid": f"C{h}_{d}_{i}",
                             "id.orig_h": f"10.0.0.{d + 1}", "id.resp_h": "10.0.1.1",
                             "id.orig_p": 40000 + i, "id.resp_p": 443, "proto": "tcp",
                             "orig_bytes": 10_000_000 if bad else b, "resp_bytes": 0,
                             "label": "Malicious" if bad else "Benign"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("model", ["clstm", "transformer"])
def test_lm_scores_a_broken_pattern_higher(model):
    det = LogLMDetector(model=model, epochs=12, batch_size=64, lr=5e-3, window=6,
                        target_fpr=0.05, seed=0,
                        model_kw={"hidden": 16, "embed": 16, "conv": 16} if model == "clstm"
                        else {"dim": 32, "ff": 64})
    det.fit(_conn(10))
    assert det.history_[-1] < det.history_[0]
    test = _conn(2, broken={101}, start_hour=100)
    out = det.score_dyad_hours(test)
    normal, broken = out[out["ts"] == 100 * 3600.0], out[out["ts"] == 101 * 3600.0]
    assert broken["score"].min() > normal["score"].max()
    assert (broken["verdict"] == "anomalous").all()
    assert all(t[0] == "t23" for t in broken["top_tokens"])  # the odd flow is the top token
    assert all(u[0].endswith("_7") for u in broken["top_uids"])
    # a known token out of order: only a model that learned the sequence can tell
    out2 = det.score_dyad_hours(_conn(2, swapped={201}, start_hour=200))
    normal2, swapped = out2[out2["ts"] == 200 * 3600.0], out2[out2["ts"] == 201 * 3600.0]
    assert swapped["score"].min() > normal2["score"].max()
    assert all(u[0].endswith(("_7", "_8")) for u in swapped["top_uids"])  # the swap or after


def test_supervised_classifier_flags_malicious_windows():
    train = _conn(10, broken={2, 4, 6, 8})
    det = LogLMDetector(model="clstm", supervised=True, epochs=8, batch_size=64, lr=5e-3,
                        window=4, seed=0, model_kw={"hidden": 8, "embed": 8, "conv": 8})
    det.fit(train)
    out = det.score_dyad_hours(_conn(2, broken={51}, start_hour=50))
    assert out.loc[out["malicious"], "score"].min() > out.loc[~out["malicious"], "score"].max()


def test_supervised_needs_labels():
    conn = _conn(3).drop(columns=["label"])
    with pytest.raises(ValueError, match="labelled malicious"):
        LogLMDetector(supervised=True, epochs=1).fit(conn)


def test_transformer_is_causal_and_positions_run_along_the_sequence():
    torch.manual_seed(0)
    net = TransformerBackbone(20, dim=16, heads=2, layers=2, ff=32, dropout=0.0).eval()
    x = torch.randint(3, 20, (2, 8))
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 17 + 3
    fx, fy = net.sequence_features(x), net.sequence_features(y)
    assert torch.allclose(fx[:, :5], fy[:, :5], atol=1e-5)  # earlier positions unaffected
    assert not torch.allclose(fx[:, 5:], fy[:, 5:])
    pe = SinusoidalPositions(16)
    z = pe(torch.zeros(3, 8, 16))
    assert torch.equal(z[0], z[2])  # same for every batch row
    assert not torch.allclose(z[:, 0], z[:, 1])  # differs along the sequence axis


def test_save_load_round_trip_and_corrupt_artifact(tmp_path):
    det = LogLMDetector(epochs=1, window=4, model_kw={"hidden": 8, "embed": 8, "conv": 8})
    det.fit(_conn(4))
    det.save(tmp_path / "m")
    again = LogLMDetector.load(tmp_path / "m")
    test = _conn(1, broken={30}, start_hour=30)
    a, b = det.score_dyad_hours(test), again.score_dyad_hours(test)
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    assert again.threshold_ == det.threshold_
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a valid semiflow log model"):
        LogLMDetector.load(tmp_path / "m")
    with pytest.raises(ValueError, match="not a valid semiflow log model"):
        LogLMDetector.load(tmp_path / "nowhere")
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "config.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(ValueError):
        LogLMDetector.load(tmp_path / "m2")
