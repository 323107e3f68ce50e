"""Labels from a manifest and from a Stratosphere-style labelled conn.log."""

from __future__ import annotations

import pandas as pd
from packets import ether, ip4, udp, write_pcap

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log
from semiflow.training.extract import extract
from semiflow.training.labels import ConnLogLabels, Manifest

CONN = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\tlabel\tdetailedlabel
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tstring\tstring
10.000100\tCa\t10.0.0.1\t1000\t10.0.0.2\t53\tudp\tdns\t0.1\tMalicious\tC&C
20.000000\tCb\t10.0.0.3\t2000\t10.0.0.2\t53\tudp\t-\t-\tBenign\t-
this line is broken
#close\t2024-01-01-00-00-00
"""


def _capture(tmp_path):
    p = tmp_path / "cap.pcap"
    write_pcap(p, [(10.0, ether(ip4("10.0.0.1", "10.0.0.2", udp(1000, 53, b"a"), 17))),
                   (20.0, ether(ip4("10.0.0.3", "10.0.0.2", udp(2000, 53, b"b"), 17))),
                   (30.0, ether(ip4("10.0.0.4", "10.0.0.2", udp(3000, 53, b"c"), 17)))])
    return p


def test_conn_log_reader_handles_headers_unset_and_malformed(tmp_path):
    (tmp_path / "conn.log").write_text(CONN)
    rep = ZeekLogReport()
    df = read_zeek_log(tmp_path / "conn.log", rep)
    assert len(df) == 2 and rep.malformed == 1
    assert df["id.orig_p"].tolist() == [1000, 2000]
    assert pd.isna(df.loc[1, "duration"]) and pd.isna(df.loc[1, "service"])


def test_conn_log_labels_reach_the_flow_table(tmp_path):
    (tmp_path / "conn.log").write_text(CONN)
    out = tmp_path / "out"
    extract([str(_capture(tmp_path))], out, FlowSampleSpec(k=1, l=150),
            conn_labels=ConnLogLabels([tmp_path / "conn.log"]))
    f = FlowStore.open(out).flows.sort_values("ts")
    assert f.label.tolist() == ["anomalous", "normal", "unknown"]
    assert f.family.tolist()[0] == "C&C"


def test_manifest_labels_with_attacker_hosts(tmp_path):
    cap = _capture(tmp_path)
    (tmp_path / "manifest.csv").write_text(
        "file,source,label,family,attacker_hosts\n"
        f"{cap.name},test/src,anomalous,scan,10.0.0.3\n")
    out = tmp_path / "out"
    extract([str(cap)], out, FlowSampleSpec(k=1, l=150),
            manifest=Manifest(tmp_path / "manifest.csv"))
    f = FlowStore.open(out).flows.sort_values("ts")
    assert f.label.tolist() == ["background", "anomalous", "background"]
    assert set(f.source) == {"test/src"} and set(f.family) == {"scan"}


def test_real_labelled_zeek_log(zeek_logs_dir):
    labels = ConnLogLabels([zeek_logs_dir / "001-zeek-scenario-malicious" / "labeled-conn.log"])
    counts = labels.table.label.value_counts()
    assert counts["anomalous"] > 100 and counts["background"] > 100
