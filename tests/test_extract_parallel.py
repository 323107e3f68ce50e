"""`semiflow extract --jobs`: the same extraction as one process, captures scanned alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from semiflow.plugin.flowstore import FlowStore

KEY = ["source_file", "ts", "orig_h", "orig_p", "resp_h", "resp_p", "proto"]


def _extract(out, files, *extra):
    r = subprocess.run([sys.executable, "-m", "semiflow", "extract", *map(str, files), "-o",
                        str(out), "-q", "-l", "256", *extra], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_parallel_extract_equals_sequential_per_capture(tmp_path, corpus_dir):
    files = sorted((corpus_dir / "pcaps" / "ndpi").rglob("*.pcap*"))[:40]
    seq_out, par_out = tmp_path / "seq", tmp_path / "par"
    seq = _extract(seq_out, files)
    par = _extract(par_out, files, "--jobs", "2")
    assert seq.splitlines()[0].split(" -> ")[0] == par.splitlines()[0].split(" -> ")[0]
    a, b = FlowStore.open(seq_out), FlowStore.open(par_out)
    assert len(a.flows) == len(b.flows) > 100
    assert list(b.flows["row"]) == list(range(len(b.flows)))
    m = a.flows.merge(b.flows, on=KEY, suffixes=("_a", "_b"))
    assert len(m) == len(a.flows)                            # every flow, once
    assert (m["label_a"] == m["label_b"]).all() and (m["n_selected_a"] == m["n_selected_b"]).all()
    assert np.array_equal(a.samples.rows(m["row_a"].to_numpy()),
                          b.samples.rows(m["row_b"].to_numpy()))
    for name in ("pkt_dir", "pkt_len", "pkt_ts"):
        assert np.array_equal(getattr(a, name)[m["row_a"].to_numpy()],
                              getattr(b, name)[m["row_b"].to_numpy()])
    ja, jb = (json.loads((d / "extract.json").read_text()) for d in (seq_out, par_out))
    assert ja["packets"] == jb["packets"] and ja["skipped"] == jb["skipped"]
    assert [i["file"] for i in ja["inputs"]] == [i["file"] for i in jb["inputs"]]
    assert not (par_out / ".parts").exists()
