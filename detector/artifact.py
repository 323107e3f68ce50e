"""The model artifact: a directory that says everything needed to score, and how it was made.

    model.safetensors    encoder.* and classifier.* tensors, plus flow.* when the artifact
                         scores with the flow's density (safetensors: loading runs no code)
    semiflow-model.json  format, model name/version, SemiFlowConfig, FlowSampleSpec, aggregate,
                         threshold, sha256 of the weights
    provenance.json      data files + sha256, metrics, package versions, git commit, command

Inference needs only the encoder and the classifier, so only they are stored. Flow-level
artifacts (format_version 2, "level": "flow": save_flow_artifact, semiflow_flowartifact.py)
store encoder, decoder and flow instead and score whole flows. Anything missing, corrupt or
inconsistent raises ValueError naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from semiflow.detector.models.semiflow_model import Classifier, Encoder, Flow, SemiFlowConfig
from semiflow.detector.permissions import refuse_world_writable
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.threshold import Threshold

FORMAT = "semiflow-model"
FORMAT_VERSION = 1               # packet-level artifacts; flow-level ones are version 2
READ_VERSIONS = (1, 2)
META_FILE = "semiflow-model.json"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "provenance.json"
AGGREGATES = ("max", "mean", "median")
# What the stored threshold and the scores are in: the classifier's "log-odds" of anomalous,
# the flow's NLL per dimension ("flow-nll", needs flow.* weights), or "probability"
# (artifacts written before the log-odds change, which lack the field).
SCORE_KINDS = ("log-odds", "flow-nll", "probability")
# Flow-level artifacts (`"level": "flow"`, detector/models/semiflow_flowartifact.py) score
# whole flows:
FLOW_SCORE_KINDS = ("nll+rec", "nll", "rec")


@dataclass
class Artifact:
    config: SemiFlowConfig  # a FlowNetConfig when level == "flow"
    spec: FlowSampleSpec
    tensors: dict[str, torch.Tensor]
    threshold: Threshold | None
    aggregate: str = "max"
    model_name: str = "semiflow"
    model_version: str = ""
    provenance: dict = field(default_factory=dict)
    score_kind: str = "log-odds"
    level: str = "packet"                # "packet" (scores packets, aggregates) or "flow"
    score_stats: dict = field(default_factory=dict)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inference_modules(config: SemiFlowConfig) -> tuple[Encoder, Classifier]:
    return Encoder(config), Classifier(config)


def save_artifact(path: str | os.PathLike, encoder: torch.nn.Module,
                  classifier: torch.nn.Module, config: SemiFlowConfig, spec: FlowSampleSpec,
                  threshold: Threshold | None = None, aggregate: str = "max",
                  provenance: dict | None = None, model_name: str = "semiflow",
                  model_version: str | None = None, *, score: str = "log-odds",
                  flow: torch.nn.Module | None = None) -> Path:
    """Write the artifact directory (created if needed; its three files replaced).

    score="flow-nll" stores the flow too (its scores are the flow's NLL per dimension)."""
    from safetensors.torch import save_file

    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if score not in ("log-odds", "flow-nll"):
        raise ValueError(f"score must be log-odds or flow-nll, got {score!r}")
    if (score == "flow-nll") != (flow is not None):
        raise ValueError("a flow is stored exactly when score is flow-nll")
    if spec.l != config.length:
        raise ValueError(f"spec L={spec.l} does not match the model's length {config.length}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous()
               for k, v in encoder.state_dict().items()}
    tensors.update({f"classifier.{k}": v.detach().cpu().contiguous()
                    for k, v in classifier.state_dict().items()})
    if flow is not None:
        tensors.update({f"flow.{k}": v.detach().cpu().contiguous()
                        for k, v in flow.state_dict().items()})
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    digest = sha256_file(out / WEIGHTS_FILE)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_name": model_name,
        "model_version": model_version or f"{model_name}-{digest[:12]}",
        "config": config.to_dict(), "spec": spec.to_dict(), "aggregate": aggregate,
        "score": score,
        "threshold": threshold.to_dict() if threshold is not None else None,
        "weights": {"file": WEIGHTS_FILE, "sha256": digest},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance or {}, indent=2, default=str)
                                       + "\n")
    return out


# An artifact's config is outside input: numbers no model has are refused before any module
# is built (a layer count of 65536 alone makes building take minutes; 10**400 forever).
MAX_CONFIG_INT = 1 << 31
MAX_CONFIG_LIST = 1024
MAX_BLOCKS = 1024


def check_config_numbers(d) -> None:
    """ValueError unless every number in the config is finite and of a size models have."""
    import math

    if not isinstance(d, dict):
        raise ValueError(f"config must be an object, got {type(d).__name__}")
    for key, v in d.items():
        items = v if isinstance(v, list) else [v]
        if len(items) > MAX_CONFIG_LIST:
            raise ValueError(f"config: {key} has {len(items)} entries")
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue  # types are the config class's to check
            if abs(x) > MAX_CONFIG_INT or (isinstance(x, float) and not math.isfinite(x)):
                raise ValueError(f"config: {key} = {str(x)[:40]} is out of range")
        if key.endswith("blocks") and isinstance(v, int) and v > MAX_BLOCKS:
            raise ValueError(f"config: {key} = {v} (at most {MAX_BLOCKS})")


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ValueError(f"model artifact: {path.name} missing in {path.parent}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"model artifact: {path} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"model artifact: {path} must hold a JSON object")
    return d


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read and check an artifact directory; ValueError on any problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"model artifact: {root} is not a directory")
    for name in (META_FILE, WEIGHTS_FILE, PROVENANCE_FILE):
        refuse_world_writable(root / name, "model artifact:")
    meta = _read_json(root / META_FILE)
    if meta.get("format") != FORMAT:
        raise ValueError(f"model artifact: {root / META_FILE} is not a {FORMAT} file")
    if meta.get("format_version") not in READ_VERSIONS:
        raise ValueError(f"model artifact: format version {meta.get('format_version')} "
                         f"not supported (this semiflow reads {READ_VERSIONS})")
    level = "flow" if meta.get("level") == "flow" else "packet"
    if level == "flow":
        return _load_flow_level(root, meta)
    try:
        check_config_numbers(meta["config"])
        config = SemiFlowConfig.from_dict(meta["config"])
        spec = FlowSampleSpec.from_dict(meta["spec"])
        threshold = Threshold.from_dict(meta["threshold"]) if meta.get("threshold") else None
        weights = meta["weights"]
        wpath = root / _weights_name(weights)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"model artifact: {root / META_FILE} is malformed ({e})") from e
    if spec.l != config.length:
        raise ValueError(f"model artifact: spec L={spec.l} does not match the model's "
                         f"input length {config.length}")
    aggregate = meta.get("aggregate", "max")
    if aggregate not in AGGREGATES:
        raise ValueError(f"model artifact: unknown aggregate {aggregate!r}")
    score_kind = meta.get("score", "probability")
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"model artifact: unknown score kind {score_kind!r}")
    if not wpath.exists():
        raise ValueError(f"model artifact: weights {wpath.name} missing in {root}")
    refuse_world_writable(wpath, "model artifact:")
    if sha256_file(wpath) != weights.get("sha256"):
        raise ValueError(f"model artifact: {wpath} is corrupt (sha256 does not match "
                         f"{META_FILE})")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"model artifact: cannot read {wpath} ({e})") from e

    def modules() -> dict[str, torch.nn.Module]:
        encoder, classifier = inference_modules(config)
        mods = {"encoder": encoder, "classifier": classifier}
        if score_kind == "flow-nll":
            mods["flow"] = Flow(config)
        return mods
    check_weights_fit(modules, tensors, root, wpath)
    for name, mod in modules().items():
        _load_into(mod, tensors, name, wpath)
    prov_path = root / PROVENANCE_FILE
    provenance = _read_json(prov_path) if prov_path.exists() else {}
    return Artifact(config=config, spec=spec, tensors=tensors, threshold=threshold,
                    aggregate=aggregate, model_name=str(meta.get("model_name", "semiflow")),
                    model_version=str(meta.get("model_version", "")), provenance=provenance,
                    score_kind=score_kind)


def _weights_name(weights) -> str:
    """The weights file named in semiflow-model.json: a plain name inside the artifact
    directory (never a path that leads out of it)."""
    if not isinstance(weights, dict):
        raise ValueError("weights must be an object")
    name = weights.get("file", WEIGHTS_FILE)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"weights file must be a file name in the artifact, got {name!r}")
    return name


# What building torch modules from a config that is not one raises (wrong types, negative
# or absurd sizes).
_BUILD_ERRORS = (TypeError, ValueError, RuntimeError, OverflowError, IndexError,
                 ZeroDivisionError, KeyError, AttributeError)


def check_weights_fit(modules, tensors: dict, root: Path, wpath: Path) -> None:
    """Build the modules the config describes on the meta device (no memory) and check the
    weights fit them: a corrupt or mismatched config is one ValueError, never a huge
    allocation or a torch error while the real modules are built."""
    import warnings

    with warnings.catch_warnings():  # zero-size or meta tensors are no-ops, said loudly
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                mods = modules()
        except _BUILD_ERRORS as e:
            first = (str(e).splitlines() or [""])[0][:200]
            raise ValueError(f"model artifact: {root / META_FILE} describes no model this "
                             f"semiflow can build ({type(e).__name__}: {first})") from e
        for name, mod in mods.items():
            _load_into(mod, tensors, name, wpath)


def _load_into(module: torch.nn.Module, tensors: dict, prefix: str, wpath: Path) -> None:
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise ValueError(f"model artifact: {wpath.name} does not fit the {prefix} its config "
                         f"describes ({first})") from e


def build_modules(artifact: Artifact, device: torch.device | str = "cpu"
                  ) -> tuple[Encoder, Classifier]:
    """Encoder and classifier with the artifact's weights, in eval mode on `device`."""
    encoder, classifier = inference_modules(artifact.config)
    _load_into(encoder, artifact.tensors, "encoder", Path(WEIGHTS_FILE))
    _load_into(classifier, artifact.tensors, "classifier", Path(WEIGHTS_FILE))
    return encoder.to(device).eval(), classifier.to(device).eval()


def build_flow(artifact: Artifact, device: torch.device | str = "cpu") -> Flow:
    """The flow of a score="flow-nll" artifact, in eval mode on `device`."""
    if artifact.score_kind != "flow-nll":
        raise ValueError(f"model artifact scores with {artifact.score_kind}: it has no flow")
    flow = Flow(artifact.config)
    _load_into(flow, artifact.tensors, "flow", Path(WEIGHTS_FILE))
    return flow.to(device).eval()


def _weights(root: Path, meta: dict) -> tuple[Path, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath = root / _weights_name(meta["weights"])
    if not wpath.exists():
        raise ValueError(f"model artifact: weights {wpath.name} missing in {root}")
    refuse_world_writable(wpath, "model artifact:")
    if sha256_file(wpath) != meta["weights"].get("sha256"):
        raise ValueError(f"model artifact: {wpath} is corrupt (sha256 does not match "
                         f"{META_FILE})")
    try:
        return wpath, load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"model artifact: cannot read {wpath} ({e})") from e


def _load_flow_level(root: Path, meta: dict) -> Artifact:
    """A flow-level artifact (format 2); its weights are checked by building the detector."""
    from semiflow.detector.models.semiflow_flowartifact import (
        check_spec,
        detector_from_tensors,
        flow_modules,
    )
    from semiflow.detector.models.semiflow_flownet import FlowNetConfig

    try:
        check_config_numbers(meta["config"])
        config = FlowNetConfig.from_dict(meta["config"])
        spec = FlowSampleSpec.from_dict(meta["spec"])
        threshold = Threshold.from_dict(meta["threshold"]) if meta.get("threshold") else None
        score_kind, stats = meta["score"], meta.get("score_stats", {})
        _weights_name(meta["weights"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"model artifact: {root / META_FILE} is malformed ({e})") from e
    if not isinstance(score_kind, str) or score_kind not in FLOW_SCORE_KINDS:
        raise ValueError(f"model artifact: unknown score kind {score_kind!r}")
    if not isinstance(stats, dict):
        raise ValueError("model artifact: score_stats must be an object")
    try:
        check_spec(spec, config)
    except ValueError as e:
        raise ValueError(f"model artifact: {e}") from e
    wpath, tensors = _weights(root, meta)
    check_weights_fit(lambda: flow_modules(config), tensors, root, wpath)
    detector_from_tensors(config, score_kind, stats, tensors, wpath.name)
    prov_path = root / PROVENANCE_FILE
    return Artifact(config=config, spec=spec, tensors=tensors, threshold=threshold,
                    aggregate="flow", model_name=str(meta.get("model_name", "semiflow")),
                    model_version=str(meta.get("model_version", "")),
                    provenance=_read_json(prov_path) if prov_path.exists() else {},
                    score_kind=score_kind, level="flow", score_stats=stats)


def save_flow_artifact(path: str | os.PathLike, detector, spec: FlowSampleSpec,
                       threshold: Threshold | None = None, provenance: dict | None = None,
                       model_name: str = "semiflow", model_version: str | None = None) -> Path:
    """Write a fitted FlowSemiFlowDetector as an artifact directory (format version 2)."""
    from safetensors.torch import save_file

    from semiflow.detector.models.semiflow_flowartifact import flow_meta_and_tensors

    fields, tensors = flow_meta_and_tensors(detector, spec)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    digest = sha256_file(out / WEIGHTS_FILE)
    meta = {"format": FORMAT, **fields, "model_name": model_name,
            "model_version": model_version or f"{model_name}-flow-{digest[:12]}",
            "spec": spec.to_dict(), "aggregate": "flow",
            "threshold": threshold.to_dict() if threshold is not None else None,
            "weights": {"file": WEIGHTS_FILE, "sha256": digest}}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance or {}, indent=2, default=str)
                                       + "\n")
    return out


def build_flow_detector(artifact: Artifact, device: torch.device | str = "cpu"):
    """The fitted FlowSemiFlowDetector of a flow-level artifact, on `device`."""
    from semiflow.detector.models.semiflow_flowartifact import detector_from_tensors

    if artifact.level != "flow":
        raise ValueError("model artifact is packet-level: it has no flow-level detector")
    return detector_from_tensors(artifact.config, artifact.score_kind, artifact.score_stats,
                                 artifact.tensors, WEIGHTS_FILE, device)
