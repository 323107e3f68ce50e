"""`semiflow extract` end to end, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

from packets import ether, ip4, tcp, write_pcap

from semiflow.plugin.flowstore import FlowStore


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
