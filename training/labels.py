"""Flow labels from labelled captures: a manifest CSV (file level) or a labelled Zeek conn.log.

Labels: normal, anomalous, background (in a mixed capture, not involving the attacker; not
proven normal, so never used for fitting), unknown (no label source covers the flow).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log

NORMAL, ANOMALOUS, BACKGROUND, UNKNOWN = "normal", "anomalous", "background", "unknown"
_CONN_LABELS = {"benign": NORMAL, "normal": NORMAL, "malicious": ANOMALOUS,
                "background": BACKGROUND}


class Manifest:
    """A manifest CSV as in ../shared/corpus/manifest.csv, with paths relative to its folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        df = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        missing = {"file", "label"} - set(df.columns)
        if missing:
            raise ValueError(f"{self.path}: manifest lacks column(s) {sorted(missing)}")
        bad = sorted(set(df["label"]) - {NORMAL, ANOMALOUS, UNKNOWN, ""})
        if bad:
            raise ValueError(f"{self.path}: unknown label(s) {bad}")
        self.rows = df
        base = self.path.parent
        self._by_path = {os.path.realpath(base / f): i for i, f in enumerate(df["file"])}
        names = df["file"].map(lambda f: Path(f).name)
        counts = names.value_counts()
        self._by_name = {n: i for i, n in enumerate(names) if counts[n] == 1}

    def row_for(self, capture: str | os.PathLike) -> pd.Series | None:
        i = self._by_path.get(os.path.realpath(capture))
        if i is None:
            i = self._by_name.get(Path(capture).name)
        return None if i is None else self.rows.iloc[i]

    def files(self) -> list[Path]:
        return [self.path.parent / f for f in self.rows["file"]]

    def label_flows(self, flows: pd.DataFrame, capture: str | os.PathLike) -> pd.DataFrame:
        """label/family/source columns for one capture's flows."""
        row = self.row_for(capture)
        out = pd.DataFrame(index=flows.index)
        if row is None:
            out["label"], out["family"], out["source"] = UNKNOWN, "", ""
            return out
        label = row["label"] or UNKNOWN
        out["family"] = row.get("family", "")
        out["source"] = row.get("source", "")
        hosts = {h.strip() for h in str(row.get("attacker_hosts", "")).replace(";", " ")
                 .replace(",", " ").split() if h.strip()}
        if label == ANOMALOUS and hosts:
            involved = flows["orig_h"].isin(hosts) | flows["resp_h"].isin(hosts)
            out["label"] = np.where(involved, ANOMALOUS, BACKGROUND)
        else:
            out["label"] = label
        return out


class ConnLogLabels:
    """Per-flow labels from a labelled Zeek conn.log (Stratosphere style `label` column).

    Matched on the 5-tuple (either orientation) and the start time within `tolerance` s.
    """

    def __init__(self, paths: list[str | os.PathLike], tolerance: float = 1.0):
        frames = []
        self.report = ZeekLogReport()
        self.unusable = 0  # rows without a start time or a full 5-tuple
        keys = ["ts", "orig_h", "orig_p", "resp_h", "resp_p", "proto"]
        for p in paths:
            df = read_zeek_log(p, self.report)
            if not len(df.columns):
                raise ValueError(f"{p}: no header and no readable rows (empty, or not a Zeek "
                                 "conn.log)" + "".join(f"; {n}" for n in self.report.notes()))
            col = next((c for c in ("label", "Label") if c in df.columns), None)
            if col is None:
                raise ValueError(f"{p}: conn.log has no label column")
            df = df.rename(columns={"id.orig_h": "orig_h", "id.orig_p": "orig_p",
                                    "id.resp_h": "resp_h", "id.resp_p": "resp_p"})
            missing = [k for k in keys if k not in df.columns]
            if missing:
                raise ValueError(f"{p}: conn.log lacks column(s) {', '.join(missing)}")
            df["label"] = df[col].astype(str).str.strip().str.lower().map(_CONN_LABELS)
            df["label"] = df["label"].fillna(UNKNOWN)
            df["family"] = df["detailedlabel"].fillna("") if "detailedlabel" in df else ""
            usable = df[keys].notna().all(axis=1)
            self.unusable += int((~usable).sum())
            frames.append(df.loc[usable, keys + ["label", "family"]])
        self.table = pd.concat(frames, ignore_index=True)
        self.table["ts"] = self.table["ts"].astype(float)
        self.table["orig_p"] = self.table["orig_p"].astype("int64")
        self.table["resp_p"] = self.table["resp_p"].astype("int64")
        self.tolerance = tolerance

    def notes(self) -> list[str]:
        """What reading the labels skipped or repaired (empty when clean)."""
        out = [f"conn labels: {n}" for n in self.report.notes()]
        if self.unusable:
            out.append(f"conn labels: skipped {self.unusable} row(s) whose start time or "
                       "5-tuple is unset")
        return out

    def label_flows(self, flows: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"label": UNKNOWN, "family": ""}, index=flows.index)
        if flows.empty:
            return out
        f = flows[["ts", "orig_h", "orig_p", "resp_h", "resp_p", "proto"]].copy()
        f["orig_p"] = f["orig_p"].astype("int64")
        f["resp_p"] = f["resp_p"].astype("int64")
        f["_i"] = np.arange(len(f))
        keys = ["orig_h", "orig_p", "resp_h", "resp_p", "proto"]
        for flip in (False, True):
            t = self.table
            if flip:
                t = t.rename(columns={"orig_h": "resp_h", "resp_h": "orig_h",
                                      "orig_p": "resp_p", "resp_p": "orig_p"})
            m = pd.merge_asof(f.sort_values("ts"), t.sort_values("ts"), on="ts", by=keys,
                              tolerance=self.tolerance, direction="nearest")
            hit = m["label"].notna().to_numpy()
            idx = m["_i"].to_numpy()[hit]
            todo = out["label"].iloc[idx] == UNKNOWN
            rows = out.index[idx[todo.to_numpy()]]
            out.loc[rows, "label"] = m["label"].to_numpy()[hit][todo.to_numpy()]
            out.loc[rows, "family"] = m["family"].to_numpy()[hit][todo.to_numpy()]
        return out
