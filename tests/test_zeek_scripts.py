"""The Zeek package: every script parses, and the wire format matches the Python side."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semiflow.plugin import zeek_wire as zw

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "zeek_scripts"
ZEEK_FILES = sorted(SCRIPTS.rglob("*.zeek"))


def _zeek_script() -> str:
    exe = Path(sys.executable).with_name("zeek-script")
    if exe.exists():
        return str(exe)
    found = shutil.which("zeek-script")
    if not found:
        pytest.skip("zeek-script (PyPI zeekscript) not installed")
    return found


def test_package_layout():
    names = {p.name for p in SCRIPTS.glob("*.zeek")}
    assert {"__load__.zeek", "main.zeek", "collect.zeek", "transport.zeek",
            "cluster.zeek", "verdict.zeek"} <= names
    meta = (ROOT / "zkg.meta").read_text()
    assert "script_dir = zeek_scripts" in meta
    loads = re.findall(r"@load \./(\w+)", (SCRIPTS / "__load__.zeek").read_text())
    assert sorted(loads) == sorted(n[:-5] for n in names if n != "__load__.zeek")


@pytest.mark.parametrize("path", ZEEK_FILES, ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_zeek_script_parses(path):
    # zeek-script parse: exit 0 ok, 1 hard parse error, 2 error nodes in the tree.
    r = subprocess.run([_zeek_script(), "parse", "-q", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"{path}: zeek-script exit {r.returncode}\n{r.stdout}{r.stderr}"


def test_parse_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.zeek"
    bad.write_text("event zeek_init() { local x = ; }\n")
    r = subprocess.run([_zeek_script(), "parse", "-q", str(bad)], capture_output=True,
                       timeout=60)
    assert r.returncode != 0


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def zeek_event_declarations(text: str) -> dict[str, list[tuple[str, str]]]:
    """`global NAME: event(a: T, ...);` in module SemiFlow -> {SemiFlow::NAME: [(a, T)]}."""
    text = _strip_comments(text)
    out = {}
    for m in re.finditer(r"global\s+(\w+)\s*:\s*event\s*\((.*?)\)\s*;", text, re.S):
        args = []
        for part in m.group(2).split(","):
            part = " ".join(part.split())
            if not part:
                continue
            name, typ = (s.strip() for s in part.split(":", 1))
            args.append((name, typ))
        out[f"SemiFlow::{m.group(1)}"] = args
    return out


def test_wire_events_match_zeek_declarations():
    decl = zeek_event_declarations((SCRIPTS / "main.zeek").read_text())
    for name in (zw.FLOW_REQUEST, zw.VERDICT):
        assert name in decl, f"{name} not declared in main.zeek"
        assert decl[name] == list(zw.EVENTS[name]), name


def test_declaration_parser_sees_differences():
    text = "global verdict: event(uid: string, score: count);"
    assert zeek_event_declarations(text) == {
        "SemiFlow::verdict": [("uid", "string"), ("score", "count")]}


def test_publish_calls_pass_arguments_in_declared_order():
    text = _strip_comments((SCRIPTS / "transport.zeek").read_text())
    calls = re.findall(r"(?:Cluster|Broker)::publish\(topic,\s*SemiFlow::flow_request,(.*?)\);",
                       text, re.S)
    assert len(calls) == 2  # one per version branch
    want = [n for n, _ in zw.EVENTS[zw.FLOW_REQUEST]]
    for call in calls:
        assert [a.strip() for a in call.split(",")] == want


def test_verdict_handler_signature_matches():
    text = _strip_comments((SCRIPTS / "verdict.zeek").read_text())
    m = re.search(r"event\s+SemiFlow::verdict\((.*?)\)", text, re.S)
    got = [tuple(s.strip() for s in " ".join(p.split()).split(":", 1))
           for p in m.group(1).split(",")]
    assert got == list(zw.EVENTS[zw.VERDICT])


def test_wire_doc_lists_every_argument_in_order():
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    for name, args in zw.EVENTS.items():
        section = doc.split(f"`{name}`", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| (\d+) \| (\w+) \| ([\w ]+?) \|", section, re.M)
        assert [(n, t) for _, n, t in rows] == list(args), name


def test_event_roundtrip_and_type_checks():
    v = zw.Verdict("Cabc", "ok", 1.5, 1.0, True, 8, "semiflow", "1", "")
    msg = v.message("zeek/semiflow/verdict/")
    topic, name, args = zw.parse_event(msg)
    assert (topic, name) == ("zeek/semiflow/verdict/", zw.VERDICT)
    assert zw.Verdict.from_args(args) == v
    args[5] = {"@data-type": "integer", "data": 8}  # count vs integer must match exactly
    with pytest.raises(zw.WireError) as e:
        zw.Verdict.from_args(args)
    assert e.value.kind == "type"
    with pytest.raises(zw.WireError):
        zw.flow_request_from_args(args)
    req = zw.flow_request_args("C1", "t/", "10.0.0.1", "1/tcp", "10.0.0.2", "80/tcp", 1, 8,
                               0, [b"\x00\xff"], [1.0], [60], [True])
    enc = zw.event_message("r/", zw.FLOW_REQUEST, req)
    fr = zw.flow_request_from_args(zw.parse_event(enc)[2])
    assert fr.frames == [b"\x00\xff"] and fr.is_orig == [True]
    enc["data"][2]["data"][1]["data"][9]["data"][0]["data"] = "!!notbase64"
    with pytest.raises(zw.WireError) as e:
        zw.flow_request_from_args(zw.parse_event(enc)[2])
    assert e.value.kind == "base64"
