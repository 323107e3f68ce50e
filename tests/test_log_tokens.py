"""Tokenizers, dyad-hour grouping and windows on hand-written conn logs (TSV, JSON, gzip)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from semiflow.detector.logs.tokens import (
    BOS,
    PAD,
    UNK,
    Vocabulary,
    dyad_hour_frame,
    group_bounds,
    make_windows,
    normalize_conn,
    tokenize,
)
from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log
from semiflow.training.log_train import LogReadReport, collect_sequences

FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
          "duration", "orig_bytes", "resp_bytes", "conn_state", "label"]
TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval",
         "count", "count", "string", "string"]
# (ts, uid, orig, sport, resp, dport, proto, service, duration, ob, rb, state, label)
ROWS = [
    (7205.0, "C3", "10.0.0.2", 5000, "10.0.0.1", 53, "udp", "dns", 0.01, 30, 70, "SF", "Benign"),
    (7200.5, "C1", "10.0.0.1", 40000, "10.0.0.2", 443, "tcp", "ssl", 2.5, 1000, 23, "SF",
     "Benign"),
    (7201.0, "C2", "10.0.0.1", 40001, "10.0.0.9", 22, "tcp", "-", 0.0, 0, 0, "S0",
     "Malicious"),
    (10799.9, "C4", "10.0.0.1", 40002, "10.0.0.2", 80, "tcp", "http", "-", "-", "-", "OTH",
     "Benign"),
    (10800.0, "C5", "10.0.0.2", 60000, "10.0.0.1", 20000, "tcp", "-", 1.0, 1, 0, "REJ",
     "Benign"),
]


def _tsv(rows, bad_line: bool = True) -> str:
    head = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
            "#path\tconn\n#fields\t" + "\t".join(FIELDS) + "\n#types\t" + "\t".join(TYPES) + "\n")
    body = "".join("\t".join(str(v) for v in r) + "\n" for r in rows)
    return head + body + ("this line\tis malformed\n" if bad_line else "") + "#close\tx\n"


@pytest.fixture()
def logs(tmp_path):
    tsv = tmp_path / "conn.log.gz"
    with gzip.open(tsv, "wt") as f:
        f.write(_tsv(ROWS))
    js = tmp_path / "conn.json"
    with open(js, "w") as f:
        for r in ROWS:
            obj = {k: v for k, v in zip(FIELDS, r) if v != "-"}
            f.write(json.dumps(obj) + "\n")
        f.write("{not json\n")
    return tsv, js


def test_tsv_gzip_and_json_give_the_same_sequences(logs):
    tsv, js = logs
    r1, r2 = ZeekLogReport(), ZeekLogReport()
    a = dyad_hour_frame(normalize_conn(read_zeek_log(tsv, r1)), "protobytes")
    b = dyad_hour_frame(normalize_conn(read_zeek_log(js, r2)), "protobytes")
    assert r1.malformed == 1 and r2.malformed == 1
    assert len(a) == len(b) == 5
    assert a["uid"].tolist() == b["uid"].tolist()
    assert a["token"].tolist() == b["token"].tolist()


def test_dyad_hour_grouping_is_undirected_and_time_sorted(logs):
    seq = dyad_hour_frame(normalize_conn(read_zeek_log(logs[0])), "protobytes")
    bounds = group_bounds(seq)
    groups = [seq["uid"].iloc[s:e].tolist() for s, e in zip(bounds[:-1], bounds[1:])]
    # hour 2 (7200..10799): dyad .1/.2 holds C1, C3 (both directions), C4, sorted by ts;
    # .1/.9 is its own dyad; C5 at 10800.0 starts hour 3.
    assert groups == [["C1", "C3", "C4"], ["C2"], ["C5"]]
    assert seq["host_a"].iloc[0] == "10.0.0.1" and seq["host_b"].iloc[0] == "10.0.0.2"
    assert seq["malicious"].tolist() == [False, False, False, True, False]


def test_tokenizers(logs):
    conn = normalize_conn(read_zeek_log(logs[0]))
    by_uid = dict(zip(conn["uid"], range(len(conn))))
    pb = tokenize(conn, "protobytes")
    assert pb[by_uid["C1"]] == f"t{int(np.floor(np.log2(1023 + 1)))}" == "t10"
    assert pb[by_uid["C3"]] == "u6"  # 100 bytes -> floor(log2(101)) = 6
    assert pb[by_uid["C4"]] == "t0"  # unset bytes count as 0
    port = tokenize(conn, "port")
    assert port[by_uid["C1"]] == "t443" and port[by_uid["C3"]] == "u53"
    assert port[by_uid["C5"]] == "t10000"  # min(60000, 20000) capped at 10000
    rich = tokenize(conn, "rich")
    assert rich[by_uid["C1"]].startswith("t:SF:ssl:b3:") and rich[by_uid["C1"]].endswith(":a")
    assert rich[by_uid["C3"]].endswith(":b")  # originated by the higher address
    assert rich[by_uid["C2"]] == "t:S0:p22:b0:d0:a"
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenize(conn, "nope")


def test_flowstore_columns_work_as_conn_input(logs):
    zeek = read_zeek_log(logs[0])
    fs = zeek.rename(columns={"id.orig_h": "orig_h", "id.orig_p": "orig_p",
                              "id.resp_h": "resp_h", "id.resp_p": "resp_p"})
    fs["label"] = np.where(zeek["label"] == "Malicious", "anomalous", "normal")
    a = dyad_hour_frame(normalize_conn(zeek), "rich")
    b = dyad_hour_frame(normalize_conn(fs), "rich")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="missing column"):
        normalize_conn(pd.DataFrame({"ts": [1.0]}))


def test_windows_never_hold_the_target():
    ids = np.array([5, 6, 7, 8, 9])
    bounds = np.array([0, 3, 5])  # sequences [5, 6, 7] and [8, 9]
    lm = make_windows(ids, bounds, 3)
    assert lm.tolist() == [[PAD, PAD, BOS], [PAD, BOS, 5], [BOS, 5, 6],
                           [PAD, PAD, BOS], [PAD, BOS, 8]]
    cls = make_windows(ids, bounds, 3, include_current=True)
    assert cls.tolist() == [[PAD, BOS, 5], [BOS, 5, 6], [5, 6, 7], [PAD, BOS, 8], [BOS, 8, 9]]


def test_vocabulary_round_trip_and_unknown():
    v = Vocabulary.build(["t1", "t2", "t1", "u3"], min_count=1)
    assert v.itos[3] == "t1" and len(v) == 6
    assert v.encode(["t1", "zzz"]).tolist() == [3, UNK]
    assert Vocabulary.from_list(v.to_list()).itos == v.itos
    with pytest.raises(ValueError):
        Vocabulary.from_list(["t1"])


def test_streaming_collection_counts_malformed_lines(logs):
    rep = LogReadReport()
    seq = collect_sequences([logs[0], logs[1]], "port", rep, chunk_rows=2)
    assert rep.files == 2 and rep.flows == 10 and rep.zeek.malformed == 2
    assert len(seq) == 10 and seq["hour"].is_monotonic_increasing
