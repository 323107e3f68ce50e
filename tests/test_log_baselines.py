"""Frequency baseline (rarest token), threshold calibrations, lab-style conn.log reading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from semiflow.cli import main
from semiflow.detector.logs.baselines import FrequencyBaseline
from semiflow.detector.logs.threshold import calibrate_threshold, chain_scores
from semiflow.detector.logs.tokens import dyad_hour_frame, normalize_conn, tokenize
from semiflow.training.log_train import collect_sequences

COMMON = [(443, "tcp"), (53, "udp"), (80, "tcp")]


def _conn(hours: range, extra: dict[int, list[tuple[int, str]]] | None = None,
          n_clients: int = 6) -> pd.DataFrame:
    """Each client talks to one server every hour on common ports; `extra[h]` adds flows
    (port, proto) from client 1 in hour h, labelled malicious."""
    rows = []
    for h in hours:
        for c in range(n_clients):
            for i, (port, proto) in enumerate(COMMON * (1 + c % 3)):
                rows.append({"ts": h * 3600.0 + c * 10 + i, "uid": f"C{h}_{c}_{i}",
                             "id.orig_h": f"10.0.0.{c + 1}", "id.orig_p": 40000 + i,
                             "id.resp_h": "10.0.1.1", "id.resp_p": port, "proto": proto,
                             "orig_bytes": 100 * (i + 1), "resp_bytes": 1000,
                             "label": "Benign"})
        for j, (port, proto) in enumerate((extra or {}).get(h, [])):
            rows.append({"ts": h * 3600.0 + 600 + j, "uid": f"X{h}_{j}",
                         "id.orig_h": "10.0.0.1", "id.orig_p": 50000 + j,
                         "id.resp_h": "10.0.1.1", "id.resp_p": port, "proto": proto,
                         "orig_bytes": 0, "resp_bytes": 0, "label": "Malicious"})
    return pd.DataFrame(rows)


def test_unseen_port_outranks_common_ports_and_max_is_the_rarest_token():
    base = FrequencyBaseline(tokenizer="port").fit(_conn(range(10)))
    assert base.counts_ == {"t443": 96, "u53": 96, "t80": 96}  # 8 training hours x 12
    test = _conn(range(20, 22), extra={21: [(80, "tcp"), (4444, "tcp"), (80, "tcp")]})
    out = base.score_dyad_hours(test).set_index(["ts", "host_a"])
    odd = out.loc[(21 * 3600.0, "10.0.0.1")]
    same_dyad_normal_hour = out.loc[(20 * 3600.0, "10.0.0.1")]
    assert odd["malicious"] and odd["top_tokens"][0] == "t4444"
    assert odd["score"] > out.drop(index=(21 * 3600.0, "10.0.0.1"))["score"].max()
    assert odd["verdict"] == "anomalous" and same_dyad_normal_hour["verdict"] == "normal"
    # the score is -log of the smoothed frequency of the rarest token: alpha / (N + alpha(V+1))
    assert odd["score"] == pytest.approx(-np.log(1 / (288 + 4)), rel=1e-5)
    # more flows of common ports do not raise the score (unlike a sum over flows)
    assert out.loc[(20 * 3600.0, "10.0.0.3"), "score"] == pytest.approx(
        out.loc[(20 * 3600.0, "10.0.0.1"), "score"])


def test_backoff_spares_a_known_port_on_a_new_protocol_not_a_new_port():
    train = _conn(range(10))
    test = _conn(range(20, 21), extra={20: [(443, "udp")]})
    test2 = _conn(range(20, 21), extra={20: [(4444, "udp")]})
    plain = FrequencyBaseline(tokenizer="port").fit(train)
    bo = FrequencyBaseline(tokenizer="port", backoff=0.1).fit(train)
    seq = dyad_hour_frame(normalize_conn(test), "port")
    quic = (seq["token"] == "u443").to_numpy()
    assert bo.flow_scores(seq)[quic][0] < plain.flow_scores(seq)[quic][0] - 2
    seq2 = dyad_hour_frame(normalize_conn(test2), "port")
    new = (seq2["token"] == "u4444").to_numpy()
    assert bo.flow_scores(seq2)[new][0] == pytest.approx(plain.flow_scores(seq2)[new][0])


def test_save_load_round_trip(tmp_path):
    base = FrequencyBaseline(tokenizer="protobytes", backoff=0.1).fit(_conn(range(6)))
    again = FrequencyBaseline.load(base.save(tmp_path / "b.json"))
    test = _conn(range(30, 31), extra={30: [(22, "tcp")]})
    np.testing.assert_allclose(base.score_dyad_hours(test)["score"],
                               again.score_dyad_hours(test)["score"])
    assert again.threshold_ == base.threshold_ and again.backoff == 0.1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a valid semiflow frequency baseline"):
        FrequencyBaseline.load(tmp_path / "bad.json")


def test_upper_bound_threshold_holds_where_the_quantile_overshoots():
    rng = np.random.default_rng(0)
    over_q, over_u = [], []
    for _ in range(200):  # 200 calibrations of 300 normal scores, FPR on fresh normal data
        cal = rng.normal(size=300)
        fresh = rng.normal(size=20_000)
        over_q.append((fresh > calibrate_threshold(cal, 0.01)).mean() > 0.01)
        over_u.append((fresh > calibrate_threshold(cal, 0.01, "upper")).mean() > 0.01)
    assert np.mean(over_q) > 0.3  # the plain quantile misses its target often
    assert np.mean(over_u) <= 0.08  # the 95% bound: about 5% of the time at most
    assert calibrate_threshold(np.arange(50.0), 0.01, "upper") == 49.0  # too few: the max


def test_time_split_holds_out_a_bucket_even_when_there_are_few():
    from semiflow.detector.logs.detector import split_holdout
    from semiflow.detector.logs.tokens import group_bounds

    for n_hours, held_hours in ((2, 1), (4, 1), (5, 1), (10, 2), (24, 4)):
        seq = dyad_hour_frame(normalize_conn(_conn(range(n_hours))), "port")
        b = group_bounds(seq)
        held = split_holdout(seq, b, "time", 0.2)
        hours = seq["hour"].to_numpy()[b[:-1]]
        assert len(np.unique(hours[held])) == held_hours, n_hours
        assert hours[held].min() > hours[~held].max()  # the LAST buckets


def test_flow_weighted_threshold_counts_the_flows_a_flagged_window_flags():
    # one busy window (90 flows) scores highest: 1% of WINDOWS flags it, i.e. half the flows;
    # 1% of FLOWS (1.9 of 190) may only flag windows holding one flow, so not that one
    scores = np.concatenate([np.arange(100.0), [99.5]])
    flows = np.concatenate([np.ones(100), [90.0]])
    by_window = calibrate_threshold(scores, 0.01)
    by_flow = calibrate_threshold(scores, 0.01, weights=flows)
    assert ((scores > by_window) * flows).sum() == 90
    assert by_flow == 99.5
    assert ((scores > by_flow) * flows).sum() <= 0.01 * flows.sum()
    assert ((scores >= by_flow) * flows).sum() > 0.01 * flows.sum()  # the least such score
    with pytest.raises(ValueError, match="quantile"):
        calibrate_threshold(scores, 0.01, "upper", weights=flows)
    train = _conn(range(10))
    win = FrequencyBaseline(tokenizer="port").fit(train)
    flo = FrequencyBaseline(tokenizer="port", fpr_unit="flow").fit(train)
    assert len(flo.calib_flows_) == len(flo.calib_scores_) and flo.calib_flows_.sum() > 0
    assert flo.threshold_ == calibrate_threshold(win.calib_scores_, 0.01,
                                                 weights=win.calib_flows_)


def test_chain_calibration_pools_later_blocks():
    seq = dyad_hour_frame(normalize_conn(_conn(range(8))), "port")
    seen = []

    def fit_calib(sub, holdout):
        seen.append((sub["hour"].max(), int(holdout.sum())))
        return np.ones(int(holdout.sum()))

    pooled = chain_scores(seq, fit_calib, n_blocks=4)
    assert [h for h, _ in seen] == [3 * 3600.0, 5 * 3600.0, 7 * 3600.0]  # each block in turn
    assert len(pooled) == 6 * 6  # 6 of the 8 hours, 6 dyads each
    base = FrequencyBaseline(tokenizer="port", calibration="chain").fit(_conn(range(8)))
    assert base.calibration_source_.startswith("forward-chained")
    assert len(base.calib_scores_) == 36


LAB_FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
              "duration", "pkts", "orig_ip_bytes", "resp_ip_bytes", "label", "detailedlabel"]
LAB_TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "interval", "count",
             "count", "count", "string", "string"]


def _lab_log(path, with_payload: bool = False) -> None:
    fields, types = list(LAB_FIELDS), list(LAB_TYPES)
    if with_payload:
        fields[8:8], types[8:8] = ["orig_bytes", "resp_bytes"], ["count", "count"]
    rows = [(1796013649.6, "L0", "10.77.1.1", 48078, "10.77.0.30", 1883, "tcp", 2.5, 107,
             3010, 3740, "Benign", "-"),
            (1796013950.1, "L1", "10.77.66.2", 1234, "10.77.0.10", 22, "tcp", 0.1, 12, 900,
             1100, "Malicious", "ssh_bruteforce"),
            (1796013951.1, "L2", "10.77.66.2", 1235, "10.77.0.10", 0, "icmp", "-", 2, 84, 84,
             "Malicious", "icmp_tunnel")]
    with open(path, "w") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
                "#path\tconn\n#fields\t" + "\t".join(fields) + "\n#types\t"
                + "\t".join(types) + "\n")
        for r in rows:
            r = list(r)
            if with_payload:
                r[8:8] = [r[9] - 500, r[10] - 500]
            f.write("\t".join(str(v) for v in r) + "\n")


def test_lab_conn_log_without_service_conn_state_or_payload_bytes(tmp_path):
    _lab_log(tmp_path / "labels.conn.log")
    seq = collect_sequences([tmp_path / "labels.conn.log"], "protobytes", bucket_s=300)
    assert list(seq["uid"]) == ["L0", "L1", "L2"]
    assert list(seq["malicious"]) == [False, True, True]
    assert list(seq["token"]) == ["t12", "t10", "i7"]  # IP bytes stand in: 3010+3740 -> t12
    assert seq["hour"].nunique() == 2  # 5-minute windows: 16:40 and 16:45 apart
    conn = normalize_conn(pd.read_csv(tmp_path / "labels.conn.log", sep="\t", comment="#",
                                      names=LAB_FIELDS))
    assert set(conn["conn_state"]) == {"-"} and set(conn["service"]) == {"-"}
    assert tokenize(conn, "rich")[0] == "t:-:phi:b4:d3:b"  # unset state and service
    # with payload columns (the newer lab labels), those are used, not the IP bytes
    _lab_log(tmp_path / "new.conn.log", with_payload=True)
    seq2 = collect_sequences([tmp_path / "new.conn.log"], "protobytes")
    tok = dict(zip(seq2["uid"], seq2["token"]))
    assert tok == {"L0": "t12", "L1": "t9", "L2": "i0"}
    assert seq2["hour"].nunique() == 1  # the default window is the hour


def test_cli_evaluate_reports_the_baseline_on_the_same_dyad_hours(tmp_path, capsys):
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    for path, df in ((train, _conn(range(10))),
                     (test, _conn(range(20, 23), extra={21: [(4444, "tcp")] * 3}))):
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    model = tmp_path / "m"
    assert main(["logs", "train", str(train), "-o", str(model), "--tokenizer", "port",
                 "--epochs", "1", "-q"]) == 0
    assert (model / "baseline.json").exists()
    capsys.readouterr()
    assert main(["logs", "evaluate", str(test), "--model", str(model), "--json", "-q"]) == 0
    m = json.loads(capsys.readouterr().out)
    b = m["baseline"]
    assert b["dyad_hours"] == m["dyad_hours"] == 18 and b["malicious"] == m["malicious"] == 1
    assert b["auroc"] == 1.0 and b["recall"] == 1.0 and b["fpr"] == 0.0
    assert main(["logs", "evaluate", str(test), "--model", str(model), "-q",
                 "--baseline-train", str(train)]) == 0
    assert "frequency baseline (rarest token)" in capsys.readouterr().out
