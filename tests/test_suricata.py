"""The Suricata connector against the real Suricata 7 (suricata -r, unix-socket mode, AF_PACKET).

Every test here runs the `suricata` binary with the shipped suricata/semiflow.yaml; they skip
(with the reason) only when the binary is absent. ci/install-suricata.sh installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.capture import FlowTable, ScanReport, scan_capture
from semiflow.plugin.community_id import CommunityIds
from semiflow.plugin.flowstore import batch_to_frame
from semiflow.plugin.pcap_follow import pcap_log_files
from semiflow.plugin.suricata import EveFollower

sys.path.insert(0, str(Path(__file__).parent))
import suricata_gaps as gaps  # noqa: E402
import suricata_helpers as sh  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("suricata") is None,
                                reason="suricata not installed (ci/install-suricata.sh)")

BENIGN = ["ndpi/facebook.pcap", "ndpi/google_ssl.pcap", "ndpi/443-git.pcap",
          "ndpi/443-safari.pcap", "ndpi/alexa-app.pcapng", "ndpi/bets.pcapng"]
ATTACK = ["401trg/20171220_smb_mimikatz_copy.pcap", "401trg/20171220_smb_net_user.pcap",
          "ndpi/WebattackSQLinj.pcap", "ndpi/log4j-webapp-exploit.pcap", "ndpi/emotet.pcap",
          "slips/malicious-ssh-bruteforce.pcap"]


@pytest.fixture(scope="module")
def depth() -> int:
    """The shipped stream.reassembly.depth (bytes), as Suricata reads it."""
    return gaps.suricata_depth(sh.CONFIG)


@pytest.fixture(scope="module")
def model(corpus_dir, tmp_path_factory) -> Path:
    return sh.train_small_model(corpus_dir, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def offline_runs(corpus_dir, model, tmp_path_factory):
    """suricata -r on each capture, then `semiflow suricata` on its output."""
    runs = {}
    for rel in BENIGN + ATTACK:
        out = tmp_path_factory.mktemp(Path(rel).stem.replace(".", "_"))
        sh.suricata_read(corpus_dir / "pcaps" / rel, out)
        res = subprocess.run([sys.executable, "-m", "semiflow", "suricata", "--pcap-dir",
                              str(out), "--eve", str(out / "eve.json"), "--model", str(model),
                              "-o", str(out / "semiflow.json"), "--device", "cpu",
                              "--report", str(out / "report.json")],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        runs[rel] = out
    return runs


def test_community_id_matches_suricata(offline_runs):
    ids = CommunityIds()
    n = 0
    for out in offline_runs.values():
        for r in sh.eve_records(out / "eve.json", "flow"):
            if r["proto"] in ("TCP", "UDP"):
                assert ids.one(r["proto"], r["src_ip"], r["dest_ip"], r["src_port"],
                               r["dest_port"]) == r["community_id"]
                n += 1
    assert n > 50


def test_same_address_flows_join_despite_suricata_community_id_bug(corpus_dir, model, tmp_path):
    """Suricata < 7.0.12 orders the ports of a flow whose two addresses are equal by their
    byte-swapped value (OISF ticket 5689), so its community_id is not the specification's;
    the connector still finds Suricata's flow_id for every such flow."""
    out = tmp_path / "rce"
    sh.suricata_read(corpus_dir / "pcaps" / "ndpi" / "WebattackRCE.pcap", out)
    ids = CommunityIds()
    eve_cids = {r["community_id"] for r in sh.eve_records(out / "eve.json", "flow")}
    same = [r for r in sh.eve_records(out / "eve.json", "flow") if r["src_ip"] == r["dest_ip"]]
    conn = sh.connector(model, out, tmp_path / "semiflow.json", None)
    conn.step(final=True)
    recs = sh.eve_records(tmp_path / "semiflow.json", "semiflow")
    loopback = [r for r in recs if r["src_ip"] == r["dest_ip"]]
    print(f"\n{len(loopback)} same-address flows; {sum('flow_id' in r for r in loopback)} "
          f"joined; Suricata logged {len(same)}")
    assert len(loopback) > 400
    assert all("flow_id" in r for r in recs)
    # the alias is exactly what this Suricata logs (7.0.10: the bug; >= 7.0.12: no alias)
    for r in loopback:
        alias = ids.suricata_same_host(r["proto"], r["src_ip"], r["dest_ip"], r["src_port"],
                                       r["dest_port"])
        assert r["community_id"] in eve_cids or alias in eve_cids


def test_every_selected_suricata_flow_gets_a_joined_verdict(corpus_dir, offline_runs, model):
    """Coverage: each flow Suricata logged whose raw packets the spec selects has a record."""
    from semiflow.detector.scoring import load_scorer
    spec = load_scorer(model, device="cpu").spec
    ids = CommunityIds()
    selected = covered = joined = 0
    for rel, out in offline_runs.items():
        # what the spec selects, from the raw capture (the offline path)
        sel_cids = set()
        for b in scan_capture(corpus_dir / "pcaps" / rel, FlowTable(spec), ScanReport()):
            f = batch_to_frame(b, rel)
            for c, n in zip(ids.for_flows(f), f["n_selected"]):
                if n > 0:
                    sel_cids.add(c)
        recs = sh.eve_records(out / "semiflow.json", "semiflow")
        by_cid = {}
        for r in recs:
            by_cid.setdefault(r["community_id"], []).append(r)
        for fl in sh.eve_records(out / "eve.json", "flow"):
            if fl["community_id"] not in sel_cids:
                continue
            selected += 1
            got = [r for r in by_cid.get(fl["community_id"], [])
                   if r["semiflow"]["status"] == "ok"]
            covered += bool(got)
            joined += any(r.get("flow_id") == fl["flow_id"] for r in got)
        for r in recs:   # every record is well-formed EVE
            assert r["event_type"] == "semiflow" and r["semiflow"]["model"] == "semiflow-test"
            assert (r["semiflow"]["score"] is None) == (r["semiflow"]["verdict"] == "unscored")
    print(f"\ncoverage: {covered}/{selected} selected Suricata flows have a scored semiflow "
          f"record; {joined} carry Suricata's flow_id")
    assert selected > 100
    assert covered / selected >= 0.97
    assert joined / selected >= 0.95


def test_attack_captures_score_higher_than_benign(offline_runs):
    def mean_score(out):
        s = [r["semiflow"]["score"] for r in sh.eve_records(out / "semiflow.json", "semiflow")
             if r["semiflow"]["score"] is not None]
        return float(np.mean(s))
    ben = [mean_score(offline_runs[r]) for r in BENIGN]
    att = [mean_score(offline_runs[r]) for r in ATTACK]
    print(f"\nmean flow score per capture: benign {np.round(ben, 4)} attack {np.round(att, 4)}")
    assert np.mean(att) > np.mean(ben)


@pytest.mark.parametrize("spec", [FlowSampleSpec(k=4, l=256, selection="payload"),
                                  FlowSampleSpec(k=8, l=256, selection="all")],
                         ids=["k4-payload", "k8-all"])
def test_pcap_log_samples_differ_only_for_documented_causes(corpus_dir, offline_runs, depth,
                                                             spec):
    """Per flow, pcap-log vs the raw capture: the same flows, and every sample that differs
    falls in a cause docs/suricata.md explains (tests/suricata_gaps.py); none unexplained."""
    total = gaps.Breakdown()
    for rel, out in offline_runs.items():
        total.add(gaps.explain(corpus_dir / "pcaps" / rel, out, spec, depth=depth))
    print("\n" + "\n".join(total.lines()))
    assert total.raw_flows > 200
    assert total.unexplained == 0, total.examples.get("unexplained")
    # --runmode single: pcap-log in capture order, so one pcap-log flow per raw flow
    assert total.late_packets == 0 and total.log_flows == total.raw_flows
    assert total.outcomes["split_reordered"] == total.outcomes["merged"] == 0
    assert total.outcomes["same"] + total.outcomes["timestamp_rounding"] >= 0.99 * total.raw_flows


def test_multithreaded_pcap_log_splits_are_reordering(corpus_dir, model, depth, tmp_path):
    """Several worker threads (autofp) write pcap-log out of timestamp order: flows split,
    each split is the reordering (none unexplained), and the connector reports it."""
    pcap = corpus_dir / "pcaps" / "ndpi" / "gnutella.pcap"
    out = tmp_path / "autofp"
    sh.suricata_read(pcap, out, "--runmode", "autofp")
    from semiflow.detector.scoring import load_scorer
    bd = gaps.explain(pcap, out, load_scorer(model, device="cpu").spec, depth=depth)
    conn = sh.connector(model, out, tmp_path / "semiflow.json", None)
    conn.step(final=True)
    rep = conn.report()
    print("\n" + "\n".join(bd.lines()) + f"\nconnector: {rep['late_packets']} late packets, "
          f"up to {rep['max_lag_s']} s")
    assert bd.unexplained == 0, bd.examples.get("unexplained")
    if bd.outcomes["split_reordered"]:
        assert bd.late_packets > 0
    if bd.max_lag > 1.0:     # the kernel counts packets more than 1 s behind the clock
        assert rep["late_packets"] > 0 and rep["max_lag_s"] == pytest.approx(bd.max_lag,
                                                                            abs=1e-3)


# --- bad input and exact resume --------------------------------------------------------------
def test_growing_truncated_pcap_log_and_restart(offline_runs, model, tmp_path):
    """A pcap-log file read while written (cut mid-record), rotated, and a restart midway:
    the same verdicts as one offline pass, none twice, none lost."""
    src = offline_runs["ndpi/alexa-app.pcapng"]
    whole = sorted(r["semiflow"]["uid"] for r in
                   sh.eve_records(src / "semiflow.json", "semiflow"))
    data = pcap_log_files(src)[0].read_bytes()
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(src / "eve.json", live / "eve.json")
    cut = len(data) // 2 + 7          # mid-record, surely
    rotated = 24 + (len(data) - 24) * 3 // 4
    # file 1: grows in odd-sized pieces, then rotation; file 2 = header + the rest
    name1, name2 = live / "log.pcap.1000.1", live / "log.pcap.1000.2"
    pieces = [0, 24 + 5, cut, rotated]
    out = tmp_path / "semiflow.json"
    state = tmp_path / "state"
    conn = sh.connector(model, live, out, state)
    for a, b in zip(pieces, pieces[1:]):
        with open(name1, "ab") as f:
            f.write(data[a:b])
        conn.step()
        if b == cut:                    # restart in the middle of a growing file
            conn.close()
            conn = sh.connector(model, live, out, state)
    split = sh.next_record_boundary(data, rotated)
    with open(name1, "ab") as f:
        f.write(data[rotated:split])
    name2.write_bytes(data[:24] + data[split:])
    conn.step(final=True)
    conn.close()
    got = sorted(r["semiflow"]["uid"] for r in sh.eve_records(out, "semiflow"))
    assert conn.counters.restarts == 1
    assert len(got) == len(set(got)) == len(whole)
    assert conn.follower.counters.truncated_tails == 0
    # same community ids and scores as the single offline pass
    a = sh.scores_by_cid(src / "semiflow.json")
    b = sh.scores_by_cid(out)
    assert a.keys() == b.keys()
    diff = {k: (a[k], b[k]) for k in a if not np.allclose(a[k], b[k], equal_nan=True)}
    assert not diff


def test_truncated_tail_of_complete_file_is_counted(offline_runs, model, tmp_path):
    src = offline_runs["ndpi/emotet.pcap"]
    data = pcap_log_files(src)[0].read_bytes()
    (tmp_path / "log.pcap.1.0").write_bytes(data[:-5])
    (tmp_path / "log.pcap.2.0").write_bytes(data[:24])
    conn = sh.connector(model, tmp_path, tmp_path / "out.json", None,
                        eve=src / "eve.json")
    conn.step(final=True)
    assert conn.follower.counters.truncated_tails == 1
    assert conn.follower.counters.files_done == 2
    assert conn.counters.scored > 0


def test_non_json_eve_lines_and_rotation_are_counted(offline_runs, tmp_path):
    src = offline_runs["ndpi/emotet.pcap"] / "eve.json"
    lines = src.read_text().splitlines()
    eve = tmp_path / "eve.json"
    eve.write_text("\n".join(lines[:3]) + "\nnot json at all\n[1, 2]\n{\"truncated\": \n")
    fol = EveFollower(eve)
    got = fol.poll()
    assert len(got) == 3 and fol.counters.malformed == 3
    with open(eve, "a") as f:
        f.write(lines[3][:10])          # a line still being written: not read yet
    assert fol.poll() == []
    with open(eve, "a") as f:
        f.write(lines[3][10:] + "\n")
    assert len(fol.poll()) == 1
    eve.rename(tmp_path / "eve.json.1")  # rotation: the rest goes to a new file
    eve.write_text("\n".join(lines[4:]) + "\n")
    assert len(fol.poll()) == len(lines) - 4
    assert fol.counters.rotations == 1 and fol.counters.malformed == 3


def test_socket_gone_is_counted_and_work_kept(offline_runs, model, tmp_path):
    from semiflow.plugin.suricata_socket import DatasetFeeder, SuricataSocket
    src = offline_runs["401trg/20171220_smb_net_user.pcap"]
    feeder = DatasetFeeder(SuricataSocket(str(tmp_path / "no.sock")), "semiflow-flagged")
    conn = sh.connector(model, src, tmp_path / "out.json", None, feeder=feeder,
                        threshold=-1e30)
    conn.step(final=True)
    assert conn.counters.anomalous > 0
    assert feeder.counters.socket_errors >= 1 and feeder.counters.added == 0
    assert len(feeder.queued) > 0       # kept, sent once the socket is back


# --- closed loop: unix-socket mode ----------------------------------------------------------
def test_closed_loop_dataset_alerts_and_ttl(corpus_dir, model, tmp_path):
    from semiflow.plugin.suricata_socket import DatasetFeeder, SuricataSocket
    pcap = corpus_dir / "pcaps" / "401trg" / "20171220_smb_net_user.pcap"
    sock = tmp_path / "suricata.socket"
    with sh.SuricataUnixSocket(sock, tmp_path / "sl") as sur:
        first = tmp_path / "run1"
        sur.pcap_file(pcap, first)
        assert sh.alerts(first / "eve.json") == []       # nothing flagged yet: no alert
        clock = sh.FakeClock()
        feeder = DatasetFeeder(SuricataSocket(str(sock)), "semiflow-flagged", "ip",
                               ttl=60.0, rate=5, clock=clock)
        conn = sh.connector(model, first, tmp_path / "semiflow.json", None, feeder=feeder,
                            threshold=-1e30, clock=clock)
        conn.step(final=True)
        flagged = sorted(feeder.active)
        assert flagged and feeder.counters.added == len(flagged)
        assert feeder.counters.socket_errors == 0 and feeder.counters.refused == 0
        host = flagged[0]
        assert sur.lookup(host)
        second = tmp_path / "run2"
        sur.pcap_file(pcap, second)
        hits = [a for a in sh.alerts(second / "eve.json") if a["src_ip"] in flagged]
        assert hits and all(a["alert"]["signature_id"] == 9100001 for a in hits)
        assert {a["src_ip"] for a in hits} <= set(flagged)
        # TTL: the host leaves the dataset, Suricata stops alerting
        clock.t += 61.0
        feeder.pump()
        assert feeder.counters.removed == len(flagged) and not feeder.active
        assert not sur.lookup(host)
        third = tmp_path / "run3"
        sur.pcap_file(pcap, third)
        assert sh.alerts(third / "eve.json") == []


def test_rate_limit(model, tmp_path):
    from semiflow.plugin.suricata_socket import DatasetFeeder, SuricataSocket
    sock = tmp_path / "s.sock"
    with sh.SuricataUnixSocket(sock, tmp_path / "sl"):
        clock = sh.FakeClock()
        feeder = DatasetFeeder(SuricataSocket(str(sock)), "semiflow-flagged", "ip",
                               ttl=600, rate=3, clock=clock)
        for i in range(7):
            feeder.add(f"10.1.2.{i}")
        feeder.pump()
        assert feeder.counters.added == 3 and len(feeder.queued) == 4
        feeder.pump()                     # same second: nothing more
        assert feeder.counters.added == 3
        clock.t += 1.0
        feeder.pump()
        clock.t += 1.0
        feeder.pump()
        assert feeder.counters.added == 7 and not feeder.queued


# --- live: AF_PACKET in network namespaces ---------------------------------------------------
def test_live_af_packet_in_namespaces(model, tmp_path):
    why = sh.netns_unavailable()
    if why:
        print(f"\nSKIP live test: {why}")
        pytest.skip(why)
    with sh.NetnsPair("sfh4") as ns:
        logdir = tmp_path / "live"
        logdir.mkdir()
        sur = ns.start_suricata(logdir)
        try:
            sh.wait_for(lambda: any(logdir.glob("log.pcap*")) or sh.suricata_started(logdir),
                        30)
            conn_out = tmp_path / "semiflow.json"
            follower = subprocess.Popen(
                [sys.executable, "-m", "semiflow", "suricata", "--pcap-dir", str(logdir),
                 "--eve", str(logdir / "eve.json"), "--model", str(model), "-o",
                 str(conn_out), "--device", "cpu", "--follow", "--no-state", "--poll", "0.2",
                 "--join-wait", "0", "--report", str(tmp_path / "rep.json")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            n_req = ns.http_traffic(requests=6)
            assert n_req == 6
            # records appear while Suricata still runs (flows end: FIN + close delay)
            ok = sh.wait_for(lambda: len(sh.live_records(conn_out, ns.server_ip)) >= 3, 60)
        finally:
            ns.stop_suricata(sur)
        follower.terminate()
        out, err = follower.communicate(timeout=60)
        recs = sh.live_records(conn_out, ns.server_ip)
        print(f"\nlive: {len(recs)} semiflow records for flows to {ns.server_ip}\n{out}")
        assert ok, err
        assert all(r["semiflow"]["status"] == "ok" for r in recs)
        assert {r["dest_port"] for r in recs} == {ns.port}
