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
import pyarrow as pa
import pyarrow.csv as pacsv

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


def _open_binary(path: str | os.PathLike):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _unescape_sep(s: str) -> str:
    return s.encode("latin1").decode("unicode_escape") if s.startswith("\\x") else s


def iter_zeek_log(path: str | os.PathLike, report: ZeekLogReport | None = None,
                  chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of about chunk_rows rows, streaming (a month of logs never fits)."""
    report = report if report is not None else ZeekLogReport()
    with _open_binary(path) as fh:
        first = fh.readline()
        if first.lstrip().startswith(b"{"):
            text = io.TextIOWrapper(fh, encoding="utf-8", errors="backslashreplace")
            yield from _iter_json(text, first.decode("utf-8", "backslashreplace"), report,
                                  chunk_rows)
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


def _iter_tsv(fh, first: bytes, report: ZeekLogReport, chunk_rows: int):
    """Header lines are read here; the data goes through pyarrow's streaming CSV reader.

    A line whose field count differs from the #fields header is counted as malformed through
    the reader's invalid-row handler; trailing/embedded '#' lines (#close) are not data.
    """
    meta = {"separator": "\t", "unset_field": "-", "empty_field": "(empty)", "set_separator": ","}
    fields: list[str] = []
    types: list[str] = []
    line = first
    while line.startswith(b"#"):
        text = line.decode("utf-8", "backslashreplace").rstrip("\r\n")
        if text.startswith("#separator"):
            meta["separator"] = _unescape_sep(text.split(" ", 1)[1].strip())
        else:
            key, _, value = text[1:].partition(meta["separator"])
            if key == "fields":
                fields = value.split(meta["separator"])
            elif key == "types":
                types = value.split(meta["separator"])
            elif key in meta:
                meta[key] = value
        line = fh.readline()
    if not fields:
        if line.strip():
            report.lines += 1
            report.bad(1, "data before a #fields header")
        return
    types = types if len(types) == len(fields) else ["string"] * len(fields)
    unset, empty, sep = meta["unset_field"], meta["empty_field"], meta["separator"]
    base = report.lines

    def invalid(row) -> str:
        if row.text is not None and row.text.startswith("#"):
            return "skip"
        report.lines += 1
        report.bad(base + (row.number or 0),
                   f"{row.actual_columns} fields, header has {row.expected_columns}")
        return "skip"

    column_types = {n: _ARROW.get(t, pa.string()) for n, t in zip(fields, types)}
    reader = pacsv.open_csv(
        _Prefixed(line, fh),
        read_options=pacsv.ReadOptions(column_names=fields, block_size=4 << 20,
                                       use_threads=True),
        parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False, escape_char=False,
                                         newlines_in_values=False, invalid_row_handler=invalid),
        convert_options=pacsv.ConvertOptions(column_types=column_types, null_values=[unset],
                                             strings_can_be_null=True,
                                             quoted_strings_can_be_null=False))
    batches = []
    rows = 0
    for batch in reader:
        report.lines += batch.num_rows
        batches.append(batch)
        rows += batch.num_rows
        if rows >= chunk_rows:
            yield _tsv_frame(batches, fields, types, empty, meta["set_separator"])
            batches, rows = [], 0
    if batches:
        yield _tsv_frame(batches, fields, types, empty, meta["set_separator"])


class _Prefixed(io.RawIOBase):
    """A binary stream: the first data line (already read) followed by the rest of fh."""

    def __init__(self, head: bytes, fh):
        self._head, self._fh = head, fh

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._fh.read(len(b))
        b[:len(data)] = data
        return len(data)


_ARROW = {"count": pa.int64(), "int": pa.int64(), "port": pa.int64(), "double": pa.float64(),
          "time": pa.float64(), "interval": pa.float64()}


def _tsv_frame(batches, fields, types, empty, set_sep) -> pd.DataFrame:
    df = pa.Table.from_batches(batches).to_pandas()
    for name, ztype in zip(fields, types):
        if ztype in _NUMERIC:
            df[name] = df[name].astype(_NUMERIC[ztype])
        elif ztype.startswith(("set[", "vector[")):
            df[name] = df[name].map(lambda v: v if not isinstance(v, str) else
                                    ([] if v == empty else v.split(set_sep)))
        elif ztype in ("string", "enum", "addr", "subnet", "bool", "pattern"):
            col = df[name]
            df[name] = col.mask(col == empty, "")
    return df
