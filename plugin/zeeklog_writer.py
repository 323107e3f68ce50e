"""Write Zeek logs: the ASCII writer's TSV (with #separator ... #close) or JSON lines.

What Zeek's ASCII writer does is what we do: tab-separated fields, `-` for unset, `(empty)`
for an empty string or container, `,` between set/vector elements, non-printable bytes,
backslashes and separators escaped as \\xNN, time/interval as seconds with 6 decimals, bool
T/F. JSON mode writes one object per line in field order, leaving unset fields out (as Zeek's
JSON logs do) with times as epoch seconds.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY = "(empty)"
UNSET = "-"
_CONTAINER = ("set[", "vector[", "table[")


def _escape(s: str, in_set: bool = False) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\" or ch == SEPARATOR or (in_set and ch == SET_SEPARATOR) or o < 0x20 \
                or o == 0x7f:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    r = "".join(out)
    if r in (UNSET, EMPTY) or (r == "" and in_set):
        r = f"\\x{ord(r[0]):02x}{r[1:]}" if r else r
    return r


def _is_unset(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def format_tsv(value: Any, ztype: str) -> str:
    """One field as Zeek's ASCII writer prints it."""
    if _is_unset(value):
        return UNSET
    if ztype.startswith(_CONTAINER):
        inner = ztype[ztype.index("[") + 1:-1]
        items = list(value)
        if not items:
            return EMPTY
        return SET_SEPARATOR.join(_escape(format_tsv(v, inner), in_set=True) if inner in
                                  ("string", "enum") else format_tsv(v, inner) for v in items)
    if ztype in ("time", "interval"):
        return f"{float(value):.6f}"
    if ztype == "double":
        return f"{float(value):.6f}"
    if ztype == "bool":
        return "T" if value else "F"
    if ztype in ("count", "int", "port"):
        return str(int(value))
    s = str(value)
    return EMPTY if s == "" else _escape(s)


def format_json(value: Any, ztype: str) -> Any:
    if ztype.startswith(_CONTAINER):
        inner = ztype[ztype.index("[") + 1:-1]
        return [format_json(v, inner) for v in value]
    if ztype in ("time", "interval", "double"):
        return float(value)
    if ztype == "bool":
        return bool(value)
    if ztype in ("count", "int", "port"):
        return int(value)
    return str(value)


class ZeekLogWriter:
    """Append records (dicts keyed by field name) to one Zeek log file.

    fields: [(name, zeek_type)] e.g. [("ts", "time"), ("id.orig_h", "addr")]. Keys missing
    from a record, None and NaN are unset. Use as a context manager or call close().
    """

    def __init__(self, path: str | os.PathLike, path_name: str,
                 fields: Sequence[tuple[str, str]], json: bool = False,
                 open_time: float | None = None):
        self.path = Path(path)
        self.path_name = path_name
        self.fields = list(fields)
        self.json = json
        self.rows = 0
        self._fh = open(self.path, "w", encoding="utf-8", newline="\n")
        if not json:
            names = SEPARATOR.join(n for n, _ in self.fields)
            types = SEPARATOR.join(t for _, t in self.fields)
            self._fh.write("#separator \\x09\n"
                           f"#set_separator{SEPARATOR}{SET_SEPARATOR}\n"
                           f"#empty_field{SEPARATOR}{EMPTY}\n"
                           f"#unset_field{SEPARATOR}{UNSET}\n"
                           f"#path{SEPARATOR}{path_name}\n"
                           f"#open{SEPARATOR}{_stamp(open_time)}\n"
                           f"#fields{SEPARATOR}{names}\n"
                           f"#types{SEPARATOR}{types}\n")

    def write(self, record: dict) -> None:
        if self._fh.closed:
            raise ValueError(f"{self.path}: log already closed")
        unknown = set(record) - {n for n, _ in self.fields}
        if unknown:
            raise ValueError(f"{self.path_name} log: unknown field(s) {sorted(unknown)}")
        if self.json:
            obj = {n: format_json(record[n], t) for n, t in self.fields
                   if not _is_unset(record.get(n))}
            self._fh.write(json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")
        else:
            self._fh.write(SEPARATOR.join(format_tsv(record.get(n), t) for n, t in self.fields)
                           + "\n")
        self.rows += 1

    def close(self, close_time: float | None = None) -> None:
        if self._fh.closed:
            return
        if not self.json:
            self._fh.write(f"#close{SEPARATOR}{_stamp(close_time)}\n")
        self._fh.close()

    def __enter__(self) -> ZeekLogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(time.time() if t is None else t))
