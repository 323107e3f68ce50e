"""Training on data larger than memory: peak RSS of `semiflow train --shard-flows` against
loading the training flows whole (the named alternative), at two data sizes.

Builds an extraction directory of --rows packet rows (flows x K) by tiling the lab's normal
flows (--flows .npz from benchmarks/speed_data.py) over --files capture files, then runs
`semiflow train` on it in a child process per setting and reads the child's peak RSS
(getrusage). Sharded, RSS should stay near two shards plus the flow table whatever the size;
whole, it grows with the data.

    python benchmarks/shard_memory.py --flows lab.npz --rows 50000000 --device cuda \
        [--small-rows 5000000] [--shard-flows 262144] [--work /tmp/shards]

--data-path-only runs, per size, what sharded training does for data but not the model (a
CPU box measures the flow table and the shards in minutes, not a training hour).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_data import load  # noqa: E402

from semiflow.detector.sample.spec import FlowSampleSpec  # noqa: E402
from semiflow.plugin.flowstore import packet_array_writers, write_meta  # noqa: E402


def build_store(X: np.ndarray, n_flows: int, files: int, out: Path) -> None:
    """An extraction directory of n_flows flows: X's flows repeated, rows packed as
    `semiflow extract` packs them (each row cut after its last non-zero byte)."""
    out.mkdir(parents=True, exist_ok=True)
    n0, k, length = X.shape
    nz = X != 0
    ext = np.where(nz.any(2), length - np.argmax(nz[..., ::-1], axis=2), 0).astype(np.int32)
    present = ext > 0
    offs0 = np.full((n0, k), -1, np.int64)
    offs0[present] = np.concatenate([[0], np.cumsum(ext[present])[:-1]])
    blob = np.concatenate([X[i, j, :ext[i, j]] for i, j in zip(*np.nonzero(present))])
    reps = -(-n_flows // n0)
    w = packet_array_writers(out, k)
    left = n_flows
    with open(out / "packets.bin", "wb") as f:
        for r in range(reps):
            m = min(n0, left)
            f.write(blob.tobytes())     # (a last partial repetition: whole blob, unused tail)
            w["pkt_off"].write(np.where(offs0[:m] >= 0, offs0[:m] + r * len(blob), -1))
            w["pkt_ext"].write(ext[:m])
            w["pkt_dir"].write(np.where(present[:m], 0, -1).astype(np.int8))
            w["pkt_ts"].write(np.zeros((m, k)))
            w["pkt_len"].write(ext[:m])
            left -= m
    for x in w.values():
        x.close()
    per_file = -(-n_flows // files)
    flows = pd.DataFrame({
        "row": np.arange(n_flows, dtype=np.int64),
        "uid": [f"C{i:x}" for i in range(n_flows)],
        "ts": 1.7e9 + np.arange(n_flows) * 1e-3,
        "n_selected": np.tile(present.sum(1), reps)[:n_flows].astype(np.int16),
        "label": "normal", "family": "", "source": "",
        "source_file": [f"tile{i // per_file:04d}.pcap" for i in range(n_flows)]})
    flows.to_parquet(out / "flows.parquet", index=False)
    write_meta(out, FlowSampleSpec(k=k, l=length), n_flows,
               {"inputs": [], "packets": 0, "skipped": {}, "bad_files": [], "seconds": 0})


def train(store: Path, out: Path, device: str | None, shard_flows: int | None,
          batch: int, nproc: int = 1) -> dict:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
              if nproc > 1 else [sys.executable])
    cmd = launch + ["-m", "semiflow", "train", str(store), "-o", str(out), "-q",
                    "--max-flows", "0", "--epochs", "1", "--batch-size", str(batch)]
    cmd += ["--ddp"] if nproc > 1 else []
    cmd += ["--device", device] if device else []
    cmd += ["--shard-flows", str(shard_flows)] if shard_flows else []
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = p.communicate()[0]
    secs = time.perf_counter() - t
    if p.returncode != 0:
        return {"error": text.strip().splitlines()[-1] if text.strip() else "failed"}
    import resource
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(secs, 1), "peak_rss_children_mib": round(peak),
            "last": text.strip().splitlines()[-1]}


def _hwm() -> dict:
    """This process's resident set now and at its peak (MiB), from /proc."""
    f = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: round(int(f[k].split()[0]) / 1024) for k in ("VmRSS", "VmHWM")}


class _NoModel:
    """Scores nothing: the data path reads every sample a scoring pass reads."""

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))


def data_path(store: Path, shard_flows: int, seed: int = 42) -> dict:
    """What `semiflow train STORE --max-flows 0 --shard-flows N` does for data, in this
    process, without the model: the parts, the provenance, the shards, the service
    vocabulary pass, one epoch of shards (CPU), the val samples, calib and anomalous read
    in shards as scoring reads them. Peak RSS at each step (/proc VmHWM)."""
    import math
    import resource

    import torch  # noqa: F401  (training imports it first: its RSS is in the baseline)

    from semiflow.detector.models.semiflow_flownet import FlowNetConfig
    from semiflow.detector.threshold import DEFAULT_TARGET_FPR
    from semiflow.training.train import _provenance, flow_parts
    from semiflow.training.train_flow import _scores, streamed_inputs

    steps, t = {"start": _hwm()}, time.perf_counter()
    parts, stores = flow_parts([store], 0, seed, lambda m: None, None, "auto",
                               math.ceil(1 / DEFAULT_TARGET_FPR), None)
    _provenance(parts, [store], "bench", seed, None, 0, "auto")
    steps["parts"] = _hwm()
    spec = stores[0].spec
    cfg = FlowNetConfig.named("default", k=spec.k,
                              length=min(FlowNetConfig.named("default").length, spec.l))
    train_x, X = streamed_inputs(parts, stores, cfg, shard_flows, seed)
    steps["val"] = _hwm()
    train_x.service_counts()
    steps["services"] = _hwm()
    n = sum(len(c) for c in train_x.chunks(seed))
    steps["epoch"] = _hwm()
    for name in ("calib", "anomalous"):
        _scores(_NoModel(), stores, parts[name], cfg, shard_flows)
    steps["scoring"] = _hwm()
    return {"seconds": round(time.perf_counter() - t, 1), "flows_per_epoch": n,
            "parts": {k: len(v) for k, v in parts.items()},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "steps": steps}


def data_path_only(a: argparse.Namespace, X: np.ndarray) -> None:
    """--data-path-only: each size's data path in its own child; peak RSS and bytes/flow."""
    k, work, peaks = X.shape[1], Path(a.work), []
    sizes = [a.small_rows, a.rows]
    for rows in sizes:
        store = _store(X, rows, a.files, work)
        r = subprocess.run([sys.executable, __file__, "--_data", str(store),
                            str(a.shard_flows)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{rows:,} rows: failed: {r.stderr.strip()[-500:]}")
            return
        res = json.loads(r.stdout.strip().splitlines()[-1])
        peaks.append(res["peak_rss_mib"])
        print(f"| {rows:,} | {rows // k:,} | {res['seconds']} | {res['peak_rss_mib']:,} | "
              f"{json.dumps(res['steps'])} |", flush=True)
    flows = [r // k for r in sizes]
    per = (peaks[1] - peaks[0]) * 2**20 / (flows[1] - flows[0])
    print(f"peak RSS grows {per:.1f} bytes per flow between {flows[0]:,} and {flows[1]:,} flows")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


def _store(X: np.ndarray, rows: int, files: int, work: Path) -> Path:
    """The synthetic extraction of `rows` packet rows under work (built once)."""
    store = work / f"store-{rows}"
    if not store.exists():
        t = time.perf_counter()
        build_store(X, rows // X.shape[1], files, store)
        print(f"(built {store}: {sum(f.stat().st_size for f in store.iterdir()) / 2**30:.1f}"
              f" GiB in {time.perf_counter() - t:.0f} s)", flush=True)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", required=True, help="normal flows (.npz or extraction dir)")
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--small-rows", type=int, default=5_000_000)
    ap.add_argument("--shard-flows", type=int, default=262_144)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default=None)
    ap.add_argument("--work", default="/tmp/semiflow-shards")
    ap.add_argument("--nproc-large", type=int, default=1,
                    help="train the large set with this many GPUs (torchrun, --ddp)")
    ap.add_argument("--whole-at-large", action="store_true",
                    help="also train the large set whole (needs its size in RAM)")
    ap.add_argument("--data-path-only", action="store_true",
                    help="no model: what sharded training does for data (parts, shards, "
                         "service pass, one epoch, val/calib reads) at --small-rows and "
                         "--rows, peak RSS of each")
    ap.add_argument("--keep", action="store_true", help="keep the stores under --work")
    a = ap.parse_args()
    src = load(a.flows)
    X = src.X[(~src.anomalous) & (src.n_selected > 0)]
    k = X.shape[1]
    work = Path(a.work)
    if a.data_path_only:
        print(f"shard = {a.shard_flows} flows; data path only (no model), CPU\n"
              "| packet rows | flows | seconds | peak RSS (MiB) | steps (MiB) |\n"
              "|---|---|---|---|---|")
        data_path_only(a, X)
        return
    runs = [(a.small_rows, None, 1), (a.small_rows, a.shard_flows, 1),
            (a.rows, a.shard_flows, a.nproc_large)]
    if a.whole_at_large:
        runs.append((a.rows, None, a.nproc_large))
    print(f"shard = {a.shard_flows} flows = {a.shard_flows * k * X.shape[2] / 2**20:.0f} MiB "
          "dense")
    print("| packet rows | flows | training | seconds | peak RSS (MiB) |\n|---|---|---|---|---|")
    for rows, shard, nproc in runs:
        store = _store(X, rows, a.files, work)
        # each setting in its own child: ru_maxrss of RUSAGE_CHILDREN is the max over them
        r = subprocess.run([sys.executable, __file__, "--_one", str(store), a.device or "",
                            str(shard or 0), str(a.batch_size), str(work / "model"),
                            str(nproc)],
                           capture_output=True, text=True)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {
            "error": r.stderr.strip()[-300:]}
        how = (f"sharded ({shard} flows)" if shard else "whole (in memory)") + (
            f", DDP on {nproc} GPUs (peak of one rank)" if nproc > 1 else "")
        if "error" in res:
            print(f"| {rows:,} | {rows // k:,} | {how} | failed: {res['error']} | |")
        else:
            print(f"| {rows:,} | {rows // k:,} | {how} | {res['seconds']} | "
                  f"{res['peak_rss_children_mib']:,} |", flush=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_data":
        print(json.dumps(data_path(Path(sys.argv[2]), int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_one":
        store, dev, shard, batch, out, nproc = sys.argv[2:8]
        print(json.dumps(train(Path(store), Path(out), dev or None, int(shard) or None,
                               int(batch), int(nproc))))
    else:
        main()
