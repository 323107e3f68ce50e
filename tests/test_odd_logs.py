"""Empty and odd Zeek logs × every command that reads them (issue 15 part 1).

Each odd kind is made from a slice of a REAL log (../shared/zeek-logs for conn.log; the
bundled lab sample scored with the bundled model for semiflow.log and notice.log). Every
command either works, saying what it skipped or repaired, or fails with one clear line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from packets import ether, ip4, udp, write_pcap

from semiflow.cli import main
from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Log:
    """A real log cut into header lines, data rows and the #close line."""
    header: list[bytes]
    rows: list[bytes]
    close: list[bytes]

    @classmethod
    def parse(cls, data: bytes, keep: Callable[[list[bytes]], list[bytes]]) -> Log:
        lines = data.splitlines(keepends=True)
        return cls([x for x in lines if x.startswith(b"#") and not x.startswith(b"#close")],
                   keep([x for x in lines if not x.startswith(b"#")]),
                   [x for x in lines if x.startswith(b"#close")])

    def tsv(self, rows: list[bytes] | None = None, close: bool = True) -> bytes:
        return b"".join(self.header + (self.rows if rows is None else rows)
                        + (self.close if close else []))

    def json_lines(self, path: Path) -> bytes:
        path.write_bytes(self.tsv())
        df = read_zeek_log(path)
        return b"".join(json.dumps({k: v for k, v in r.items() if v == v and v is not None},
                                   default=list).encode() + b"\n"
                        for r in df.to_dict("records"))


def _fields(row: bytes) -> list[bytes]:
    return row.rstrip(b"\n").split(b"\t")


def _each_field(row: bytes, value: bytes) -> bytes:
    return b"\t".join(value for _ in _fields(row)) + b"\n"


def _drop_columns(log: Log, names: set[bytes]) -> bytes:
    """A log whose header and rows both lack some columns (an older Zeek, a trimmed log)."""
    fields = next(h for h in log.header if h.startswith(b"#fields"))
    keep = [i for i, f in enumerate(_fields(fields)[1:]) if f not in names]

    def cut(line: bytes, offset: int) -> bytes:
        parts = _fields(line)
        return b"\t".join(parts[:offset] + [parts[offset + i] for i in keep]) + b"\n"

    header = [cut(h, 1) if h.startswith((b"#fields", b"#types")) else h for h in log.header]
    return b"".join(header + [cut(r, 0) for r in log.rows] + log.close)


def _add_column(log: Log) -> bytes:
    header = [h.rstrip(b"\n") + (b"\textra_col\n" if h.startswith(b"#fields") else
                                 b"\tstring\n" if h.startswith(b"#types") else b"\n")
              if h.startswith((b"#fields", b"#types")) else h for h in log.header]
    return b"".join(header + [r.rstrip(b"\n") + b"\tx\n" for r in log.rows] + log.close)


def _non_utf8(row: bytes) -> bytes:
    parts = _fields(row)
    parts[1] = parts[1] + b"\xff\xfe\xc3"  # uid: invalid bytes, a cut-off 2-byte sequence
    return b"\t".join(parts) + b"\n"


# kind -> (make the odd file from a Log and a scratch path, what stdout/stderr must mention)
KINDS: dict[str, tuple[Callable[[Log, Path], bytes], str | None]] = {
    "header_only": (lambda log, tmp: log.tsv(rows=[]), None),
    "header_only_no_close": (lambda log, tmp: log.tsv(rows=[], close=False), None),
    "zero_bytes": (lambda log, tmp: b"", None),
    "json_zero_lines": (lambda log, tmp: b"\n\n", None),
    "cut_mid_line": (lambda log, tmp: log.tsv(close=False)[:-25], "malformed"),
    "no_close": (lambda log, tmp: log.tsv(close=False), None),
    "gzip": (lambda log, tmp: gzip.compress(log.tsv()), None),
    "gzip_header_only": (lambda log, tmp: gzip.compress(log.tsv(rows=[])), None),
    "gzip_cut": (lambda log, tmp: gzip.compress(log.tsv())[:-200], "compressed data ends"),
    "rows_with_extra_field": (lambda log, tmp: log.tsv(
        rows=[r.rstrip(b"\n") + b"\tx\n" for r in log.rows]), "malformed"),
    "rows_missing_fields": (lambda log, tmp: log.tsv(
        rows=[b"\t".join(_fields(r)[:-3]) + b"\n" for r in log.rows]), "malformed"),
    "header_missing_columns": (lambda log, tmp: _drop_columns(
        log, {b"service", b"duration", b"history", b"msg", b"score", b"status", b"label"}),
        None),
    "header_extra_column": (lambda log, tmp: _add_column(log), None),
    "unset_everywhere": (lambda log, tmp: log.tsv(rows=[_each_field(r, b"-")
                                                        for r in log.rows]), "unset"),
    "empty_everywhere": (lambda log, tmp: log.tsv(rows=[_each_field(r, b"(empty)")
                                                        for r in log.rows]), "not numbers"),
    "non_utf8": (lambda log, tmp: log.tsv(rows=[_non_utf8(r) for r in log.rows]),
                 "not UTF-8"),
    "json": (lambda log, tmp: log.json_lines(tmp), None),
    "json_cut_mid_line": (lambda log, tmp: log.json_lines(tmp)[:-40], "malformed"),
    "json_non_utf8": (lambda log, tmp: log.json_lines(tmp).replace(b'"uid": "C',
                                                               b'"uid": "\xffC'),
                      "not UTF-8"),
    "not_a_log": (lambda log, tmp: b"\x00\x01binary\xff junk\nmore junk\n", "no #fields"),
}
NO_ROWS = {"header_only", "header_only_no_close", "zero_bytes", "json_zero_lines",
           "gzip_header_only", "not_a_log"}


@pytest.fixture(scope="module")
def real(zeek_logs_dir, tmp_path_factory) -> dict[str, Log]:
    """Slices of real logs: a labelled conn.log (benign and malicious hours), and the
    semiflow.log / notice.log that `semiflow score` writes for the bundled lab sample."""
    tmp = tmp_path_factory.mktemp("real")
    assert main(["score", str(ROOT / "semiflow/data/lab-sample/capture.pcap.gz"), "-o",
                 str(tmp / "scored"), "-q"]) == 0
    conn = (zeek_logs_dir / "008-zeek-mixed" / "data" / "conn.log.labeled").read_bytes()
    return {"conn": Log.parse(conn, lambda r: r[:300] + r[-300:]),
            "semiflow": Log.parse((tmp / "scored" / "semiflow.log").read_bytes(),
                                  lambda r: r[:150]),
            "notice": Log.parse((tmp / "scored" / "notice.log").read_bytes(),
                                lambda r: r[:100])}


@pytest.fixture(scope="module")
def log_model(real, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    (tmp / "conn.log").write_bytes(real["conn"].tsv())
    assert main(["logs", "train", str(tmp / "conn.log"), "-o", str(tmp / "m"), "--epochs", "1",
                 "--tokenizer", "port", "-q"]) == 0
    return tmp / "m"


def _odd(real: dict[str, Log], kind: str, which: str, tmp: Path) -> bytes:
    return KINDS[kind][0](real[which], tmp / f"{which}.src")


def _log_dir(real, kind: str, tmp: Path) -> Path:
    d = tmp / "logs"
    d.mkdir()
    for which in ("semiflow", "notice", "conn"):
        (d / f"{which}.log").write_bytes(_odd(real, kind, which, tmp))
    return d


def _conn(real, kind: str, tmp: Path) -> Path:
    p = tmp / "conn.log"
    p.write_bytes(_odd(real, kind, "conn", tmp))
    return p


def _capture(tmp: Path) -> Path:
    p = tmp / "cap.pcap"
    write_pcap(p, [(1655071198.44, ether(ip4("10.0.0.1", "10.0.0.2", udp(1000, 53, b"a"), 17))),
                   (1655071199.0, ether(ip4("10.0.0.3", "10.0.0.2", udp(2000, 53, b"b"), 17)))])
    return p


# command -> (argv for the odd logs in tmp, kinds where a one-line error is the right answer
# and what it says)
def _report(real, kind, tmp, model):
    return ["report", str(_log_dir(real, kind, tmp)), "-o", str(tmp / "r.html")]


def _train(real, kind, tmp, model):
    return ["logs", "train", str(_conn(real, kind, tmp)), "-o", str(tmp / "m"), "--epochs",
            "1", "--tokenizer", "port", "-q"]


def _score(real, kind, tmp, model):
    return ["logs", "score", str(_conn(real, kind, tmp)), "--model", str(model), "-o",
            str(tmp / "o"), "-q"]


def _evaluate(real, kind, tmp, model):
    return ["logs", "evaluate", str(_conn(real, kind, tmp)), "--model", str(model), "-q"]


def _feedback(real, kind, tmp, model):
    uid = _fields(real["semiflow"].rows[0])[1].decode()
    return ["feedback", "mark", "--uid", uid, "--from", str(_log_dir(real, kind, tmp)),
            "--reason", "test", "-o", str(tmp / "allow.tsv")]


def _extract(real, kind, tmp, model):
    return ["extract", str(_capture(tmp)), "--conn-labels", str(_conn(real, kind, tmp)),
            "-o", str(tmp / "x"), "-q"]


_GONE = NO_ROWS | {"unset_everywhere", "empty_everywhere", "rows_with_extra_field",
                   "rows_missing_fields"}
COMMANDS = {
    "report": (_report, {}),
    "logs-train": (_train, {k: "no flows" for k in _GONE}),
    "logs-score": (_score, {}),
    "logs-evaluate": (_evaluate, {}),
    # the uid is gone where no row survives (or the uid column was blanked)
    "feedback": (_feedback, {k: "not found" for k in _GONE | {"non_utf8", "json_non_utf8"}}),
    "extract-conn-labels": (_extract, {
        "header_missing_columns": "no label column",
        **{k: "no header and no readable rows" for k in ("zero_bytes", "json_zero_lines")},
        "not_a_log": "no header and no readable rows"}),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_odd_log(real, log_model, kind, command, tmp_path, capsys):
    make_argv, errors = COMMANDS[command]
    rc = main(make_argv(real, kind, tmp_path, log_model))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if kind in errors:
        assert rc == 2, out
        assert err.count("\n") == 1 and err.startswith(f"semiflow {command.split('-')[0]}")
        assert errors[kind] in err, err
    else:
        assert rc == 0, err
    note = KINDS[kind][1]
    if note:
        assert note in out + err, out + err


def test_quiet_day_report_says_so(real, tmp_path, capsys):
    """The known bug: a header-only notice.log (nothing flagged) broke `semiflow report`."""
    d = tmp_path / "logs"
    d.mkdir()
    (d / "semiflow.log").write_bytes(real["semiflow"].tsv(
        rows=[r for r in real["semiflow"].rows if b"\tanomalous\t" not in r]))
    (d / "notice.log").write_bytes(real["notice"].tsv(rows=[]))
    assert main(["report", str(d), "-o", str(tmp_path / "r.html")]) == 0
    assert "0 flagged" in capsys.readouterr().out
    assert "no anomalies in this period" in (tmp_path / "r.html").read_text()


def test_reader_keeps_the_header_columns_and_counts_repairs(real, tmp_path):
    p = tmp_path / "conn.log"
    p.write_bytes(real["conn"].tsv(rows=[]))
    df = read_zeek_log(p)
    assert len(df) == 0 and "id.orig_h" in df and str(df["id.orig_p"].dtype) == "Int64"
    rep = ZeekLogReport()
    p.write_bytes(gzip.compress(real["conn"].tsv()) + gzip.compress(real["conn"].tsv()))
    assert len(read_zeek_log(p, rep)) == 2 * len(real["conn"].rows) and rep.malformed == 0
    p.write_bytes(gzip.compress(real["conn"].tsv())[:-200])
    rep = ZeekLogReport()
    n = len(read_zeek_log(p, rep))
    assert 0 < n < len(real["conn"].rows) and rep.malformed >= 1
    p.write_bytes(real["conn"].tsv(rows=[_non_utf8(r) for r in real["conn"].rows]))
    rep = ZeekLogReport()
    df = read_zeek_log(p, rep)
    assert len(df) == len(real["conn"].rows) and rep.non_utf8 == 3 * len(df)
    assert df["uid"].str.endswith("\\xff\\xfe\\xc3").all()
