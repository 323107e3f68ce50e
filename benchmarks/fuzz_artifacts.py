"""Fuzz targets over model artifacts: packet- and flow-level, through load_scorer
(benchmarks/fuzz.py)."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fuzz_base import ROOT, Target, Uncounted
from fuzz_mutate import dumps, mutate_bytes, mutate_json, set_uint


# ---- model artifacts ------------------------------------------------------------------------
def tiny_flow_artifact(out: Path) -> Path:
    """A flow-level artifact with seeded random weights (fitting is not what is tested)."""
    import torch

    from semiflow.detector.artifact import save_flow_artifact
    from semiflow.detector.models.semiflow_flowartifact import flow_modules
    from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
    from semiflow.detector.models.semiflow_flownet import FlowNetConfig
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.detector.threshold import Threshold

    torch.manual_seed(0)
    cfg = FlowNetConfig(length=128, k=4, byte_channels=(4, 8), packet_dim=8, hidden=16,
                        latent_dim=4, flow_blocks=2, flow_hidden=8, cls_hidden=(8,))
    det = FlowSemiFlowDetector(cfg, score="nll+rec")
    mods = flow_modules(cfg)
    det.config_, det.encoder_, det.decoder_, det.flow_ = cfg, mods["encoder"], \
        mods["decoder"], mods["flow"]
    det.stats_ = {"nll": (0.0, 1.0), "rec": (0.0, 1.0)}
    return save_flow_artifact(out, det, FlowSampleSpec(k=4, l=128),
                              Threshold(1.0, 0.01, 0.01, 100), model_name="tiny-flow")


def setup_artifact(work: Path, corpus: Path | None, level: str = "packet"):
    import torch

    torch.set_num_threads(1)
    if level == "packet":
        sys.path.insert(0, str(ROOT / "tests"))
        from serve_helpers import tiny_model
        src = tiny_model(work / "seed-model", k=4, l=256)
    else:
        src = tiny_flow_artifact(work / "seed-model")
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    st = SimpleNamespace(files=files, dir=work / "model")
    run_artifact(st, files)
    return st


def _mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    head, body = data[8:8 + n], data[8 + n:]
    op = rng.random()
    if op < 0.25:  # the header length at its extremes
        b = bytearray(data)
        set_uint(b, 0, 8, rng.choice((0, 1, 2, n - 1, n + 1, len(data), 2**31, 2**63,
                                      2**64 - 1)), big=False)
        return bytes(b)
    if op < 0.7:  # the header's JSON: dtypes, shapes, offsets, metadata
        try:
            h = json.loads(head)
        except ValueError:
            return mutate_bytes(rng, data)
        for _ in range(rng.choice((1, 1, 2))):
            name = rng.choice(list(h))
            entry = h[name]
            if isinstance(entry, dict) and "dtype" in entry and rng.random() < 0.6:
                key = rng.choice(("dtype", "shape", "data_offsets"))
                entry[key] = rng.choice({
                    "dtype": ("F16", "F64", "I8", "BOOL", "U8", "X9", "", 1),
                    "shape": ([], [0], [2**40], [-1], [1, 2, 3], "x", [2**64]),
                    "data_offsets": ([0, 0], [0, 2**40], [5, 1], [0, len(body) + 1],
                                     [-1, 4], [0], "x")}[key])
            else:
                h = mutate_json(rng, h)
        new = dumps(h).encode()
        return len(new).to_bytes(8, "little") + new + body
    return mutate_bytes(rng, data, start=rng.choice((0, 8)))


def make_artifact(st, rng: random.Random) -> dict:
    from semiflow.detector.artifact import META_FILE, PROVENANCE_FILE, WEIGHTS_FILE

    files = dict(st.files)
    meta = json.loads(files[META_FILE])
    op = rng.random()
    if op < 0.45:
        files[WEIGHTS_FILE] = _mutate_safetensors(rng, files[WEIGHTS_FILE])
        if rng.random() < 0.85:  # keep the checksum right, so the parser is reached
            import hashlib
            meta["weights"]["sha256"] = hashlib.sha256(files[WEIGHTS_FILE]).hexdigest()
        files[META_FILE] = json.dumps(meta).encode()
    elif op < 0.9:
        if rng.random() < 0.5:  # a mismatched config or spec: one plausible number changed
            sect = rng.choice(("config", "spec"))
            key = rng.choice(sorted(meta[sect]))
            v = meta[sect][key]
            if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
                v = list(v)
                v[rng.randrange(len(v))] = rng.choice((0, 1, 3, 64, 2**20, -1))
            else:
                v = rng.choice((0, 1, 2, 7, 9, 100, 2**16, 2**31, -3, "max", None))
            meta[sect][key] = v
            files[META_FILE] = json.dumps(meta).encode()
        else:
            files[META_FILE] = dumps(mutate_json(rng, meta, rounds=rng.choice((1, 2)))).encode()
        if rng.random() < 0.1:
            files[META_FILE] = mutate_bytes(rng, files[META_FILE])
    else:
        files[PROVENANCE_FILE] = mutate_bytes(rng, files[PROVENANCE_FILE])
    return files


def run_artifact(st, files: dict) -> str:
    """load_scorer (what serve/score/suricata/report call), then one scoring call."""
    from semiflow.detector.scoring import load_scorer

    if st.dir.exists():
        shutil.rmtree(st.dir)
    st.dir.mkdir()
    for name, data in files.items():
        (st.dir / name).write_bytes(data)
    scorer = load_scorer(st.dir, device="cpu")
    spec = scorer.spec
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, spec.k, spec.l), dtype=np.uint8)
    s = scorer.score_flows(x, np.array([spec.k, 1]))
    if s.shape != (2,):
        raise Uncounted(f"scores of shape {s.shape}")
    return "ok"


def _save_files(files: dict, p: Path) -> None:
    p.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (p / name).write_bytes(data)


ARTIFACT = Target("artifact", "packet-level model artifact -> detector/scoring.load_scorer",
                  setup_artifact, make_artifact, run_artifact, clean=(ValueError,),
                  save=_save_files)
FLOW_ARTIFACT = Target(
    "flow-artifact", "flow-level model artifact -> detector/scoring.load_scorer",
    lambda w, c: setup_artifact(w, c, "flow"), make_artifact, run_artifact,
    clean=(ValueError,), save=_save_files)
