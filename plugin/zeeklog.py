"""Read Zeek logs (TSV with #fields/#types headers, or JSON lines; gzip or plain) into pandas.

Logs are input we do not control: a quiet day's header-only notice.log, a log cut off by a
crash, a gzip'd rotation that ends early, rows with extra or missing fields, non-UTF-8 bytes,
garbage in a numeric column. None of these is fatal: what can be read is returned and every
line or value that could not is counted in ZeekLogReport (with a few examples). Unset fields
(`-`) become missing values, `(empty)` an empty string / empty set.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

_NUMERIC = {"count": "Int64", "int": "Int64", "port": "Int64", "double": "float64",
            "time": "float64", "interval": "float64"}
_ARROW = {"count": pa.int64(), "int": pa.int64(), "port": pa.int64(), "double": pa.float64(),
          "time": pa.float64(), "interval": pa.float64()}


@dataclass
class ZeekLogReport:
    """What reading skipped or repaired, summed over every file read with it."""
    lines: int = 0
    malformed: int = 0
    bad_values: int = 0  # numeric fields that were not numbers: read as missing
    non_utf8: int = 0  # bytes that were not UTF-8: escaped (TSV, as Zeek does) or replaced
    examples: list[str] = field(default_factory=list)
    source: str = ""  # the file being read, named in the examples

    def bad(self, lineno: int | None, why: str) -> None:
        self.malformed += 1
        self._example(f"line {lineno}: {why}" if lineno else why)

    def _example(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{self.source}: {text}" if self.source else text)

    def notes(self) -> list[str]:
        """One line per kind of repair, for the commands to print (empty when clean)."""
        out = []
        if self.malformed:
            out.append(f"skipped {self.malformed} malformed line(s): "
                       + "; ".join(self.examples))
        if self.bad_values:
            out.append(f"{self.bad_values} numeric field(s) were not numbers: read as unset")
        if self.non_utf8:
            out.append(f"{self.non_utf8} byte(s) were not UTF-8: kept escaped (\\xNN) or "
                       "replaced")
        return out


class _Gunzip(io.RawIOBase):
    """gzip members (rotated logs are often several, concatenated) decompressed as a stream
    that ends where the data stops making sense: a .gz cut off mid-write keeps every byte
    before the cut, and the cut is counted."""

    def __init__(self, raw, report: ZeekLogReport):
        self._raw, self._report = raw, report
        self._z = zlib.decompressobj(wbits=31)
        self._buf, self._ended = b"", False

    def readable(self) -> bool:
        return True

    def _cut(self, why: str) -> None:
        self._ended = True
        self._report.bad(None, f"compressed data {why}: kept the lines before it")

    def _fill(self) -> None:
        while not self._buf and not self._ended:
            data = self._z.unused_data if self._z.eof else b""
            if self._z.eof:
                self._z = zlib.decompressobj(wbits=31)
                if not data:
                    data = self._raw.read(1 << 16)
                    if not data:  # clean end after a complete member
                        self._ended = True
                        return
            else:
                data = self._z.unconsumed_tail or self._raw.read(1 << 16)
                if not data:
                    self._buf = self._z.flush()  # what zlib still holds of the cut member
                    self._cut("ends early (file cut off)")
                    return
            try:
                self._buf = self._z.decompress(data, 1 << 20)
            except zlib.error as e:
                self._cut(f"is corrupt ({e})")

    def readinto(self, b) -> int:
        self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_binary(path: str | os.PathLike, report: ZeekLogReport):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = open(path, "rb")
    return io.BufferedReader(_Gunzip(raw, report), 1 << 16) if gz else raw


def _unescape_sep(s: str) -> str:
    return s.encode("latin1").decode("unicode_escape") if s.startswith("\\x") else s


def iter_zeek_log(path: str | os.PathLike, report: ZeekLogReport | None = None,
                  chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of about chunk_rows rows, streaming (a month of logs never fits).

    A TSV log with headers and no rows yields one empty frame with the header's columns.
    """
    report = report if report is not None else ZeekLogReport()
    report.source = os.path.basename(path)
    with _open_binary(path, report) as fh:
        first = fh.readline()
        if first.lstrip().startswith(b"{"):
            yield from _iter_json(fh, first, report, chunk_rows)
        else:
            yield from _iter_tsv(fh, first, report, chunk_rows)


def read_zeek_log(path: str | os.PathLike, report: ZeekLogReport | None = None) -> pd.DataFrame:
    parts = list(iter_zeek_log(path, report))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else (
        parts[0] if parts else pd.DataFrame())


def _decode(raw: bytes, report: ZeekLogReport, errors: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors)
        marker = "\\x" if errors == "backslashreplace" else "\ufffd"
        report.non_utf8 += max(text.count(marker) - raw.decode("latin1").count(marker), 1)
        return text


def _iter_json(fh, first: bytes, report: ZeekLogReport, chunk_rows: int):
    rows: list[dict] = []
    lineno = 0
    for raw in _chain(first, fh):
        lineno += 1
        line = _decode(raw, report, "replace").strip()
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
            yield _json_frame(rows, report)
            rows = []
    if rows:
        yield _json_frame(rows, report)


def _json_frame(rows: list[dict], report: ZeekLogReport) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows)
    if "ts" in df and df["ts"].dtype == object:  # ISO8601 timestamps (LogAscii::json_timestamps)
        given = df["ts"].notna()
        iso = pd.to_datetime(df["ts"], utc=True, errors="coerce", format="ISO8601")
        numeric = pd.to_numeric(df["ts"], errors="coerce")
        df["ts"] = numeric.where(numeric.notna(), iso.astype("int64") / 1e9)
        df.loc[iso.isna() & numeric.isna(), "ts"] = float("nan")
        bad = int((given & df["ts"].isna()).sum())
        if bad:
            report.bad_values += bad
            report._example(f"{bad} ts value(s) neither a number nor an ISO 8601 time")
    return df


def _chain(first: bytes, fh) -> Iterator[bytes]:
    yield first
    yield from fh


def _iter_tsv(fh, first: bytes, report: ZeekLogReport, chunk_rows: int):
    """Header lines are read here; the data goes through pyarrow's streaming CSV reader.

    A line whose field count differs from the #fields header is counted as malformed through
    the reader's invalid-row handler; trailing/embedded '#' lines (#close) are not data.
    Numeric columns are read as text and cast afterwards, so one bad value costs one value,
    not the file.
    """
    meta = {"separator": "\t", "unset_field": "-", "empty_field": "(empty)", "set_separator": ","}
    fields: list[str] = []
    types: list[str] = []
    line = first
    nhead = 0
    while line.startswith(b"#"):
        nhead += 1
        text = _decode(line, report, "backslashreplace").rstrip("\r\n")
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
        lineno = 0
        for rest in _chain(line, fh):
            lineno += 1
            if rest.strip():
                report.lines += 1
                report.bad(lineno, "no #fields header (not a Zeek TSV or JSON log)")
        return
    types = types if len(types) == len(fields) else ["string"] * len(fields)
    unset, sep = meta["unset_field"], meta["separator"]

    def invalid(row) -> str:
        if row.text is not None and row.text.startswith("#"):
            return "skip"
        report.lines += 1
        report.bad(nhead + row.number if row.number else None,
                   f"{row.actual_columns} fields, header has {row.expected_columns}")
        return "skip"

    # Numeric columns as text (cast in _tsv_frame): "(empty)" or garbage there is one bad value.
    schema = pa.schema([(n, pa.string()) for n in fields])
    frame = _FrameMaker(fields, types, meta, report)
    try:
        reader = pacsv.open_csv(
            _Utf8Stream(line, fh, report),
            read_options=pacsv.ReadOptions(column_names=fields, block_size=4 << 20,
                                           use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False,
                                             escape_char=False, newlines_in_values=False,
                                             invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types=dict(zip(schema.names,
                                                                       schema.types)),
                                                 null_values=[unset], strings_can_be_null=True,
                                                 quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        if "Empty CSV file" not in str(e):
            raise
        yield frame(pa.Table.from_batches([], schema=schema))  # header only: a quiet day
        return
    batches = []
    rows, yielded = 0, False
    for batch in reader:
        report.lines += batch.num_rows
        batches.append(batch)
        rows += batch.num_rows
        if rows >= chunk_rows:
            yield frame(pa.Table.from_batches(batches))
            batches, rows, yielded = [], 0, True
    if batches or not yielded:  # only malformed lines: still the header's columns
        yield frame(pa.Table.from_batches(batches, schema=reader.schema))


class _Utf8Stream(io.RawIOBase):
    """The first data line (already read) then the rest of fh, as valid UTF-8: bytes that are
    not UTF-8 are escaped as \\xNN (Zeek's own convention) and counted."""

    def __init__(self, head: bytes, fh, report: ZeekLogReport):
        self._fh, self._report = fh, report
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self._buf = self._convert(head)

    def _convert(self, raw: bytes) -> bytes:
        final = not raw
        text = self._decoder.decode(raw, final)
        if text.isascii() and raw.isascii():
            return raw
        escaped = text.count("\\x") - raw.decode("latin1").count("\\x")
        self._report.non_utf8 += max(escaped, 0)
        return text.encode("utf-8")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            raw = self._fh.read(max(len(b), 1 << 16))
            self._buf = self._convert(raw)
            if not raw:
                break
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _FrameMaker:
    """Arrow table of text columns -> a pandas frame with the #types' dtypes."""

    def __init__(self, fields, types, meta, report: ZeekLogReport):
        self.fields, self.types, self.report = fields, types, report
        self.empty, self.set_sep = meta["empty_field"], meta["set_separator"]

    def _numeric(self, name: str, col: pa.ChunkedArray, ztype: str) -> pd.Series:
        try:
            return col.cast(_ARROW[ztype]).to_pandas().astype(_NUMERIC[ztype])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            text = col.to_pandas()
            num = pd.to_numeric(text, errors="coerce")
            bad = text.notna() & num.isna()
            n = int(bad.sum())
            self.report.bad_values += n
            self.report._example(f"{n} value(s) of {ztype} column {name} not a number, e.g. "
                                 f"{text[bad].iloc[0]!r}")
            if _NUMERIC[ztype] == "Int64":
                num = num.where(num.isna() | (num == num.round()))
            return num.astype(_NUMERIC[ztype])

    def __call__(self, table: pa.Table) -> pd.DataFrame:
        cols = {}
        for name, ztype in zip(self.fields, self.types):
            col = table.column(name)
            if ztype in _NUMERIC:
                cols[name] = self._numeric(name, col, ztype)
                continue
            s = col.to_pandas()
            if ztype.startswith(("set[", "vector[")):
                s = s.map(lambda v: v if not isinstance(v, str) else
                          ([] if v == self.empty else v.split(self.set_sep)))
            else:
                s = s.mask(s == self.empty, "")
            cols[name] = s
        return pd.DataFrame(cols, index=pd.RangeIndex(table.num_rows))
