"""The lab metrics: unscored flows count as the most normal, thresholds come from outside."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semiflow.training.evaluate_lab import (
    family_recall,
    fill_unscored,
    lab_metrics,
    markdown_lab,
    summarize_lab,
)


def _flows() -> pd.DataFrame:
    return pd.DataFrame({
        "label": ["normal"] * 6 + ["anomalous"] * 4,
        "family": [""] * 6 + ["scan", "scan", "tunnel", "tunnel"],
        "orig_bytes": [10, 10, 10, 10, 10, 10, 0, 0, 50, 50],
        "resp_bytes": [0] * 10,
    })


def test_fill_unscored_ranks_below_every_scored_flow():
    f = fill_unscored(np.array([np.nan, -5.0, 3.0, np.nan]))
    assert f[0] == f[3] < -5.0 and f[2] == 3.0
    assert (fill_unscored(np.array([np.nan, np.nan])) == 0).all()


def test_lab_metrics_counts_unscored_flows_and_uses_the_given_threshold():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, np.nan, np.nan, 1.0, 0.95])
    m = lab_metrics(_flows(), s, threshold=0.6)
    assert m["n_flows"] == 10 and m["n_scored"] == 8 and m["n_payload"] == 8
    # payload flows: tunnels outrank every normal -> 1.0; all flows: the scans rank lowest
    assert m["auroc_payload"] == pytest.approx(1.0)
    assert m["auroc_all"] == pytest.approx((2 * 6 + 0) / 24)
    assert m["auroc_scored"] == pytest.approx(1.0)
    assert m["tpr_at_thr"] == pytest.approx(0.5)           # unscored scans are never flagged
    assert m["fpr_at_thr"] == pytest.approx(1 / 6)
    fam = m["per_family"]
    assert fam["scan"]["recall"] == 0.0 and fam["tunnel"]["recall"] == 1.0
    assert fam["(benign)"]["fpr"] == pytest.approx(1 / 6)


def test_summary_and_markdown():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, np.nan, np.nan, 1.0, 0.95])
    recs = [{"detector": "d", "seed": k, "fit_seconds": 1.0,
             **lab_metrics(_flows(), s + k, threshold=0.6 + k)} for k in (0, 1)]
    summ = summarize_lab(recs)
    assert summ.loc[0, "seeds"] == 2 and summ.loc[0, "auroc_payload_mean"] == 1.0
    text = markdown_lab(summ, family_recall(recs), {"scan": 2, "tunnel": 2})
    assert "| d | 0.500 ± 0.000 | 1.000 ± 0.000 | 8 / 10 |" in text
    assert "scan (2)" in text and "tunnel (2)" in text
