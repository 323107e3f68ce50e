"""The lookup table the conn-log LM has to beat (issue #11).

FrequencyBaseline: each token's (port or protobytes) count in the training conn.log; a flow's
score = -log of its additively smoothed frequency, a dyad-hour's score = the max over its
flows, i.e. the surprise of its RAREST token. No learning, no order: on dyad-hours of one
flow (most Stratosphere attacks) an LM reduces to exactly this, so any gain of the LM over it
is what the sequence adds. Same fit/score/threshold surface as LogLMDetector, trained on the
same dyad-hours (normal ones, minus the held-out calibration block) and calibrated the same
way, so both read the same dyad-hours with the same labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.logs.detector import COLUMNS, dyad_hour_scores, select_groups, split_holdout
from semiflow.detector.logs.threshold import apply_calibration
from semiflow.detector.logs.tokens import TOKENIZERS, dyad_hour_frame, group_bounds, normalize_conn

FORMAT = "semiflow-log-freq/1"
_PARAMS = ("tokenizer", "alpha", "backoff", "target_fpr", "calib_fraction", "split", "top_k",
           "bucket_s", "calibration", "confidence", "fpr_unit")


class FrequencyBaseline:
    """Rarest-token detector: score(flow) = -log((count(token) + alpha) / (N + alpha (V + 1))).

    A token never seen in training scores -log(alpha / (N + alpha (V + 1))), the maximum.
    backoff > 0: an unseen token whose value (port, byte bucket) was seen under ANOTHER
    protocol counts as backoff x that value's count instead of 0 (QUIC `u443` on a day that
    had only `t443`: new protocol, known service); a scan's random port stays unseen.
    """

    kind = "frequency"

    def __init__(self, tokenizer: str = "port", alpha: float = 1.0, backoff: float = 0.0,
                 target_fpr: float = 0.01,
                 calib_fraction: float = 0.2, split: str = "time", top_k: int = 3,
                 bucket_s: float = 3600.0, calibration: str = "quantile",
                 confidence: float = 0.95, fpr_unit: str = "window"):
        self.tokenizer, self.alpha, self.target_fpr = tokenizer, alpha, target_fpr
        self.backoff = backoff
        self.calib_fraction, self.split, self.top_k = calib_fraction, split, top_k
        self.bucket_s, self.calibration, self.confidence = bucket_s, calibration, confidence
        self.fpr_unit = fpr_unit

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in _PARAMS}

    def fit(self, conn_df: pd.DataFrame) -> FrequencyBaseline:
        return self.fit_sequences(
            dyad_hour_frame(normalize_conn(conn_df, self.bucket_s), self.tokenizer))

    def fit_sequences(self, seq: pd.DataFrame, holdout: np.ndarray | None = None,
                      **_ignored) -> FrequencyBaseline:
        """Count tokens of the normal, not held-out dyad-hours; calibrate on the held-out ones
        (the LM's split: pass its `holdout` to share it exactly)."""
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}")
        bounds = group_bounds(seq)
        if len(bounds) < 2:
            raise ValueError("no flows to train on")
        bad = np.maximum.reduceat(seq["malicious"].to_numpy(), bounds[:-1])
        held = split_holdout(seq, bounds, self.split, self.calib_fraction) \
            if holdout is None else holdout
        train = select_groups(seq, bounds, ~held & ~bad)
        calib = select_groups(seq, bounds, held & ~bad)
        if len(train) == 0:
            raise ValueError("no normal dyad-hours left to train on after the split")
        vc = train["token"].astype(str).value_counts()
        self.counts_ = {str(k): int(v) for k, v in vc.items()}
        self.n_train_flows_, self.n_calib_flows_ = len(train), len(calib)
        self.calibration_source_ = "held-out normal dyad-hours"
        if len(calib) == 0:
            calib, self.calibration_source_ = train, "training dyad-hours"
        held_out = self.score_sequences(calib, threshold=np.inf)
        self.calib_scores_ = held_out["score"].to_numpy()
        self.calib_flows_ = held_out["n_flows"].to_numpy()
        apply_calibration(self, seq)
        return self

    def flow_scores(self, seq: pd.DataFrame, batch_size: int = 0) -> np.ndarray:
        """-log smoothed training frequency of each flow's token."""
        self._check_fitted()
        n, v = sum(self.counts_.values()), len(self.counts_)
        denom = n + self.alpha * (v + 1)
        tok = pd.Series(seq["token"].astype(str).to_numpy())
        c = np.array(tok.map(self.counts_).to_numpy(np.float64))  # writable copy
        unseen = np.isnan(c)
        c[unseen] = 0.0
        if self.backoff > 0 and unseen.any():
            by_value: dict[str, int] = {}
            for t, k in self.counts_.items():
                by_value[t[1:]] = by_value.get(t[1:], 0) + k
            c[unseen] = self.backoff * tok[unseen].str[1:].map(by_value).fillna(0).to_numpy()
        return (-np.log((c + self.alpha) / denom)).astype(np.float32)

    def score_dyad_hours(self, conn_df: pd.DataFrame) -> pd.DataFrame:
        return self.score_sequences(
            dyad_hour_frame(normalize_conn(conn_df, self.bucket_s), self.tokenizer))

    def score_sequences(self, seq: pd.DataFrame, threshold: float | None = None,
                        batch_size: int = 0) -> pd.DataFrame:
        """One row per dyad-hour, the columns of LogLMDetector.score_sequences."""
        self._check_fitted()
        thr = self.threshold_ if threshold is None else threshold
        if len(seq) == 0:
            return pd.DataFrame(columns=COLUMNS)
        return dyad_hour_scores(seq, self.flow_scores(seq), thr, self.top_k)

    def _check_fitted(self) -> None:
        if not hasattr(self, "counts_"):
            raise ValueError("this FrequencyBaseline is not fitted: call fit() or load() first")

    def save(self, path: str | Path) -> Path:
        """One JSON file: params, token counts, threshold."""
        self._check_fitted()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"format": FORMAT, "params": self.get_params(),
                                 "counts": self.counts_, "threshold": self.threshold_,
                                 "calibration_source": self.calibration_source_}))
        return p

    @classmethod
    def load(cls, path: str | Path) -> FrequencyBaseline:
        try:
            cfg = json.loads(Path(path).read_text())
            if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            det = cls(**{k: v for k, v in cfg["params"].items() if k in _PARAMS})
            det.counts_ = {str(k): int(v) for k, v in cfg["counts"].items()}
            det.threshold_ = float(cfg["threshold"])
            det.calibration_source_ = str(cfg.get("calibration_source", ""))
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a valid semiflow frequency baseline ({e})") from None
        return det

    def __repr__(self) -> str:
        return (f"FrequencyBaseline(tokenizer={self.tokenizer!r}, alpha={self.alpha}, "
                f"backoff={self.backoff})")
