"""Inputs benchmarks/fuzz.py found crashing (or slipping through uncounted), one test each."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from packets import ether, ip4, tcp, write_pcap  # noqa: E402
from serve_helpers import tiny_model  # noqa: E402


# ---- capture reader ---------------------------------------------------------------------
def _corrupt_gzip(tmp_path: Path) -> Path:
    plain = tmp_path / "plain.pcap"
    frames = [(1.0 + i, ether(ip4("10.0.0.1", "10.0.0.2", tcp(1000 + i, 80, b"x" * 200), 6)))
              for i in range(50)]
    write_pcap(plain, frames)
    z = bytearray(gzip.compress(plain.read_bytes()))
    z[40:48] = b"\xff" * 8  # inside the deflate stream
    p = tmp_path / "broken.pcap.gz"
    p.write_bytes(bytes(z))
    with pytest.raises(zlib.error):  # what the reader met: not an OSError
        gzip.decompress(bytes(z))
    return p


def test_corrupt_gzip_capture_is_a_counted_bad_file(tmp_path):
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.training.extract import extract

    p = _corrupt_gzip(tmp_path)
    report = extract([str(p)], tmp_path / "out", FlowSampleSpec(k=4, l=256))
    assert len(report.bad_files) == 1 and report.bad_files[0][0] == str(p)
    assert "Error -3" in report.bad_files[0][1]


# ---- EVE ---------------------------------------------------------------------------------
def test_eve_line_nested_deeper_than_the_stack_is_counted(tmp_path):
    from semiflow.plugin.suricata import EveFollower

    eve = tmp_path / "eve.json"
    eve.write_bytes(b"[" * 100_000 + b"\n" + b'{"event_type": "flow"}\n')
    fol = EveFollower(eve)
    assert fol.poll() == [{"event_type": "flow"}]
    assert (fol.counters.records, fol.counters.malformed) == (1, 1)


def test_eve_runaway_line_counted_once_and_its_tail_not_parsed(tmp_path):
    from semiflow.plugin.suricata import EveFollower

    eve = tmp_path / "eve.json"
    # longer than one 1 MiB read: the follower drops it mid-line; what follows in the next
    # read is the same line's tail, not a record of its own
    eve.write_bytes(b"x" * (1 << 20) + b'{"event_type": "tail"}\n{"event_type": "flow"}\n')
    fol = EveFollower(eve, max_line=1000)
    assert fol.poll() == [{"event_type": "flow"}]
    assert (fol.counters.records, fol.counters.malformed) == (1, 1)


# ---- Zeek WebSocket messages ----------------------------------------------------------------
def test_zeek_error_codes_cannot_mint_unbounded_error_kinds():
    from semiflow.plugin.zeek_decode import decode_flow_requests

    raws = [json.dumps({"type": "error", "code": c, "context": "x" * 10_000})
            for c in ("deserialization_failed", 10**400, {"a": 1}, "A B", "x" * 500)]
    kinds = [e.kind for _, e in decode_flow_requests(raws).errors]
    assert kinds == ["zeek:deserialization_failed"] + ["zeek:other"] * 4
    assert all(len(str(e)) < 400 for _, e in decode_flow_requests(raws).errors)


def test_real_beyond_float_range_in_an_otherwise_bad_request_is_an_error():
    """Found as OverflowError out of decode (the whole micro-batch went unanswered): the
    thorough path converts JSON integers given for reals to float."""
    from semiflow.plugin import zeek_wire as zw
    from semiflow.plugin.zeek_decode import decode_flow_requests

    args = zw.flow_request_args("Cbig", "reply/", "10.0.0.1", "1/tcp", "10.0.0.2", "2/tcp",
                                1, 4, 320, [b"x"], [1.0], [1], [True])
    msg = zw.event_message("req/", zw.FLOW_REQUEST, args)
    vals = msg["data"][2]["data"][1]["data"]
    vals[10]["data"][0]["data"] = 10**400           # ts: an integer past float's range
    vals[12]["data"].append({"@data-type": "boolean", "data": True})  # fast path says no
    good = zw.event_message("req/", zw.FLOW_REQUEST, list(args))
    batch = decode_flow_requests([json.dumps(msg), json.dumps(good)])
    assert [(i, e.kind, e.key) for i, e in batch.errors] == [(0, "value", "Cbig")]
    assert "out of range" in str(batch.errors[0][1])
    assert batch.keys == ["Cbig"]  # the good request (same uid) still decodes


# ---- model artifacts -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packet_model(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny", k=4, l=256)


@pytest.fixture(scope="module")
def flow_model(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from fuzz_artifacts import tiny_flow_artifact
    return tiny_flow_artifact(tmp_path_factory.mktemp("f") / "tiny-flow")


def _variant(src: Path, dst: Path, meta_edit=None, weights: bytes | None = None) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    meta = json.loads((dst / "semiflow-model.json").read_text())
    if weights is not None:
        (dst / "model.safetensors").write_bytes(weights)
        meta["weights"]["sha256"] = hashlib.sha256(weights).hexdigest()
    if meta_edit is not None:
        meta_edit(meta)
    (dst / "semiflow-model.json").write_text(json.dumps(meta))
    return dst


def _set(section, key, value):
    def edit(meta):
        if section is None:
            meta[key] = value
        else:
            meta[section][key] = value
    return edit


PACKET_CASES = {
    # found as RuntimeError / TypeError / MemoryError while building the modules
    "negative channels": (_set("config", "enc_channels", [-3, 8]), "describes no model"),
    "huge channels": (_set("config", "enc_channels", [4, 2**20]), "does not fit"),
    "float seed-like size": (_set("config", "latent_channels", None), "describes no model"),
    # found as AttributeError
    "weights not an object": (_set(None, "weights", [1, 2]), "malformed"),
    "spec not an object": (_set(None, "spec", [4, 256]), "malformed"),
    # a path out of the artifact directory
    "weights path": (lambda m: m["weights"].update(file="../../etc/passwd"), "file name"),
    # would size m x K x L buffers of terabytes
    "huge K": (_set("spec", "k", 2**31), "k must be <= 4096"),
}


@pytest.mark.parametrize("case", sorted(PACKET_CASES))
def test_corrupt_packet_artifact_is_one_value_error(packet_model, tmp_path, case):
    from semiflow.detector.scoring import load_scorer

    edit, words = PACKET_CASES[case]
    d = _variant(packet_model, tmp_path / "m", edit)
    with pytest.raises(ValueError, match=words):
        load_scorer(d, device="cpu")


def test_nan_weights_fail_at_load_not_on_every_flow(packet_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from semiflow.detector.scoring import load_scorer

    t = load_file(str(packet_model / "model.safetensors"))
    t = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
         for k, v in t.items()}
    save_file(t, str(tmp_path / "w.safetensors"))
    d = _variant(packet_model, tmp_path / "m", weights=(tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(ValueError, match="cannot score"):
        load_scorer(d, device="cpu")


def test_artifact_json_nested_deeper_than_the_stack(packet_model, tmp_path):
    from semiflow.detector.scoring import load_scorer

    d = _variant(packet_model, tmp_path / "m")
    (d / "semiflow-model.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_scorer(d, device="cpu")


def test_safetensors_header_length_extreme(packet_model, tmp_path):
    from semiflow.detector.scoring import load_scorer

    w = bytearray((packet_model / "model.safetensors").read_bytes())
    w[:8] = (2**63).to_bytes(8, "little")
    d = _variant(packet_model, tmp_path / "m", weights=bytes(w))
    with pytest.raises(ValueError, match="cannot read"):
        load_scorer(d, device="cpu")


FLOW_CASES = {
    "stats of objects": (_set(None, "score_stats", {"nll": {"a": 1}, "rec": [0, 1]}),
                         "malformed score_stats"),  # found as KeyError
    "zero scale": (_set(None, "score_stats", {"nll": [0, 0], "rec": [0, 1]}),
                   "positive finite scale"),       # scored inf/NaN before
    "stats not an object": (_set(None, "score_stats", [1]), "score_stats"),
    "huge hidden": (_set("config", "hidden", 2**40), "out of range"),
    # found as hangs (building 65536 coupling blocks, or range(10**400) of them)
    "many blocks": (_set("config", "flow_blocks", 65536), "at most 1024"),
    "endless blocks": (_set("config", "flow_blocks", 10**400), "out of range"),
    # found as OverflowError in torch
    "huge weight": (_set("config", "w_meta", 10**400), "out of range"),
    "huge negative clamp": (_set("config", "flow_clamp", -(2**63) - 1), "out of range"),
}


@pytest.mark.parametrize("case", sorted(FLOW_CASES))
def test_corrupttiny_flow_artifact_is_one_value_error(flow_model, tmp_path, case):
    from semiflow.detector.scoring import load_scorer

    edit, words = FLOW_CASES[case]
    d = _variant(flow_model, tmp_path / "m", edit)
    with pytest.raises(ValueError, match=words):
        load_scorer(d, device="cpu")


def test_intact_artifacts_still_load_and_score(packet_model, flow_model):
    from semiflow.detector.scoring import load_scorer

    for m in (packet_model, flow_model):
        s = load_scorer(m, device="cpu")
        x = np.zeros((2, s.spec.k, s.spec.l), np.uint8)
        assert np.isfinite(s.score_flows(x, np.array([1, 2]))).all()
