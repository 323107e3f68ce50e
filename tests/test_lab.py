"""The traffic lab end to end, small: two clients (curl + dig), one attacker (nmap + hydra),
about a minute of traffic in real network namespaces, then the per-flow labels checked
against the capture through `semiflow extract`.

Needs root and the lab's Debian packages (`make lab-packages`, run by `make test`); skips,
saying why, without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from lab.services import ATTACKERS
from lab.topology import leftover_namespaces

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.zeeklog import read_zeek_log
from semiflow.training.extract import extract
from semiflow.training.labels import ConnLogLabels

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["nginx", "nmap", "hydra", "sshd", "dig", "tcpdump", "unbound", "nsd"]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        return f"lab packages missing ({', '.join(missing)}): run `make lab-packages`"
    r = subprocess.run(["ip", "netns", "add", "sfltest-probe"], capture_output=True)
    if r.returncode != 0:
        return f"cannot make network namespaces here: {r.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", "sfltest-probe"], capture_output=True)
    return None


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory) -> Path:
    why = _why_not()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("lab") / "ci"
    r = subprocess.run([sys.executable, "-m", "lab.run", "--scenario", "ci", "--minutes", "1",
                        "--clients", "2", "--seed", "11", "-o", str(out)],
                       cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def test_capture_and_ledger_exist(lab_run):
    assert (lab_run / "capture.pcap").stat().st_size > 10_000
    import json
    ledger = json.loads((lab_run / "ledger.json").read_text())
    assert [e["phase"] for e in ledger] == ["nmap_syn_scan", "ssh_bruteforce"]
    # A guessing phase may end at its time limit on a busy machine: its flows are still made.
    assert all(e["status"] in ("ran", "stopped at its time limit") for e in ledger), ledger
    info = json.loads((lab_run / "run.json").read_text())
    assert all(info["services"].values()), info["services"]
    assert "nmap" in json.loads((lab_run / "versions.json").read_text())


def test_every_flow_has_exactly_one_label(lab_run, tmp_path):
    labels = read_zeek_log(lab_run / "labels.conn.log")
    keys = ["ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"]
    assert not labels.duplicated(keys).any()
    assert set(labels["label"]) == {"Benign", "Malicious"}
    report = extract([lab_run / "capture.pcap"], tmp_path / "flows", FlowSampleSpec(),
                     conn_labels=ConnLogLabels([lab_run / "labels.conn.log"]))
    assert report is not None
    flows = pd.read_parquet(tmp_path / "flows" / "flows.parquet")
    assert len(flows) == len(labels)
    assert (flows["label"] != "unknown").all(), flows[flows["label"] == "unknown"].head()


def test_attack_flows_involve_the_attacker_and_benign_never(lab_run):
    labels = read_zeek_log(lab_run / "labels.conn.log")
    attackers = {h.ip for h in ATTACKERS}
    involved = labels["id.orig_h"].isin(attackers) | labels["id.resp_h"].isin(attackers)
    bad = labels["label"] == "Malicious"
    assert (involved == bad).all()
    fams = labels.loc[bad, "detailedlabel"].value_counts()
    assert fams.get("nmap_syn_scan", 0) >= 300  # 200 ports x 2 hosts, one flow per probe
    assert fams.get("ssh_bruteforce", 0) >= 1
    assert (~bad).sum() >= 50  # curl + dig from two clients for a minute


def test_namespaces_are_gone(lab_run):
    import json
    prefix = json.loads((lab_run / "run.json").read_text())["namespace_prefix"]
    assert prefix.startswith("sfl")
    assert leftover_namespaces(prefix) == []


def test_benign_mix_can_change_for_drift_runs():
    """`lab.run --mix` (benchmarks/drift_lab.py's changed day): weights override, 0 drops an
    action, unknown actions are refused. No root needed."""
    from lab.benign import ACTIONS, BenignTraffic
    from lab.run import parse_mix

    assert parse_mix("dns=0,redis=30") == {"dns": 0.0, "redis": 30.0}
    with pytest.raises(ValueError, match="ACTION=WEIGHT"):
        parse_mix("telnet=3")
    b = BenignTraffic(None, [], Path("."), 0, weights={"dns": 0, "redis": 30})
    assert "dns" not in b.actions and b.weights["redis"] == 30
    assert b.weights["browse"] == ACTIONS["browse"][1]
