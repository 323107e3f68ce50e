"""The allow-list: the file the Zeek script reads (record fields, types, Input framework
conventions), the Python reader/writer round trip, the detector honouring it, and feedback
export -> `semiflow train`."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from semiflow.cli import main as cli_main
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.allowlist import (
    ZEEK_TYPES,
    AllowlistReport,
    AllowRule,
    add_rules,
    allowlisted,
    read_allowlist,
    write_allowlist,
)
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.training.extract import extract
from semiflow.training.labels import Manifest

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "zeek_scripts" / "allowlist.zeek"


def _zeek_record(text: str, name: str) -> dict[str, str]:
    body = re.search(rf"type {name}: record \{{(.*?)\}};", text, re.S).group(1)
    body = "\n".join(line.split("#", 1)[0] for line in body.splitlines())
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w+):\s*(\w+)", body)}


def _rules() -> list[AllowRule]:
    return [
        AllowRule(reason="backup job\twith a tab", analyst="ana", uid="CabcDEF123",
                  orig_h="10.0.0.5", orig_p=51000, resp_h="10.0.0.9", resp_p=873,
                  proto="tcp", ts=1700000000.25),
        AllowRule(reason="monitoring", analyst="bob", host="192.168.1.7/32",
                  service="161/udp"),
        AllowRule(reason="lab v6 net", host="2001:db8::/32"),
        AllowRule(reason="expired", service="8080", expires=1.0),
    ]


def test_file_matches_zeek_record_and_input_conventions(tmp_path):
    r = subprocess.run([str(Path(sys.executable).with_name("zeek-script")), "parse", "-q",
                        str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = SCRIPT.read_text()
    assert "Input::add_table" in text and "$mode=Input::REREAD" in text
    assert "@load ./allowlist" in (ROOT / "zeek_scripts" / "__load__.zeek").read_text()
    rec = {**_zeek_record(text, "AllowIdx"), **_zeek_record(text, "AllowRule")}
    assert rec == ZEEK_TYPES                       # same columns, same Zeek types
    path = write_allowlist(tmp_path / "allow.tsv", _rules())
    lines = path.read_text().splitlines()
    fields_line = [ln for ln in lines if ln.startswith("#fields\t")]
    assert len(fields_line) == 1
    header = fields_line[0].split("\t")[1:]
    assert header == list(ZEEK_TYPES)
    data = [ln for ln in lines if not ln.startswith("#")]
    assert lines.index(fields_line[0]) < lines.index(data[0])   # header before any data
    assert len(data) == 4
    for ln in data:      # every value is valid Zeek ASCII input syntax for its column type
        cols = ln.split("\t")
        assert len(cols) == len(header)
        for name, v in zip(header, cols):
            if v == "-":
                continue
            t = ZEEK_TYPES[name]
            if t == "port":
                assert re.fullmatch(r"\d+/(tcp|udp|icmp|unknown)", v), (name, v)
            elif t == "subnet":
                ipaddress.ip_network(v)
            elif t == "addr":
                ipaddress.ip_address(v)
            elif t == "time":
                float(v)
            else:
                assert "\t" not in v and v != "(empty)"


def test_round_trip_and_invalid_lines(tmp_path):
    rules = _rules()
    path = write_allowlist(tmp_path / "allow.tsv", rules)
    back = read_allowlist(path)
    assert [(r.rule, r.uid, r.host, r.service, r.orig_h, r.orig_p, r.resp_p, r.proto, r.ts,
             r.reason, r.analyst, r.expires) for r in back] == \
        [(r.rule, r.uid, r.host, r.service, r.orig_h, r.orig_p, r.resp_p, r.proto, r.ts,
          r.reason, r.analyst, r.expires) for r in rules]
    assert back[0].reason == "backup job\twith a tab"
    with open(path, "a") as f:
        f.write("rbad\t-\tnot-a-subnet\t-\t-\t-\t-\t-\t-\t-\tx\t-\t-\t-\n")
        f.write("# a comment line, skipped as Zeek does\n")
    rep = AllowlistReport()
    assert len(read_allowlist(path, rep)) == 4 and rep.invalid == 1
    merged = add_rules(path, [AllowRule(reason="new", host="10.9.0.0/16"),
                              AllowRule(reason="changed", uid="CabcDEF123")])
    assert len(merged) == 5
    assert {r.reason for r in read_allowlist(path) if r.uid == "CabcDEF123"} == {"changed"}
    with pytest.raises(ValueError):
        AllowRule(reason="nothing to match")
    with pytest.raises(ValueError):
        AllowRule(reason="x", service="99999/tcp")


def test_detector_honours_allowlist():
    rules = _rules()
    zeek_style = pd.DataFrame({
        "uid": ["CabcDEF123", "Cx1", "Cx2", "Cx3", "Cx4", "Cx5"],
        "id.orig_h": ["10.0.0.5", "10.1.1.1", "192.168.1.7", "2001:db8::1", "10.0.0.1",
                      "10.0.0.1"],
        "id.resp_h": ["10.0.0.9", "192.168.1.7", "10.2.2.2", "2001:db9::1", "10.0.0.2",
                      "10.0.0.2"],
        "id.resp_p": [873, 161, 161, 443, 8080, 161],
        "proto": ["tcp", "udp", "tcp", "tcp", "tcp", "udp"]})
    hit, which = allowlisted(zeek_style, rules)
    # uid; host+service (either endpoint); wrong proto; v6 subnet; expired rule; no host
    assert hit.tolist() == [True, True, False, True, False, False]
    assert which[0] == rules[0].rule and which[1] == rules[1].rule
    ext_style = zeek_style.rename(columns={"id.orig_h": "orig_h", "id.resp_h": "resp_h",
                                           "id.resp_p": "resp_p"})
    assert allowlisted(ext_style, rules)[0].tolist() == hit.tolist()
    assert allowlisted(zeek_style, rules, now=0.0)[0][4]          # not yet expired


def test_feedback_cli_score_export_train(corpus_dir, tmp_path, capsys):
    nd = corpus_dir / "pcaps" / "ndpi"
    m = Manifest(corpus_dir / "manifest.csv")
    normal = [str(nd / f) for f in ("chrome.pcap", "firefox.pcap", "ookla.pcap",
                                    "pluralsight.pcap")]
    extract(normal, tmp_path / "normal.flows", FlowSampleSpec(selection="payload"), manifest=m)
    assert cli_main(["train", str(tmp_path / "normal.flows"), "-o", str(tmp_path / "model"),
                     "--epochs", "1", "--device", "cpu", "--level", "packet", "-q"]) == 0
    attack = str(nd / "emotet.pcap")
    assert cli_main(["score", attack, "--model", str(tmp_path / "model"), "-o",
                     str(tmp_path / "s0"), "-q"]) == 0
    log = read_zeek_log(tmp_path / "s0" / "semiflow.log")
    scored = log[log["status"] == "scored"]
    uid = scored["uid"].iloc[0]
    allow = tmp_path / "allow.tsv"
    assert cli_main(["feedback", "mark", "--uid", uid, "--from", str(tmp_path / "s0"),
                     "--reason", "known updater", "--analyst", "ana", "-o", str(allow)]) == 0
    host = scored["id.resp_h"].iloc[-1]
    assert cli_main(["feedback", "mark", "--host", host, "--port",
                     f"{scored['id.resp_p'].iloc[-1]}/tcp", "--reason", "CDN",
                     "-o", str(allow)]) == 0
    rules = read_allowlist(allow)
    assert len(rules) == 2 and rules[0].orig_h == scored["id.orig_h"].iloc[0]
    assert cli_main(["feedback", "list", str(allow)]) == 0
    assert "2 rule(s)" in capsys.readouterr().out
    # the detector honours it: allow-listed flows are not scored and raise no notice
    assert cli_main(["score", attack, "--model", str(tmp_path / "model"), "-o",
                     str(tmp_path / "s1"), "--allowlist", str(allow), "-q"]) == 0
    log1 = read_zeek_log(tmp_path / "s1" / "semiflow.log")
    hit = allowlisted(log, rules)[0]
    assert hit.sum() >= 2
    assert (log1.loc[hit, "status"] == "allowlisted").all()
    assert log1.loc[hit, "score"].isna().all()
    notices = read_zeek_log(tmp_path / "s1" / "notice.log")
    assert not set(notices.get("uid", [])) & set(log.loc[hit, "uid"])
    # marked flows -> an extraction labelled normal that `semiflow train` accepts
    extract([attack], tmp_path / "attack.flows", FlowSampleSpec(selection="payload"), manifest=m)
    assert cli_main(["feedback", "export", str(allow), "--extract",
                     str(tmp_path / "attack.flows"), "-o", str(tmp_path / "fb.flows")]) == 0
    fb = FlowStore.open(tmp_path / "fb.flows")
    assert len(fb.flows) == int(hit.sum())
    assert (fb.flows["label"] == "normal").all() and (fb.flows["family"] == "feedback").all()
    src = FlowStore.open(tmp_path / "attack.flows")
    j = int(np.flatnonzero(src.flows["uid"] == uid)[0])
    k = int(np.flatnonzero(fb.flows["uid"] == uid)[0])
    np.testing.assert_array_equal(fb.samples[k], src.samples[j])   # bytes copied exactly
    assert cli_main(["train", str(tmp_path / "normal.flows"), str(tmp_path / "fb.flows"),
                     "-o", str(tmp_path / "model2"), "--epochs", "1", "--device", "cpu",
                     "--level", "packet", "-q"]) == 0
    assert (tmp_path / "model2" / "semiflow-model.json").exists()
    assert cli_main(["feedback", "mark", "--reason", "x", "-o", str(allow)]) == 2
