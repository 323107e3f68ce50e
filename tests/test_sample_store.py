"""The sensor's rolling sample store: what serve scored comes back byte for byte as an
extraction `semiflow train` reads (flagged flows never as normal), bounded on disk; and
`semiflow train --exclude-uids ... --store` makes the next version from it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from semiflow.cli import main
from semiflow.detector.scoring import load_scorer
from semiflow.model_store import ModelStore
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.sample_store import SensorSampleStore, pack_rows

BUNDLED = Path(str(resources.files("semiflow") / "data" / "model"))
SAMPLE = Path(str(resources.files("semiflow") / "data" / "lab-sample"))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The lab sample as serve would hold it after scoring: dense samples, per-packet
    arrays, uids, conn ids, the bundled model's scores."""
    out = tmp_path_factory.mktemp("samples") / "s.flows"
    assert main(["extract", str(SAMPLE / "capture.pcap.gz"), "-l", "256", "-o", str(out),
                 "-q"]) == 0
    st = FlowStore.open(out)
    f = st.flows
    scorer = load_scorer(BUNDLED, device="cpu")
    n = f["n_selected"].to_numpy().astype(np.int64)
    data = np.asarray(st.samples[:])
    batch = SimpleNamespace(data=data, direction=np.asarray(st.pkt_dir),
                            ts=np.asarray(st.pkt_ts), wire_len=np.asarray(st.pkt_len),
                            n_selected=n, status=np.zeros(len(f), np.int8))
    ids = list(zip(f["orig_h"], f["orig_p"], f["resp_h"], f["resp_p"], strict=True))
    return batch, list(f["uid"]), ids, scorer.score_flows(data, n), scorer


def test_pack_rows_is_the_on_disk_packing(live):
    batch, *_ = live
    packed, offsets, extent = pack_rows(batch.data, batch.n_selected)
    rebuilt = np.zeros_like(batch.data)
    for i, j in zip(*np.nonzero(offsets >= 0), strict=True):
        rebuilt[i, j, :extent[i, j]] = packed[offsets[i, j]:offsets[i, j] + extent[i, j]]
    np.testing.assert_array_equal(rebuilt, batch.data)


def test_store_round_trip_labels_and_bound(live, tmp_path):
    batch, uids, ids, scores, scorer = live
    store = SensorSampleStore(tmp_path / "s", scorer.spec, shard_flows=1000)
    for a in range(0, len(uids), 300):              # micro-batches of 300, 2 of 3 flows scored
        rows = np.arange(a, min(a + 300, len(uids)))
        rows = rows[rows % 3 != 0]
        part = SimpleNamespace(**{k: v[a:a + 300] for k, v in vars(batch).items()})
        store.observe(uids[a:a + 300], ids[a:a + 300], part, rows - a, scores[rows],
                      scorer.threshold, scorer.model_version)
    store.close()
    shards = sorted((tmp_path / "s").glob("shard-*"))
    assert len(shards) >= 2 and not list((tmp_path / "s").glob(".open-*"))
    got = [FlowStore.open(p) for p in shards]
    flows = np.concatenate([g.flows["uid"].to_numpy() for g in got])
    want = [i for i in range(len(uids)) if i % 3 != 0]
    assert list(flows) == [uids[i] for i in want] and store.written == len(want)
    dense = np.concatenate([np.asarray(g.samples[:]) for g in got])
    np.testing.assert_array_equal(dense, batch.data[want])       # the bytes the model scored
    labels = np.concatenate([g.flows["label"].to_numpy() for g in got])
    flagged = scores[want] > scorer.threshold
    assert flagged.any() and (~flagged).any()
    assert (labels == np.where(flagged, "anomalous", "normal")).all()
    assert set(got[0].flows["model_version"]) == {scorer.model_version}
    # bounded: a limit below two shards keeps only the newest
    small = SensorSampleStore(tmp_path / "b", scorer.spec, shard_flows=500, max_bytes=1)
    part = SimpleNamespace(**{k: v[:1500] for k, v in vars(batch).items()})
    for a in range(0, 1500, 500):
        small.observe(uids, ids, part, np.arange(a, a + 500), scores[a:a + 500], 0.0, "v")
    small.close()
    assert len(list((tmp_path / "b").glob("shard-*"))) == 1 and small.deleted_shards == 2


def test_train_from_the_sensor_store_into_the_model_store(live, tmp_path, capsys):
    batch, uids, ids, scores, scorer = live
    store = SensorSampleStore(tmp_path / "s", scorer.spec)
    store.observe(uids, ids, batch, np.arange(len(uids)), scores, scorer.threshold,
                  scorer.model_version)
    store.close()
    [shard] = list((tmp_path / "s").glob("shard-*"))
    confirmed = tmp_path / "confirmed.txt"
    normal = [u for u, s in zip(uids, scores, strict=True) if s <= scorer.threshold]
    confirmed.write_text("\n".join(normal[:50]) + "\n")
    assert main(["train", str(shard), "-o", str(tmp_path / "next"), "--device", "cpu",
                 "--epochs", "1", "--exclude-uids", str(confirmed), "--store",
                 str(tmp_path / "models"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "added to" in out and "(not promoted)" in out
    models = ModelStore(tmp_path / "models")
    [v] = models.versions()
    assert models.current() is None
    prov = json.loads((v.path / "provenance.json").read_text())
    used = sum(prov["parts"][k]["flows"] for k in ("train", "val", "calib"))
    assert used == len(normal) - 50                     # flagged and confirmed flows left out
