"""Shared pieces of the serve tests and benchmark: tiny model, corpus slice, Zeek-side log."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np

SLICE = ["443-curl.pcap", "443-git.pcap", "443-safari.pcap", "avast_securedns.pcapng",
         "chrome.pcap", "dns_ambiguous_names.pcap"]


def free_port() -> int:
    """A TCP port nobody listens on now (metrics endpoints, DevTools, torchrun masters)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def corpus_slice(corpus_dir: Path) -> list[str]:
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(corpus_dir / "manifest.csv"))}
    return [str(corpus_dir / rows[n]["file"]) for n in SLICE if n in rows]


def corpus_requests(corpus_dir: Path, k: int = 4, snaplen: int = 320) -> list:
    """The corpus slice's flow requests as the Zeek package publishes them (select_all, no
    max_wait cut), or a pytest skip without the corpus."""
    import pytest

    from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events

    files = corpus_slice(corpus_dir)
    if not files:
        pytest.skip("corpus slice not found")
    evs = capture_to_events(files, ZeekSideConfig(k=k, snaplen=snaplen, max_wait=float("inf"),
                                                  select_all=True))
    return [e for e in evs if e.kind == "request"]


def lab_sample_batches(per_batch: int = 16, k: int = 8, snaplen: int = 320
                       ) -> tuple[list, list[tuple[str, list]]]:
    """The shipped lab sample's flow requests, and them grouped as batch.zeek publishes
    them: (topic, flow_batch arguments) of `per_batch` flows each."""
    from importlib import resources

    from semiflow.plugin import zeek_wire as zw
    from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events

    lab = Path(str(resources.files("semiflow") / "data" / "lab-sample" / "capture.pcap.gz"))
    reqs = [e for e in capture_to_events([str(lab)], ZeekSideConfig(k=k, snaplen=snaplen))
            if e.kind == "request"]
    chunks = [reqs[i:i + per_batch] for i in range(0, len(reqs), per_batch)]
    return reqs, [(c[0].topic, zw.flow_batch_args([e.args for e in c])) for c in chunks]


def with_fresh_uids(args: list, prefix: str) -> tuple[list, list[str]]:
    """A flow_batch's arguments with every uid prefixed (a replayed batch is new flows);
    returns (arguments, uids). flow_batch_args: (reply_topic, uids, ...)."""
    uids = [f"{prefix}{u}" for u in args[1]]
    return [args[0], uids, *args[2:]], uids


def tiny_model(out: Path, k: int = 4, l: int = 256, threshold: float = 0.5) -> Path:
    """A real SemiFlow artifact (encoder + classifier) with seeded random weights."""
    import torch

    from semiflow.detector.artifact import inference_modules, save_artifact
    from semiflow.detector.models.semiflow_model import SemiFlowConfig
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.detector.threshold import Threshold

    torch.manual_seed(0)
    cfg = SemiFlowConfig(length=l, enc_channels=(4, 8), latent_channels=4,
                         dec_channels=(8, 4), cls_channels=8, cls_hidden=(16,),
                         flow_hidden=16, flow_blocks=2)
    enc, cls = inference_modules(cfg)
    save_artifact(out, enc, cls, cfg, FlowSampleSpec(k=k, l=l),
                  threshold=Threshold(threshold, 0.01, 0.01, 100), model_name="tiny",
                  model_version="test-1")
    return out


class TrivialScorer:
    """Scores a flow by its mean byte: the pipeline's own ceiling, without a model."""

    def __init__(self, spec, threshold: float = 200.0):
        self.spec = spec
        self.threshold = threshold
        self.model_name = "trivial"
        self.model_version = "0"

    def score_flows(self, samples: np.ndarray, n_selected: np.ndarray) -> np.ndarray:
        s = samples.reshape(len(samples), -1).mean(axis=1)
        return np.where(np.asarray(n_selected) > 0, s, np.nan)


def write_semiflow_log(path: Path, rows: list[dict]) -> None:
    """semiflow.log as Zeek's ASCII writer lays it out (#separator ... #types, \\t, '-')."""
    fields = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "status",
              "score", "threshold", "verdict", "model", "model_version", "packets",
              "latency", "detail"]
    types = ["time", "string", "addr", "port", "addr", "port", "string", "double", "double",
             "string", "string", "string", "count", "interval", "string"]
    with open(path, "w") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
                "#unset_field\t-\n#path\tsemiflow\n#open\t1970-01-01-00-00-00\n")
        f.write("#fields\t" + "\t".join(fields) + "\n#types\t" + "\t".join(types) + "\n")
        for r in rows:
            vals = []
            for name, t in zip(fields, types):
                v = r.get(name)
                if v is None or v == "":
                    vals.append("-")
                elif t in ("time", "double", "interval"):
                    vals.append(f"{float(v):.6f}")
                else:
                    vals.append(str(v))
            f.write("\t".join(vals) + "\n")
        f.write("#close\t1970-01-01-00-00-00\n")
