"""`semiflow score CAPTURE... -o OUTDIR`: score captures offline, write Zeek semiflow.log and
notice.log (no Zeek needed), print what was flagged.

Flows are cut with the MODEL's flow-sample spec (the one it was trained with). A flow with no
selected packet is reported with status no_payload / unparsed and no score: unscored, never
"normal".
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

NOTE = "SemiFlow::Anomalous_Flow"
SUPPRESS_FOR = 3600.0   # Notice::default_suppression_interval

SEMIFLOW_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("score", "double"),
    ("threshold", "double"), ("verdict", "string"), ("status", "string"), ("model", "string"),
    ("model_version", "string"), ("packets_used", "count"), ("latency", "interval"),
]
# Zeek's notice.log columns (base/frameworks/notice/main.zeek Notice::Info &log fields, plus
# remote_location from the default-loaded add-geodata action).
NOTICE_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("fuid", "string"),
    ("file_mime_type", "string"), ("file_desc", "string"), ("proto", "enum"), ("note", "enum"),
    ("msg", "string"), ("sub", "string"), ("src", "addr"), ("dst", "addr"), ("p", "port"),
    ("n", "count"), ("peer_descr", "string"), ("actions", "set[enum]"),
    ("email_dest", "set[string]"), ("suppress_for", "interval"),
    ("remote_location.country_code", "string"), ("remote_location.region", "string"),
    ("remote_location.city", "string"), ("remote_location.latitude", "double"),
    ("remote_location.longitude", "double"),
]
_STATUS = {"ok": "scored"}


def default_model_dir() -> Path:
    """The bundled model, inside the installed package."""
    return Path(str(resources.files("semiflow") / "data" / "model"))


@dataclass
class ScoreResult:
    flows: int = 0
    scored: int = 0
    flagged: list[dict] = field(default_factory=list)
    unscored: dict[str, int] = field(default_factory=dict)
    out_dir: Path = Path(".")
    threshold: float = math.nan
    model: str = ""
    skipped_lines: list[str] = field(default_factory=list)
    top: list[dict] = field(default_factory=list)   # highest-scoring flows, flagged or not


def score_captures(captures: list[str], model_dir: str | Path, out_dir: str | Path,
                   json: bool = False, device: str | None = None, progress: bool = False,
                   batch_flows: int | None = None, explain: bool = False,
                   allowlist: str | Path | None = None, amp: str = "off",
                   compile: bool = False, gpu_path: bool = True) -> ScoreResult:
    """Extract with the model's spec, score every flow, write semiflow.log + notice.log."""
    from semiflow.detector.models.flow_inference import GPU_BATCH
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.plugin.zeeklog_writer import ZeekLogWriter
    from semiflow.training.extract import extract

    for c in captures:
        if not Path(c).is_file():
            raise ValueError(f"{c}: no such capture file")
    scorer = load_scorer(model_dir, device=device, amp=amp, compile=compile,
                         gpu_path=gpu_path)
    if batch_flows is None:   # the GPU path wants large batches (docs/scale.md)
        batch_flows = GPU_BATCH if scorer.device.type == "cuda" else 2048
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = ScoreResult(out_dir=out, threshold=scorer.threshold,
                      model=f"{scorer.model_name} {scorer.model_version}")
    with tempfile.TemporaryDirectory(prefix="semiflow-score-") as tmp:
        report = extract(captures, Path(tmp) / "flows", scorer.spec, progress=progress)
        res.skipped_lines = report.summary_lines()
        store = FlowStore.open(Path(tmp) / "flows")
        flows = store.flows
        n_sel = flows["n_selected"].to_numpy().astype(np.int64)
        scores = np.full(len(flows), np.nan)
        for i in range(0, len(flows), batch_flows):
            scores[i:i + batch_flows] = scorer.score_flows(
                np.asarray(store.samples[i:i + batch_flows]), n_sel[i:i + batch_flows])
        pkt_ts = np.asarray(store.pkt_ts)
        top: list = []   # a bounded heap of the 5 highest-scoring flows
        verdicts = scorer.verdicts(scores)
        allowed = _allowed(flows, allowlist)
        with ZeekLogWriter(out / "semiflow.log", "semiflow", SEMIFLOW_FIELDS, json=json) as log, \
                ZeekLogWriter(out / "notice.log", "notice", NOTICE_FIELDS, json=json) as notice:
            for i, f in enumerate(flows.itertuples(index=False)):
                res.flows += 1
                status = _STATUS.get(f.status, f.status)
                used = int(n_sel[i])
                latency = float(pkt_ts[i, used - 1] - f.ts) if used else None
                if allowed[i]:   # the analyst's allow-list: not scored, never noticed
                    status = "allowlisted"
                scored = status == "scored" and not math.isnan(scores[i])
                rec = {"ts": f.ts, "uid": f.uid, "id.orig_h": f.orig_h, "id.orig_p": f.orig_p,
                       "id.resp_h": f.resp_h, "id.resp_p": f.resp_p, "proto": f.proto,
                       "score": scores[i] if scored else None, "threshold": scorer.threshold,
                       "verdict": verdicts[i] if scored else None, "status": status,
                       "model": scorer.model_name, "model_version": scorer.model_version,
                       "packets_used": used, "latency": latency}
                log.write(rec)
                if not scored:
                    res.unscored[status] = res.unscored.get(status, 0) + 1
                    continue
                res.scored += 1
                item = (float(scores[i]), i, rec)
                (heapq.heappush if len(top) < 5 else heapq.heappushpop)(top, item)
                if verdicts[i] == "anomalous":
                    notice.write(_notice(rec, latency, used, _explain_sub(
                        scorer, store, i, used) if explain else None, scorer.score_kind))
                    res.flagged.append({**rec, "source_file": f.source_file})
    res.flagged.sort(key=lambda r: -r["score"])
    res.top = [r for _, _, r in sorted(top, key=lambda t: -t[0])]
    return res


# ---- allow-list and notice explanations (issue 7; both off unless asked) -------------------
def _allowed(flows, allowlist) -> np.ndarray:
    if not allowlist:
        return np.zeros(len(flows), bool)
    from semiflow.plugin.allowlist import allowlisted, read_allowlist
    if not Path(allowlist).exists():
        raise ValueError(f"{allowlist}: no such allow-list file")
    return allowlisted(flows, read_allowlist(allowlist))[0]


def _explain_sub(scorer, store, i: int, used: int) -> str:
    from semiflow.detector.explain.packet_level import explain_flow
    return explain_flow(scorer, store.samples[i], used, steps=16).summary()


def _notice(rec: dict, latency: float | None, used: int, sub: str | None = None,
            kind: str = "log-odds") -> dict:
    return {"ts": rec["ts"] + (latency or 0.0), "uid": rec["uid"],
            "id.orig_h": rec["id.orig_h"], "id.orig_p": rec["id.orig_p"],
            "id.resp_h": rec["id.resp_h"], "id.resp_p": rec["id.resp_p"],
            "proto": rec["proto"], "note": NOTE,
            "msg": f"SemiFlow anomaly score ({kind}) {rec['score']:.4f} above threshold "
                   f"{rec['threshold']:.4f} ({used} packets)",
            "sub": sub or f"model={rec['model']} version={rec['model_version']}",
            "src": rec["id.orig_h"], "dst": rec["id.resp_h"], "p": rec["id.resp_p"],
            "peer_descr": "semiflow", "actions": ["Notice::ACTION_LOG"], "email_dest": [],
            "suppress_for": SUPPRESS_FOR}


def print_summary(res: ScoreResult, top: int = 20, file=None) -> None:
    file = file if file is not None else sys.stdout
    print(f"model {res.model}, threshold {res.threshold:.6g}", file=file)
    unscored = ", ".join(f"{n} {s}" for s, n in sorted(res.unscored.items())) or "none"
    print(f"{res.flows} flows: {res.scored} scored, {len(res.flagged)} flagged anomalous; "
          f"unscored: {unscored}", file=file)
    for r in res.flagged[:top]:
        print(f"  FLAGGED {r['uid']} {r['proto']} {r['id.orig_h']}:{r['id.orig_p']} -> "
              f"{r['id.resp_h']}:{r['id.resp_p']} score {r['score']:.6g} "
              f"({Path(r['source_file']).name})", file=file)
    if len(res.flagged) > top:
        print(f"  ... and {len(res.flagged) - top} more (see notice.log)", file=file)
    if res.top and not res.flagged:
        print("highest scores (none above the threshold):", file=file)
        for r in res.top:
            print(f"  {r['uid']} {r['proto']} {r['id.orig_h']}:{r['id.orig_p']} -> "
                  f"{r['id.resp_h']}:{r['id.resp_p']} score {r['score']:.6g}", file=file)
    for line in res.skipped_lines:
        print(f"  note: {line}", file=file)
    print(f"wrote {res.out_dir / 'semiflow.log'} and {res.out_dir / 'notice.log'}", file=file)


def register(sub) -> None:
    p = sub.add_parser("score", help="score captures offline -> Zeek semiflow.log + notice.log",
                       description="Cut captures into flows with the model's spec, score them, "
                                   "and write Zeek-format semiflow.log and notice.log.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="capture files, or directories (searched recursively for captures)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model artifact directory (default: the bundled model)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="where to write logs")
    p.add_argument("--json", action="store_true", help="write Zeek JSON logs instead of TSV")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    add_gpu_arguments(p)
    p.add_argument("--top", type=int, default=20, help="flagged flows to print (default 20)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--explain", action="store_true",
                   help="put a short explanation (top fields) in each notice's sub (slower)")
    p.add_argument("--allowlist", metavar="FILE",
                   help="allow-list (semiflow feedback): matching flows are not scored")
    p.set_defaults(func=run)


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """Scoring on CUDA (flow-level models): bf16 and CUDA graphs, measured in docs/scale.md."""
    p.add_argument("--amp", choices=["off", "bf16"], default="off",
                   help="CUDA: bf16 autocast for the byte encoder/decoder (~10%% faster; "
                        "3 of 39,335 lab verdicts flipped); default off")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: capture the model as CUDA graphs (torch.compile; ~1 minute to "
                        "compile, then the fastest path)")
    p.add_argument("--gpu-path", choices=["on", "off"], default="on",
                   help="CUDA: score through the GPU path (large fixed batch shapes, pinned "
                        "and overlapped copies; default on) or the plain loop (off: to compare)")


def run(args: argparse.Namespace) -> int:
    from semiflow.cli_extract import find_captures

    model = args.model or default_model_dir()
    captures, _ = find_captures(args.captures)   # as `semiflow extract` does
    res = score_captures(captures, model, args.out, json=args.json, device=args.device,
                         progress=not args.quiet and sys.stderr.isatty(),
                         explain=args.explain, allowlist=args.allowlist, amp=args.amp,
                         compile=args.compile, gpu_path=args.gpu_path == "on")
    print_summary(res, top=args.top)
    return 0
