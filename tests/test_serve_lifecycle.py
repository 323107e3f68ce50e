"""`semiflow serve --models STORE`: a promotion under load swaps the model between
micro-batches (no flow lost, none answered twice, every verdict names the version and the
threshold that made it), a model with another flow-sample spec is refused while the old one
keeps serving, a shadow candidate is scored on every flow, and drift reaches Zeek as
SemiFlow::model_drift. Through the Zeek double, with the bundled model on CPU."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from semiflow.model_store import ModelStore
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.flowstore import FlowStore

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import free_port, lab_sample_batches, tiny_model  # noqa: E402
from test_models_store import variant  # noqa: E402
from test_serve import scrape, stop, wait_for  # noqa: E402
from zeek_double import ZeekDouble  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = Path(str(resources.files("semiflow") / "data" / "model"))


@pytest.fixture(scope="module")
def batches():
    """The lab sample's flows as batch.zeek publishes them, 16 flows per flow_batch."""
    return lab_sample_batches(16)


@pytest.mark.parametrize("workers", [1, 2])
def test_promote_under_load_swaps_between_batches(batches, tmp_path, workers):
    """workers=2: the model (and the store follower) lives in the pool process; each decode
    worker's verdicts name the version its merged batch was scored with."""
    reqs, msgs = batches
    store = ModelStore.open_or_create(tmp_path / "store")
    v1 = store.add(BUNDLED, reason="initial")
    v2 = store.add(variant(tmp_path, "semiflow-test-v2", 1.3), reason="retrained")
    v3 = store.add(tiny_model(tmp_path / "k4", k=4, l=256), reason="wrong spec")
    store.promote(v1, "live")
    thresholds = {v.name: v.threshold for v in store.versions()}
    logs, mport = tmp_path / "lifecycle", free_port()

    async def main():
        dbl = await ZeekDouble().start()
        cmd = [sys.executable, "-m", "semiflow", "serve", "--zeek", dbl.url,
               "--models", str(store.root), "--shadow", v2, "--follow-s", "60",
               "--drift-window", "1", "--drift-min-flows", "50", "--lifecycle-dir", str(logs),
               "--threads", "1", "--device", "cpu", "--max-batch", "64",
               "--metrics-port", str(mport), "--workers", str(workers),
               "--sample-store", str(tmp_path / "samples")]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            await wait_for(lambda: len(dbl.clients) == workers or proc.poll() is not None,
                           120, "serve connection(s)")
            assert proc.poll() is None, proc.stdout.read()
            third = len(msgs) // 3

            async def publish(part: list) -> None:
                """Paced, and dealt to the two workers' shards when there are two."""
                for i, (topic, args) in enumerate(part):
                    if workers > 1:
                        topic = f"{zw.DEFAULT_REQUEST_TOPIC}{i % 2}/"
                    await dbl.publish(topic, zw.FLOW_BATCH, args)
                    await asyncio.sleep(0.02)
            await publish(msgs[:third])
            await wait_for(lambda: len(dbl.verdicts()) > 0, 60, "first verdicts")
            store.promote(v2, "weekly retrain")
            proc.send_signal(signal.SIGHUP)       # check the store now (poll is 60 s)
            await publish(msgs[third:2 * third])
            await wait_for(lambda: any(v.model_version == v2 for v in dbl.verdicts()), 60,
                           "a verdict of the promoted version")
            store.promote(v3, "wrong spec")       # refused: v2 keeps serving
            proc.send_signal(signal.SIGHUP)
            await publish(msgs[2 * third:])
            await wait_for(lambda: len(dbl.verdicts()) >= len(reqs), 120, "all verdicts")
            await asyncio.sleep(0.5)              # nothing is answered twice
            m = scrape(mport) if workers == 1 else {}
        finally:
            out = stop(proc)
            await dbl.stop()
        return dbl, m, out, proc.returncode

    dbl, m, out, rc = asyncio.run(main())
    assert rc == 0, out[-3000:]
    verdicts = dbl.verdicts()
    assert len(verdicts) == len(reqs)                          # none lost, none twice
    assert {v.uid for v in verdicts} == {e.uid for e in reqs}
    assert {v.status for v in verdicts} == {"ok"}
    versions = [v.model_version for v in verdicts]
    first_v2 = versions.index(v2)
    assert 0 < first_v2 and set(versions[first_v2:]) == {v2}
    if workers == 1:  # one stream of micro-batches: every v1 verdict came before the swap
        assert set(versions[:first_v2]) == {v1}
    for v in verdicts:                                         # the threshold of its own model
        assert v.threshold == pytest.approx(thresholds[v.model_version])
        assert v.anomalous == (v.score > v.threshold)
    assert "refused" in out and v3 in out
    # the sensor's sample store: every scored flow once, labelled by its own model's verdict
    kept = pd.concat([FlowStore.open(p).flows for p in (tmp_path / "samples").glob("shard-*")],
                     ignore_index=True)
    assert sorted(kept["uid"]) == sorted(v.uid for v in verdicts)
    by_uid = {v.uid: v for v in verdicts}
    for r in kept.itertuples():
        assert r.model_version == by_uid[r.uid].model_version
        assert (r.label == "anomalous") == by_uid[r.uid].anomalous
    if workers > 1:  # drift goes to its log only: the pool process holds no Zeek connection
        assert (logs / "semiflow_shadow.log").exists()
        return
    assert m["semiflow_model_swaps_total"] == 1 and m["semiflow_model_refused_total"] == 1
    # shadow: every flow scored by the candidate too, written at shutdown
    shadow = [json.loads(x) for x in (logs / "semiflow_shadow.log").read_text().splitlines()]
    assert shadow[-1]["shadow_version"] == v2 and shadow[-1]["flows"] == len(reqs)
    assert m["semiflow_shadow_flows_total"] > 0
    # drift: the lab sample is not the benign lab run the bundled model was trained on
    drift = [json.loads(x) for x in (logs / "semiflow_drift.log").read_text().splitlines()]
    assert drift and any(d["drifted"] for d in drift)
    events = [a for _, n, a in dbl.received if n == zw.MODEL_DRIFT]
    assert events, "no SemiFlow::model_drift reached Zeek"
    got = zw.decode_args(zw.MODEL_DRIFT, events[0])
    assert got["model_version"] in (v1, v2) and got["psi"] > got["threshold"] == 0.25
