"""Read Zeek logs (TSV with #fields/#types headers, or JSON lines; gzip or plain) into pandas.

Malformed lines are counted and reported, never fatal (ZeekLogReport). Unset fields (`-`)
become missing values, `(empty)` an empty string / empty set.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

_NUMERIC = {"count": "Int64", "int": "Int64", "port": "Int64", "double": "float64",
            "time": "float64", "interval": "float64"}


@dataclass
class ZeekLogReport:
    lines: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, lineno: int, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {lineno}: {why}")


def _open_text(path: str | os.PathLike) -> io.TextIOBase:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="\n")


def _unescape_sep(s: str) -> str:
    return s.encode("latin1").decode("unicode_escape") if s.startswith("\\x") else s


def iter_zeek_log(path: str | os.PathLike, report: ZeekLogReport | None = None,
                  chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of at most chunk_rows rows, streaming (a month of logs never fits)."""
    report = report if report is not None else ZeekLogReport()
    with _open_text(path) as fh:
        first = fh.readline()
        if first.lstrip().startswith("{"):
            yield from _iter_json(fh, first, report, chunk_rows)
        else:
            yield from _iter_tsv(fh, first, report, chunk_rows)


def read_zeek_log(path: str | os.PathLike, report: ZeekLogReport | None = None) -> pd.DataFrame:
    parts = list(iter_zeek_log(path, report))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _iter_json(fh, first: str, report: ZeekLogReport, chunk_rows: int):
    rows: list[dict] = []
    lineno = 0
    for line in _chain(first, fh):
        lineno += 1
        line = line.strip()
        if not line:
            continue
        report.lines += 1
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            report.bad(lineno, f"not JSON ({e})")
            continue
        rows.append(obj)
        if len(rows) >= chunk_rows:
            yield _json_frame(rows)
            rows = []
    if rows:
        yield _json_frame(rows)


def _json_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows)
    if "ts" in df and df["ts"].dtype == object:  # ISO8601 timestamps (LogAscii::json_timestamps)
        df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("int64") / 1e9
    return df


def _chain(first: str, fh) -> Iterator[str]:
    yield first
    yield from fh


def _iter_tsv(fh, first: str, report: ZeekLogReport, chunk_rows: int):
    sep, unset, empty = "\t", "-", "(empty)"
    fields: list[str] | None = None
    types: list[str] = []
    rows: list[list[str]] = []
    lineno = 0
    for line in _chain(first, fh):
        lineno += 1
        line = line.rstrip("\n").rstrip("\r")
        if line.startswith("#"):
            key, _, value = line[1:].partition(sep if fields is not None or
                                               not line.startswith("#separator") else " ")
            if key == "separator":
                sep = _unescape_sep(value.strip())
            elif key == "unset_field":
                unset = value
            elif key == "empty_field":
                empty = value
            elif key == "fields":
                if rows and fields is not None:  # a new header inside a concatenated log
                    yield _tsv_frame(rows, fields, types, unset, empty)
                    rows = []
                fields = value.split(sep)
            elif key == "types":
                types = value.split(sep)
            continue
        if not line:
            continue
        report.lines += 1
        if fields is None:
            report.bad(lineno, "data before a #fields header")
            continue
        parts = line.split(sep)
        if len(parts) != len(fields):
            report.bad(lineno, f"{len(parts)} fields, header has {len(fields)}")
            continue
        rows.append(parts)
        if len(rows) >= chunk_rows:
            yield _tsv_frame(rows, fields, types, unset, empty)
            rows = []
    if rows and fields is not None:
        yield _tsv_frame(rows, fields, types, unset, empty)


def _tsv_frame(rows, fields, types, unset, empty) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=fields)
    df = df.replace({unset: None})
    for name, ztype in zip(fields, types):
        if ztype in _NUMERIC:
            df[name] = pd.to_numeric(df[name], errors="coerce").astype(_NUMERIC[ztype])
        elif ztype.startswith(("set[", "vector[")):
            df[name] = df[name].map(lambda v: [] if v == empty else
                                    (v.split(",") if isinstance(v, str) else v))
        elif empty != unset:
            df[name] = df[name].replace({empty: ""})
    return df
