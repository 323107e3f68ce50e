"""Conn logs on disk -> dyad-hour sequences (streaming) -> trained / scored / evaluated.

Files are read chunk-wise (plugin.zeeklog.iter_zeek_log, or a `semiflow extract` directory's
flows.parquet in record batches); only the per-dyad-hour token sequences are kept. Scoring
streams too: a dyad-hour is scored and dropped once the log has moved `slack_hours` past it,
so a month of logs is scored in bounded memory (Zeek writes conn.log at connection END, so
records arrive up to an inactivity timeout late: the slack absorbs that).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.logs.baselines import FrequencyBaseline
from semiflow.detector.logs.detector import LogLMDetector, split_holdout
from semiflow.detector.logs.tokens import dyad_hour_frame, group_bounds, normalize_conn
from semiflow.plugin.zeeklog import ZeekLogReport, iter_zeek_log

BASELINE_FILE = "baseline.json"  # the frequency baseline saved beside a trained LM


@dataclass
class LogReadReport:
    """What was read: lines, malformed lines (with examples), flows, late flows."""
    files: int = 0
    flows: int = 0
    late: int = 0
    unusable: int = 0  # rows without a start time or an endpoint address
    zeek: ZeekLogReport = field(default_factory=ZeekLogReport)

    def summary_lines(self) -> list[str]:
        out = [f"{self.files} file(s), {self.zeek.lines} log lines, {self.flows} flows"]
        out += self.zeek.notes()
        if self.unusable:
            out.append(f"skipped {self.unusable} row(s) whose start time or endpoint "
                       "addresses are unset")
        if self.late:
            out.append(f"{self.late} flow(s) arrived after their dyad-hour was scored "
                       "(scored as a separate fragment)")
        return out


def _progress(total: int | None, unit: str, desc: str, enabled: bool | None):
    enabled = sys.stderr.isatty() if enabled is None else enabled
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, leave=False)


def iter_conn_frames(paths: list[str | os.PathLike], report: LogReadReport | None = None,
                     chunk_rows: int = 200_000, progress: bool | None = None,
                     bucket_s: float = 3600.0) -> Iterator[pd.DataFrame]:
    """Normalized conn frames, chunk by chunk, from Zeek conn logs (TSV/JSON, gzip) or
    `semiflow extract` output directories (flows.parquet); `bucket_s` = the dyad window."""
    report = report if report is not None else LogReadReport()
    bar = _progress(len(paths), "file", "reading", progress)
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if not (p / "flows.parquet").exists():
                raise ValueError(f"{p}: a directory without flows.parquet (not semiflow extract "
                                 "output)")
            import pyarrow.parquet as pq
            chunks = (b.to_pandas() for b in
                      pq.ParquetFile(p / "flows.parquet").iter_batches(chunk_rows))
        elif not p.exists():
            raise ValueError(f"{p}: no such file")
        else:
            chunks = iter_zeek_log(p, report.zeek, chunk_rows)
        report.files += 1
        for df in chunks:
            if len(df) == 0:
                continue
            conn = normalize_conn(df, bucket_s)
            report.unusable += len(df) - len(conn)
            report.flows += len(conn)
            if len(conn):
                yield conn
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _compact(seq: pd.DataFrame) -> pd.DataFrame:
    """Categoricals for the repetitive columns: keeps a month of sequences small."""
    return seq.astype({"host_a": "category", "host_b": "category", "token": "category"})


def collect_sequences(paths: list[str | os.PathLike], tokenizer: str,
                      report: LogReadReport | None = None, chunk_rows: int = 200_000,
                      progress: bool | None = None, bucket_s: float = 3600.0) -> pd.DataFrame:
    """All dyad-hour sequences of the logs (a dyad_hour_frame), read chunk-wise."""
    report = report if report is not None else LogReadReport()
    parts = [_compact(dyad_hour_frame(c, tokenizer))
             for c in iter_conn_frames(paths, report, chunk_rows, progress, bucket_s)]
    if not parts:
        raise ValueError("no flows found in the input logs ("
                         + "; ".join(report.summary_lines()) + ")")
    seq = pd.concat(parts, ignore_index=True)
    seq = seq.astype({"host_a": str, "host_b": str, "token": str})
    return seq.sort_values(["hour", "host_a", "host_b", "ts"], kind="stable", ignore_index=True)


def train_from_logs(paths: list[str | os.PathLike], params: dict, out: str | os.PathLike | None
                    = None, progress: bool | None = None, chunk_rows: int = 200_000
                    ) -> tuple[LogLMDetector, LogReadReport]:
    """Fit a LogLMDetector(**params) on conn logs; save it to `out` if given, with the
    frequency baseline of the same tokens, split and calibration (det.baseline_)."""
    import torch

    report = LogReadReport()
    det = LogLMDetector(**params)
    torch.manual_seed(det.seed)
    np.random.seed(det.seed)
    seq = collect_sequences(paths, det.tokenizer, report, chunk_rows, progress, det.bucket_s)
    held = split_holdout(seq, group_bounds(seq), det.split, det.calib_fraction)
    bar = _progress(det.epochs, "epoch", "training", progress)

    def on_epoch(ep: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

    det.fit_sequences(seq, progress=on_epoch, holdout=held)
    if bar is not None:
        bar.close()
    det.baseline_ = baseline_for(det).fit_sequences(seq, holdout=held)
    if out is not None:
        det.save(out)
        det.baseline_.save(Path(out) / BASELINE_FILE)
    return det, report


def baseline_for(det: LogLMDetector, **kw) -> FrequencyBaseline:
    """The frequency baseline matching an LM: same tokenizer, window, split, calibration."""
    p = {k: getattr(det, k) for k in ("tokenizer", "target_fpr", "calib_fraction", "split",
                                      "top_k", "bucket_s", "calibration", "confidence",
                                      "fpr_unit")}
    return FrequencyBaseline(**{**p, **kw})


def iter_scored(paths: list[str | os.PathLike], det: LogLMDetector,
                report: LogReadReport | None = None, slack_hours: float = 2.0,
                chunk_rows: int = 200_000, progress: bool | None = None
                ) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Yield (dyad-hour scores, their flows) as dyad-hours complete, in bounded memory."""
    report = report if report is not None else LogReadReport()
    pending: pd.DataFrame | None = None
    flushed_upto = -np.inf  # hours <= this were already scored
    latest = -np.inf
    bucket = float(getattr(det, "bucket_s", 3600.0))
    for conn in iter_conn_frames(paths, report, chunk_rows, progress, bucket):
        seq = dyad_hour_frame(conn, det.tokenizer)
        report.late += int((seq["hour"] <= flushed_upto).sum())
        pending = seq if pending is None else pd.concat([pending, seq], ignore_index=True)
        latest = max(latest, float(np.nanmax(seq["ts"])))
        cutoff = np.floor(latest / bucket) * bucket - slack_hours * 3600.0
        done = pending["hour"].to_numpy() <= cutoff
        if done.any():
            ready = pending[done].sort_values(["hour", "host_a", "host_b", "ts"],
                                              kind="stable", ignore_index=True)
            pending = pending[~done].reset_index(drop=True)
            flushed_upto = max(flushed_upto, cutoff)
            yield det.score_sequences(ready), ready
    if pending is not None and len(pending):
        ready = pending.sort_values(["hour", "host_a", "host_b", "ts"], kind="stable",
                                    ignore_index=True)
        yield det.score_sequences(ready), ready


def score_logs(paths: list[str | os.PathLike], det: LogLMDetector,
               on_batch: Callable[[pd.DataFrame], None] | None = None,
               report: LogReadReport | None = None, progress: bool | None = None,
               keep: bool = True, others: dict | None = None
               ) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Score every dyad-hour; on_batch sees each completed batch (e.g. to write logs).

    others = {name: detector}: also score the SAME dyad-hours (same tokens, same labels) with
    each, e.g. the frequency baseline; then returns {"model": ..., name: ...}.
    """
    kept: dict[str, list] = {"model": [], **{k: [] for k in (others or {})}}
    for scored, ready in iter_scored(paths, det, report, progress=progress):
        if on_batch is not None:
            on_batch(scored)
        if keep:
            kept["model"].append(scored.drop(columns=["top_tokens", "top_uids"]))
            for name, other in (others or {}).items():
                kept[name].append(other.score_sequences(ready).drop(
                    columns=["top_tokens", "top_uids"]))
    out = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in kept.items()}
    return out if others else out["model"]


def evaluate_scores(scored: pd.DataFrame) -> dict:
    """Dyad-hour ROC AUC and precision/recall at the model's threshold.

    Ground truth: the dyad-hour holds at least one flow labelled malicious.
    """
    from sklearn.metrics import roc_auc_score

    if not len(scored):
        scored = pd.DataFrame({"malicious": [], "verdict": [], "score": []})
    y = scored["malicious"].to_numpy().astype(bool)
    pred = (scored["verdict"] == "anomalous").to_numpy()
    if "threshold" in scored and len(scored):
        out_thr = float(scored["threshold"].iloc[0])
    else:
        out_thr = float("nan")
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    out = {"dyad_hours": int(len(y)), "malicious": int(y.sum()), "flagged": int(pred.sum()),
           "precision": tp / max(tp + fp, 1), "recall": tp / max(int(y.sum()), 1),
           "fpr": fp / max(int((~y).sum()), 1), "auroc": float("nan"), "threshold": out_thr,
           "base_rate": float(y.mean()) if len(y) else float("nan")}
    if 0 < y.sum() < len(y):
        out["auroc"] = float(roc_auc_score(y, scored["score"].to_numpy()))
    return out
