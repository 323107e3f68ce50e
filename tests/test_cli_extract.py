"""`semiflow extract` end to end, and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from packets import ether, ip4, tcp, write_pcap

from semiflow.plugin.flowstore import FlowStore

LAB_SAMPLE = Path(str(resources.files("semiflow") / "data" / "lab-sample"))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "semiflow", *args], capture_output=True,
                          text=True, timeout=300)


def test_extract_cli(tmp_path):
    p = tmp_path / "a.pcap"
    write_pcap(p, [(1.0, ether(ip4("1.1.1.1", "2.2.2.2", tcp(5, 80, b"hello"), 6))),
                   (2.0, b"\x00" * 20)])
    r = _run("extract", str(p), "-o", str(tmp_path / "out"), "-k", "2", "-l", "300",
             "--mask", "addresses,ttl")
    assert r.returncode == 0, r.stderr
    assert "1 flows" in r.stdout and "skipped 1 packets: not IPv4/IPv6" in r.stdout
    s = FlowStore.open(tmp_path / "out")
    assert s.samples.shape == (1, 2, 300) and s.spec.mask == ("addresses", "ttl")
    r = _run("extract", str(p), "-o", str(tmp_path / "o2"), "--strict")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not IPv4/IPv6" in r.stderr


def test_extract_cli_errors_are_one_line(tmp_path):
    r = _run("extract", str(tmp_path / "missing.pcap"), "-o", str(tmp_path / "o"),
             "--manifest", str(tmp_path / "nope.csv"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _run("extract", str(tmp_path / "x.pcap"), "-o", str(tmp_path / "o"), "-k", "0")
    assert r.returncode == 2 and "k must be >= 1" in r.stderr


def _two_flows(path):
    write_pcap(path, [(1.0, ether(ip4("1.1.1.1", "2.2.2.2", tcp(5, 80, b"hello"), 6))),
                      (2.0, ether(ip4("1.1.1.3", "2.2.2.2", tcp(6, 80, b"hi"), 6))),
                      (3.0, b"\x00" * 20)])


def test_extract_directories_recurse_and_nothing_read_is_an_error(tmp_path, capsys):
    from semiflow.cli import main
    d = tmp_path / "pcaps"
    (d / "sub" / "deeper").mkdir(parents=True)
    _two_flows(d / "a.pcap")
    _two_flows(d / "sub" / "deeper" / "b.cap")
    (d / "sub" / "README.md").write_text("not a capture\n")
    # the README's `pcaps/*/*` style: files and directories mixed on the command line
    assert main(["extract", str(d / "a.pcap"), str(d / "sub"), "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 capture(s), 4 packets used, 2 skipped, 4 flows" in out
    assert "ignored 1 file(s) in the directories that are not captures" in out
    assert "Is a directory" not in out
    assert len(FlowStore.open(tmp_path / "o").flows) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert main(["extract", str(empty), "-o", str(tmp_path / "o2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no capture found" in err and "1 other file" in err
    (tmp_path / "junk.pcap").write_bytes(b"definitely not a capture")
    assert main(["extract", str(tmp_path / "junk.pcap"), "-o", str(tmp_path / "o3"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing read from 1 capture(s)" in err
    assert "not a pcap or pcapng file" in err


def test_extract_skips_per_file_in_stdout_and_json(tmp_path, capsys):
    import json

    from semiflow.cli import main
    _two_flows(tmp_path / "a.pcap")
    write_pcap(tmp_path / "all-skipped.pcap", [(1.0, b"\x00" * 20), (2.0, b"\x01" * 30)])
    assert main(["extract", str(tmp_path / "a.pcap"), str(tmp_path / "all-skipped.pcap"),
                 "-o", str(tmp_path / "o"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 capture(s), 2 packets used, 3 skipped, 2 flows" in out
    assert "all-skipped.pcap: 0 packets used, 2 skipped (2 not IPv4/IPv6)" in out
    assert "a.pcap: 2 packets used, 1 skipped (1 not IPv4/IPv6)" in out
    inputs = json.loads((tmp_path / "o" / "extract.json").read_text())["inputs"]
    by = {i["file"].rsplit("/", 1)[-1]: i for i in inputs}
    assert by["all-skipped.pcap"]["packets"] == 0
    assert by["all-skipped.pcap"]["skipped"] == {"not IPv4/IPv6": 2}
    assert by["a.pcap"]["packets"] == 2 and by["a.pcap"]["skipped"] == {"not IPv4/IPv6": 1}


def test_corrupt_record_message_names_one_offset(tmp_path, capsys):
    from semiflow.cli import main
    p = tmp_path / "c.pcap"
    _two_flows(p)
    data = bytearray(p.read_bytes())
    first = 24 + 16 + int.from_bytes(data[24 + 8:24 + 12], "little")  # second record
    data[first + 8:first + 12] = (0x7FFFFFFF).to_bytes(4, "little")  # absurd caplen
    p.write_bytes(bytes(data))
    assert main(["extract", str(p), "-o", str(tmp_path / "o"), "-q"]) == 0
    out = capsys.readouterr().out
    assert (f"corrupt record at byte {first}: cannot resynchronise, the rest of the file "
            "skipped") in out
    assert "after byte" not in out


def test_extract_label_normal_and_help(tmp_path, capsys):
    from semiflow.cli import main
    _two_flows(tmp_path / "a.pcap")
    assert main(["extract", str(tmp_path / "a.pcap"), "-o", str(tmp_path / "o"), "--label",
                 "normal", "-q"]) == 0
    f = FlowStore.open(tmp_path / "o").flows
    assert set(f["label"]) == {"normal"} and set(f["family"]) == {"user"}
    capsys.readouterr()
    assert main(["extract", str(tmp_path / "a.pcap"), "-o", str(tmp_path / "o2"), "--label",
                 "normal", "--manifest", str(tmp_path / "m.csv")]) == 2
    assert "do not combine" in capsys.readouterr().err
    r = _run("extract", "--help")
    assert "samples.npy" not in r.stdout and "packets.bin" in r.stdout
    assert "directories" in r.stdout


def test_score_accepts_a_directory_of_captures(tmp_path, capsys):
    """`semiflow score DIR` searches DIR for captures as `semiflow extract` does (issue 15:
    a directory argument read nothing); a directory without any is one clear line."""
    d = tmp_path / "caps" / "day1"
    d.mkdir(parents=True)
    shutil.copy(LAB_SAMPLE / "capture.pcap.gz", d / "capture.pcap.gz")
    (d / "README").write_text("not a capture\n")
    from semiflow.cli import main
    assert main(["score", str(tmp_path / "caps"), "-o", str(tmp_path / "logs"), "-q"]) == 0
    assert (tmp_path / "logs" / "semiflow.log").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    capsys.readouterr()
    assert main(["score", str(empty), "-o", str(tmp_path / "l2"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no capture found" in err[0]
