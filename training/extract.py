"""Captures -> extraction directory (samples + flow table + labels): `semiflow extract`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.plugin.capture import (
    GZIP_MAGIC,
    PCAP_MAGICS,
    PCAPNG_MAGIC,
    CaptureError,
    FlowTable,
    ScanReport,
    scan_capture,
)
from semiflow.plugin.flowstore import FlowStoreWriter, batch_to_frame

from .labels import UNKNOWN, ConnLogLabels, Manifest


class StrictError(RuntimeError):
    """--strict and something was skipped."""


def _is_capture(path: Path) -> bool:
    """pcap, pcapng or a gzip'd one, by the first bytes (names vary: .cap, .dmp, none)."""
    import gzip

    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == GZIP_MAGIC:
            with gzip.open(path, "rb") as g:
                head = g.read(4)
    except (OSError, EOFError):
        return True  # unreadable: let the scan say why, counted as a bad file
    return head in PCAP_MAGICS or head == PCAPNG_MAGIC


def expand_captures(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Files as given; directories searched recursively for captures (sorted). Returns
    (captures, files under the directories that are not captures: README, LICENSE, ...)."""
    out, ignored = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(str(p))
            continue
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            (out if _is_capture(f) else ignored).append(str(f))
    return out, ignored


def extract(captures: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            spec: FlowSampleSpec, manifest: Manifest | None = None,
            conn_labels: ConnLogLabels | None = None, strict: bool = False,
            progress: bool = False, label: str | None = None) -> ScanReport:
    """Scan every capture into one extraction directory; returns what was seen and skipped.
    `label` labels every flow (family "user"), for traffic known as a whole."""
    report = ScanReport()
    writer = FlowStoreWriter(out_dir, spec)
    table = FlowTable(spec)
    total = sum(os.path.getsize(c) for c in captures if os.path.exists(c))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="extract", leave=False)
    started = time.perf_counter()
    inputs = []
    try:
        for cap in captures:
            cap = str(cap)
            size = os.path.getsize(cap) if os.path.exists(cap) else 0
            try:
                for batch in scan_capture(cap, table, report):
                    flows = batch_to_frame(batch, cap)
                    labels = _labels(flows, cap, manifest, conn_labels, label)
                    for col in ("label", "family", "source"):
                        flows[col] = labels[col].to_numpy() if col in labels else ""
                    writer.write(batch, flows)
            except (CaptureError, OSError) as e:
                report.bad_files.append((cap, str(e)))
            seen = report.per_file[-1] if report.per_file and \
                report.per_file[-1]["file"] == cap else {"packets": 0, "skipped": {}}
            inputs.append({"file": cap, "bytes": size, "packets": seen["packets"],
                           "skipped": seen["skipped"], "decoded": seen.get("decoded", {})})
            if bar is not None:
                bar.update(size)
            if strict and not report.clean:
                raise StrictError("; ".join(report.summary_lines()[:5]))
    finally:
        if bar is not None:
            bar.close()
        report.flows = writer.rows
        writer.close({"inputs": inputs, "packets": report.packets,
                      "skipped": report.skipped, "decoded": report.decoded,
                      "bad_files": [list(b) for b in report.bad_files],
                      "seconds": round(time.perf_counter() - started, 3)})
    return report


def _labels(flows, cap, manifest, conn_labels, label=None):
    import pandas as pd
    out = pd.DataFrame({"label": label or UNKNOWN, "family": "user" if label else "",
                        "source": ""}, index=flows.index)
    if manifest is not None:
        out = manifest.label_flows(flows, cap)
    if conn_labels is not None:
        cl = conn_labels.label_flows(flows)
        hit = cl["label"] != UNKNOWN
        out.loc[hit, "label"] = cl.loc[hit, "label"]
        out.loc[hit, "family"] = cl.loc[hit, "family"]
    return out


def default_out(captures: Sequence[str]) -> Path:
    return Path(Path(captures[0]).stem + ".flows")
