"""The whole development corpus: our flow counts against an independent dpkt implementation."""

from __future__ import annotations

import struct
import warnings

import pandas as pd
import pytest
from lab.flowtable import reference_flows  # benchmarks/ is on pytest's pythonpath

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.extract import extract
from semiflow.training.labels import Manifest


def _pcapng_interfaces(path) -> int:
    """Number of interface blocks; dpkt's pcapng reader applies the FIRST one's timestamp
    resolution to every interface, so multi-interface files give it wrong times."""
    data = open(path, "rb").read()
    if data[:4] != b"\x0a\x0d\x0d\x0a":
        return 1
    pos, n = 0, 0
    while pos + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        n += btype == 1
        if blen < 12:
            break
        pos += blen
    return n


@pytest.fixture(scope="module")
def corpus_store(corpus_dir, tmp_path_factory):
    manifest = Manifest(corpus_dir / "manifest.csv")
    files = [str(p) for p in manifest.files()]
    out = tmp_path_factory.mktemp("corpus") / "flows"
    report = extract(files, out, FlowSampleSpec(k=2, l=128, selection="payload"), manifest=manifest)
    return FlowStore.open(out), report, manifest


def test_every_file_is_read_and_counted(corpus_store):
    store, report, manifest = corpus_store
    assert report.files == len(manifest.rows)
    # Two fuzzed captures have corrupt record framing; everything else must read cleanly.
    assert len(report.bad_files) <= 2, report.bad_files
    expected = manifest.rows["packets"].astype(int).sum()
    assert report.packets + report.skipped_total >= 0.97 * expected
    assert set(store.flows["label"]) <= {"normal", "anomalous", "background"}
    assert (store.flows["status"] == "no_payload").sum() > 0  # scans are reported, not dropped


FRAG_SKIPS = {fr.SKIP_REASONS[fr.SKIP_FRAG_INCOMPLETE], fr.SKIP_REASONS[fr.SKIP_FRAG_BAD]}


def test_flow_counts_match_an_independent_implementation(corpus_store, corpus_dir):
    """The dpkt reference neither decapsulates nor reassembles: files where we did either
    (tests/test_tunnels.py, tests/test_ipfrag.py hold those) are left out, and counted."""
    store, report, manifest = corpus_store
    ours = store.flows.groupby("source_file")
    beyond = {f["file"] for f in report.per_file
              if f.get("decoded") or FRAG_SKIPS & set(f["skipped"])}
    assert 10 <= len(beyond) <= 60, sorted(beyond)
    mismatches = []
    compared = 0
    for rel in manifest.rows["file"]:
        path = str(corpus_dir / rel)
        if _pcapng_interfaces(path) > 1 or path in beyond:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference_flows(path)
        mine = ours.get_group(path) if path in ours.groups else pd.DataFrame(
            {"orig_pkts": [], "resp_pkts": []})
        compared += 1
        if len(ref) != len(mine):
            mismatches.append((rel, len(ref), len(mine)))
    assert compared > 700
    assert not mismatches, mismatches


def test_attacker_hosts_split_attack_from_background(corpus_store):
    store, _, manifest = corpus_store
    m = manifest.rows
    rows = m[(m.label == "anomalous") & (m.attacker_hosts != "")]
    f = store.flows
    for _, r in rows.head(5).iterrows():
        hosts = set(r.attacker_hosts.split())
        sub = f[f.source_file.str.endswith(r.file)]
        involved = sub.orig_h.isin(hosts) | sub.resp_h.isin(hosts)
        assert (sub[involved].label == "anomalous").all()
        assert (sub[~involved].label == "background").all()
