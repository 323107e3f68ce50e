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
TESTING = ROOT / "testing"
ZEEK_FILES = sorted(SCRIPTS.rglob("*.zeek")) + sorted(TESTING.rglob("*.zeek"))


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
    assert {"__load__.zeek", "main.zeek", "collect.zeek", "transport.zeek", "batch.zeek",
            "offline.zeek", "cluster.zeek", "verdict.zeek"} <= names
    meta = (ROOT / "zkg.meta").read_text()
    assert "script_dir = zeek_scripts" in meta
    # Tests live beside the scripts, not inside script_dir (review S2), and zkg's
    # test_command runs them.
    assert not (SCRIPTS / "testing").exists()
    assert "test_command = cd testing && btest -c btest.cfg" in meta
    assert "user_vars" not in meta and "config_files" not in meta  # review S1
    loads = re.findall(r"@load \./(\w+)", (SCRIPTS / "__load__.zeek").read_text())
    assert sorted(loads) == sorted(n[:-5] for n in names if n != "__load__.zeek")


@pytest.mark.parametrize("path", ZEEK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
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
    assert set(zw.EVENTS) == {zw.FLOW_REQUEST, zw.VERDICT, zw.FLOW_BATCH, zw.VERDICT_BATCH,
                              zw.MODEL_DRIFT}
    for name in zw.EVENTS:
        assert name in decl, f"{name} not declared in main.zeek"
        assert decl[name] == list(zw.EVENTS[name]), name


def test_declaration_parser_sees_differences():
    text = "global verdict: event(uid: string, score: count);"
    assert zeek_event_declarations(text) == {
        "SemiFlow::verdict": [("uid", "string"), ("score", "count")]}


def test_publish_calls_pass_arguments_in_declared_order():
    text = _strip_comments((SCRIPTS / "transport.zeek").read_text())
    calls = re.findall(r"(?:Cluster|Broker)::publish\(topic,\s*SemiFlow::flow_batch,(.*?)\);",
                       text, re.S)
    assert len(calls) == 2  # one per version branch
    # The batch's own vectors are named b_* in batch.zeek; send_batch's parameters
    # carry the declared names, and reply_topic/k/snaplen are the module's.
    want = [n for n, _ in zw.EVENTS[zw.FLOW_BATCH]]
    for call in calls:
        assert [a.strip() for a in call.split(",")] == want
    # Nothing publishes the per-flow event any more (older package versions did).
    assert "SemiFlow::flow_request" not in "".join(
        _strip_comments(p.read_text()) for p in SCRIPTS.glob("*.zeek") if p.name != "main.zeek")


@pytest.mark.parametrize("name,files", [(zw.VERDICT, ("verdict.zeek", "offline.zeek")),
                                        (zw.VERDICT_BATCH, ("verdict.zeek", "offline.zeek")),
                                        (zw.MODEL_DRIFT, ("drift.zeek",))])
def test_verdict_handler_signatures_match(name, files):
    for f in files:
        text = _strip_comments((SCRIPTS / f).read_text())
        m = re.search(rf"event\s+{name}\((.*?)\)", text, re.S)
        assert m, f"{f}: no handler for {name}"
        got = [tuple(s.strip() for s in " ".join(p.split()).split(":", 1))
               for p in m.group(1).split(",")]
        assert got == list(zw.EVENTS[name]), f




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


# ---- static checks for the review's findings (docs/zeek-review-status.md) -------------
def _scripts() -> dict[str, str]:
    return {p.name: _strip_comments(p.read_text()) for p in SCRIPTS.glob("*.zeek")}


def test_version_checks_load_base_misc_version():
    """L1: Version::at_least is defined by base/misc/version, which bare mode lacks."""
    uses = [n for n, t in _scripts().items() if "Version::at_least" in t]
    assert uses
    for n in uses:
        assert "@load base/misc/version" in _scripts()[n], n


def test_no_global_security_or_transport_overrides():
    """R6: the package never turns Broker's TLS off; S4/R1: no Broker WebSocket listener
    on versions that have Cluster::listen_websocket."""
    t = _scripts()
    assert not any("disable_ssl" in x for x in t.values())
    listen = t["transport.zeek"].split("function listen_endpoint()", 1)[1]
    listen = listen.split("event zeek_init", 1)[0]
    # Broker::listen_websocket only in the innermost (< 7.2) branch.
    assert listen.index('Version::at_least("7.2")') < listen.index("Broker::listen_websocket")
    assert listen.count("Cluster::listen_websocket") == 2  # 8.0+ and 7.2 option shapes
    assert "Broker::listen_websocket" not in t["cluster.zeek"]


def test_one_new_packet_handler_and_no_flip_handler():
    """P1: one new_packet dispatch per packet; R8: no connection_flipped re-inversion."""
    handlers = [n for n, t in _scripts().items() for _ in re.finditer(r"event\s+new_packet\(", t)]
    assert handlers == ["collect.zeek"]
    assert not any("connection_flipped" in t for t in _scripts().values())


def test_timers_do_not_pin_connection_records():
    """P2: scheduled events carry ids, never the connection record."""
    t = _scripts()
    for name, text in t.items():
        for m in re.finditer(r"schedule\s+[^{]+\{\s*([\w:]+)\((.*?)\)\s*\}", text):
            assert not re.search(r"(^|,)\s*c\s*(,|$)", m.group(2)), (name, m.group(0))
    decl = zeek_event_declarations(t["collect.zeek"] + t["batch.zeek"])
    for ev, args in decl.items():
        assert all(typ != "connection" for _, typ in args), ev


def test_end_of_trace_and_shutdown_are_handled():
    """R5: pending flows are logged at zeek_done; the end of a trace flushes collection."""
    t = _scripts()
    assert re.search(r"event zeek_done\(\)[^{]*\{[^}]*pending", t["verdict.zeek"], re.S)
    assert "event Pcap::file_done(path: string)" in t["offline.zeek"]


def test_btests_have_their_traces_and_baselines():
    """R3/R4: every btest that reads a trace finds it, every btest-diff has a baseline,
    and the tests end by themselves (no listener, or terminate())."""
    tests = sorted((TESTING / "tests").glob("*.zeek"))
    assert tests
    for t in tests:
        text = t.read_text()
        for trace in re.findall(r"\$TRACES/([\w.\-]+)", text):
            assert (TESTING / "Traces" / trace).exists(), (t.name, trace)
        for out in re.findall(r"@TEST-EXEC: btest-diff (\S+)", text):
            assert (TESTING / "Baseline" / f"tests.{t.stem}" / out).exists(), (t.name, out)
        assert "redef SemiFlow::listen_websocket = F;" in text, t.name


def test_committed_trace_is_what_the_script_writes(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_trace",
                                                  TESTING / "Scripts" / "make-trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write(tmp_path / "t.pcap")
    assert (tmp_path / "t.pcap").read_bytes() == \
        (TESTING / "Traces" / "semiflow-small.pcap").read_bytes()


def test_btest_baselines_follow_from_the_python_model_of_the_scripts():
    """The btests' baselines (predicted: Zeek cannot run here) agree with the Python model
    of collect.zeek (plugin/zeek_selection.py) and batch.zeek (BatchPolicy) on the trace."""
    from semiflow.plugin.zeek_selection import BatchPolicy, ZeekSideConfig, capture_to_events

    evs = capture_to_events([TESTING / "Traces" / "semiflow-small.pcap"],
                            ZeekSideConfig(k=8, snaplen=1664, select_all=True))
    assert [e.kind for e in evs] == ["request"] * 4
    # end-of-trace.zeek: every flow pending at zeek_done, with its packet count.
    counts: dict[int, int] = {}
    for e in evs:
        counts[len(e.args[9])] = counts.get(len(e.args[9]), 0) + 1
    want = "".join(f"{n:7d} timeout\tshutdown before verdict\t{p}\n"
                   for p, n in sorted(counts.items(), key=lambda x: str(x[0])))
    assert (TESTING / "Baseline" / "tests.end-of-trace" / "statuses").read_text() == want

    # batching.zeek: batch_wait = 1 sec, the end of the trace publishes the rest.
    def batches(wait: float) -> list[int]:
        pol, out = BatchPolicy(64, wait), []
        for e in sorted(evs, key=lambda e: e.ts):
            for b in (pol.due(e.ts), pol.add(e.uid, e.ts)):
                if b:
                    out.append(len(b))
        last = pol.flush(max(e.ts for e in evs))
        return out + ([len(last)] if last else [])
    got = batches(1.0)
    assert (TESTING / "Baseline" / "tests.batching" / "output").read_text() == \
        f"{len(got)} batches, {sum(got)} flows\n"
    assert got == [1, 3] and batches(0.02) == [1, 1, 1, 1]
    assert batches(float("inf")) == [1, 3]  # the first flow never waits
