"""`semiflow extract --jobs N`: one process per core, each capture its own flow table, one
merged extraction directory (the same format and row order as a sequential run).

The sequential extract keeps one flow table across the captures given, so a flow that spans
two consecutive files (a rotated capture) stays one flow. With --jobs every capture is scanned
alone, as Zeek does when it reads the files one by one: such a flow becomes two. Everything
else (samples, labels, skip counts per file) is the same; tests/test_extract_parallel.py
holds the two against each other.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.capture import ScanReport
from semiflow.plugin.flowstore import packet_array_writers, write_meta


def _some(jobs: list[tuple[int, str, str]], spec: FlowSampleSpec, manifest, conn_labels,
          strict: bool, label: str | None) -> list[tuple[int, ScanReport]]:
    """Several captures, each alone (a task per file would spend more on the hand-off)."""
    from .extract import extract

    return [(i, extract([cap], out, spec, manifest=manifest, conn_labels=conn_labels,
                        strict=strict, label=label)) for i, cap, out in jobs]


def _tasks(sizes: list[int], jobs: int) -> list[list[int]]:
    """Capture indices grouped into tasks of about total / (8 * jobs) bytes, largest first
    (the long files start early and the pool ends together)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    target = max(1, sum(sizes) // (8 * jobs))
    tasks, cur, acc = [], [], 0
    for i in order:
        cur.append(i)
        acc += sizes[i]
        if acc >= target:
            tasks.append(cur)
            cur, acc = [], 0
    return tasks + ([cur] if cur else [])


def extract_parallel(captures: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                     spec: FlowSampleSpec, jobs: int, manifest=None, conn_labels=None,
                     strict: bool = False, progress: bool = False,
                     label: str | None = None) -> ScanReport:
    """extract() over `jobs` processes; returns the merged report."""
    started = time.perf_counter()
    out = Path(out_dir)
    parts_dir = out / ".parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    caps = [str(c) for c in captures]
    sizes = [os.path.getsize(c) if os.path.exists(c) else 0 for c in caps]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=f"extract x{jobs}",
                   leave=False)
    reports: dict[int, ScanReport] = {}
    try:
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            pending = {pool.submit(_some, [(i, caps[i], str(parts_dir / f"{i:07d}"))
                                           for i in task], spec, manifest, conn_labels,
                                   strict, label) for task in _tasks(sizes, jobs)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    for i, rep in f.result():     # re-raises a worker's error (--strict)
                        reports[i] = rep
                        if bar is not None:
                            bar.update(sizes[i])
        report = merge_stores([parts_dir / f"{i:07d}" for i in range(len(caps))], out, spec,
                              [reports[i] for i in range(len(caps))],
                              time.perf_counter() - started)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(parts_dir, ignore_errors=True)
    return report


def merge_stores(parts: list[Path], out: Path, spec: FlowSampleSpec,
                 reports: list[ScanReport], seconds: float) -> ScanReport:
    """Concatenate per-capture extraction directories into `out` (offsets shifted, rows
    renumbered) and the per-capture reports into one."""
    merged = ScanReport()
    writers = packet_array_writers(out, spec.k)
    inputs, pq_writer, schema, blob_size, rows = [], None, None, 0, 0
    with open(out / "packets.bin", "wb") as blob:
        for part, rep in zip(parts, reports):
            meta = json.loads((part / "extract.json").read_text())
            inputs += meta["inputs"]
            merged.files += rep.files
            merged.packets += rep.packets
            for r, n in rep.skipped.items():
                merged.add_skip(r, n)
            merged.bad_files += rep.bad_files
            merged.per_file += rep.per_file
            n = int(meta["flows"])
            if n:
                off = np.load(part / "pkt_off.npy")
                writers["pkt_off"].write(np.where(off >= 0, off + blob_size, -1))
                for name in ("pkt_ext", "pkt_dir", "pkt_ts", "pkt_len"):
                    writers[name].write(np.load(part / f"{name}.npy"))
                with open(part / "packets.bin", "rb") as f:
                    shutil.copyfileobj(f, blob, 1 << 22)
                blob_size += (part / "packets.bin").stat().st_size
                t = pq.read_table(part / "flows.parquet")
                t = t.set_column(t.schema.get_field_index("row"), "row",
                                 pa.array(np.arange(rows, rows + n, dtype=np.int64)))
                if pq_writer is None:
                    schema = t.schema
                    pq_writer = pq.ParquetWriter(out / "flows.parquet", schema)
                pq_writer.write_table(t.cast(schema))
                rows += n
    if pq_writer is not None:
        pq_writer.close()
    else:                                   # no flow at all: an empty, readable table
        shutil.copy(parts[-1] / "flows.parquet", out / "flows.parquet")
    for w in writers.values():
        w.close()
    merged.flows = rows
    write_meta(out, spec, rows, {"inputs": inputs, "packets": merged.packets,
                                 "skipped": merged.skipped, "seconds": round(seconds, 3),
                                 "bad_files": [list(b) for b in merged.bad_files]})
    return merged
