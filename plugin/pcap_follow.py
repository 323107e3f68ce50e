"""Follow Suricata's pcap-log directory: rotated files, growing while Suricata writes them.

One FlowTable lives across all the files of a Suricata run, so a flow whose packets span a
rotation is one flow (capture.scan_capture resets the table per file; this module does not).
Only complete records are consumed; the byte offset reached in the current file is state
that can be saved with the table's live flows (snapshot_table / restore_table), so a
restarted follower resumes exactly where it stopped: no packet scored twice, none dropped.
A file is complete once a newer one exists (Suricata closed it) or when told so (offline);
a partial record left at the end of a complete file is counted, as is a file that vanished
(pcap-log's ring buffer deleted it) before it was read to the end.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec

from . import flowscan as fs
from .capture import PCAP_MAGICS, CaptureError, FlowBatch, FlowTable

LZ4_MAGIC = b"\x04\x22\x4d\x18"
READ_BLOCK = 8 << 20
_EMPTY = np.zeros(16, np.uint8)


def pcap_log_files(directory: str | os.PathLike, prefix: str = "log.pcap") -> list[Path]:
    """pcap-log's files in write order (names end in .SEC or .SEC.USEC, or a bare prefix)."""
    pat = re.compile(re.escape(prefix) + r"((?:\.\d+)*)$")
    found = []
    for p in Path(directory).iterdir():
        m = pat.match(p.name)
        if m and p.is_file():
            key = tuple(int(x) for x in m.group(1).split(".")[1:])
            found.append((key, p))
    found.sort(key=lambda kp: (kp[0], kp[1].name))
    return [p for _, p in found]


def _file_key(p: Path) -> tuple:
    parts = p.name.split(".")
    return tuple(int(x) for x in parts if x.isdigit())


@dataclass
class FollowCounters:
    files_done: int = 0
    files_vanished: int = 0      # deleted (ring buffer) before they were read to the end
    bytes_read: int = 0
    truncated_tails: int = 0     # complete files ending in a partial record
    bad_files: int = 0           # not classic pcap (pcap-log compression: lz4?) or corrupt


@dataclass
class FollowPosition:
    """Where the follower stands: the current file (name) and bytes consumed in it."""

    file: str | None = None
    offset: int = 0


class PcapLogFollower:
    """Feed pcap-log files, as they grow, through one persistent FlowTable."""

    def __init__(self, directory: str | os.PathLike, table: FlowTable, prefix: str = "log.pcap",
                 position: FollowPosition | None = None):
        self.directory = Path(directory)
        self.table = table
        self.prefix = prefix
        self.pos = position or FollowPosition()
        self.counters = FollowCounters()
        self.problems: list[str] = []
        self._buf = np.zeros(READ_BLOCK * 2, np.uint8)

    # --- reading ---------------------------------------------------------------------------
    def _pending_files(self) -> list[Path]:
        files = pcap_log_files(self.directory, self.prefix)
        if self.pos.file is None:
            return files
        cur = self.directory / self.pos.file
        key = _file_key(cur)
        later = [p for p in files if (_file_key(p), p.name) > (key, cur.name)]
        return ([cur] if cur in files else []) + later

    def poll(self, final: bool = False) -> Iterator[FlowBatch]:
        """Consume every complete record now on disk. final: no file will grow any more."""
        files = self._pending_files()
        if self.pos.file is not None and self.pos.offset >= 0 and \
                (not files or files[0].name != self.pos.file):
            self.counters.files_vanished += 1
            self.problems.append(f"{self.pos.file}: vanished after byte {self.pos.offset}")
            self.pos = FollowPosition(self.pos.file, -1)
        for i, path in enumerate(files):
            if self.pos.file != path.name:
                self.pos = FollowPosition(path.name, 0)
            elif self.pos.offset < 0:
                continue            # read to the end earlier
            complete = final or i < len(files) - 1
            try:
                yield from self._read_file(path, complete)
            except FileNotFoundError:
                self.counters.files_vanished += 1
                self.problems.append(f"{path.name}: vanished after byte {self.pos.offset}")
                complete = True
            except CaptureError as e:
                self.counters.bad_files += 1
                self.problems.append(f"{path.name}: {e}; rest of file skipped")
                complete = True
            if not complete:
                return
            self.pos.offset = -1
            self.counters.files_done += 1

    def _header(self, fh) -> bool:
        head = fh.read(24)
        if len(head) < 24:
            return False
        if head[:4] == LZ4_MAGIC:
            raise CaptureError("lz4-compressed pcap-log: set pcap-log compression: none")
        if head[:4] not in PCAP_MAGICS:
            raise CaptureError(f"not a classic pcap file (magic {head[:4].hex()})")
        swap, nsec = PCAP_MAGICS[head[:4]]
        network = int(np.frombuffer(head[20:24], dtype=(">" if swap else "<") + "u4")[0])
        st = self.table.st
        st[fs.S_SWAP], st[fs.S_NSEC], st[fs.S_LINKTYPE] = swap, nsec, network & 0x0FFFFFFF
        return True

    def _read_file(self, path: Path, complete: bool) -> Iterator[FlowBatch]:
        with open(path, "rb") as fh:
            if not self._header(fh):
                if complete:
                    self.counters.truncated_tails += 1
                return
            off = max(self.pos.offset, 24)
            while True:
                fh.seek(off)
                chunk = fh.read(READ_BLOCK)
                eof = len(chunk) < READ_BLOCK
                n = len(chunk)
                if n > self._buf.shape[0]:
                    self._buf = np.zeros(n + READ_BLOCK, np.uint8)
                self._buf[:n] = np.frombuffer(chunk, np.uint8)
                last = complete and eof
                before = int(self.table.skips[fr.SKIP_TRUNCATED_RECORD])
                self.table.st[fs.S_POS] = 0
                yield from self.table.scan(self._buf, n, last, False)
                yield from self._take()
                used = int(self.table.st[fs.S_POS])
                if last and int(self.table.skips[fr.SKIP_TRUNCATED_RECORD]) > before:
                    self.counters.truncated_tails += 1
                off += used
                self.counters.bytes_read += used
                self.pos.offset = off
                if eof or used == 0:
                    break

    def advance_clock(self, now: float) -> Iterator[FlowBatch]:
        """Move capture time forward (no packets for a while) so idle flows time out."""
        fst = self.table.fst
        if now > fst[fs.FS_NOW]:
            fst[fs.FS_NOW] = now
        self.table.st[fs.S_POS] = 0
        yield from self.table.scan(_EMPTY, 0, False, False)
        yield from self._take()

    def _take(self) -> Iterator[FlowBatch]:
        # flows the kernel finished (timeouts) wait in its output buffer: hand them out now,
        # so that none is held back and a checkpoint never misses one
        batch = self.table.take_output()
        if batch is not None:
            yield batch

    @property
    def capture_time(self) -> float:
        """Time of the newest packet read (capture clock)."""
        return float(self.table.fst[fs.FS_NOW])

    def finish(self) -> Iterator[FlowBatch]:
        """Flush every live flow (end of an offline run)."""
        yield from self.table.finish()

    def state(self) -> dict:
        return {"position": asdict(self.pos), "counters": asdict(self.counters)}


# --- the flow table's live flows, saved and restored ------------------------------------------
def snapshot_table(table: FlowTable) -> dict[str, np.ndarray]:
    """The live flows of a table (and its clocks and counters) as plain arrays."""
    alive = np.nonzero(table.ints[:, fs.I_ALIVE])[0]
    nsel = table.ints[alive, fs.I_NSEL]
    k = table.spec.k
    used = np.arange(k)[None, :] < nsel[:, None]
    return {
        "ints": table.ints[alive], "tss": table.tss[alive], "sdir": table.sdir[alive],
        "spts": table.spts[alive], "splen": table.splen[alive], "sext": table.sext[alive],
        "used": used, "rows": table.pool[table.sel[alive][used]],
        "st": table.st.copy(), "fst": table.fst.copy(), "skips": table.skips.copy(),
    }


def restore_table(spec: FlowSampleSpec, snap: dict[str, np.ndarray], **kw) -> FlowTable:
    """A FlowTable holding the snapshot's live flows, ready to go on scanning."""
    n = len(snap["ints"])
    rows = snap["rows"]
    if rows.shape[1:] != (spec.l,) or snap["used"].shape[1:] != (spec.k,):
        raise ValueError("saved flow table was built with another flow-sample spec")
    slots = max(4096, 1 << int(np.ceil(np.log2(max(2 * n, 1)))))
    t = FlowTable(spec, slots=slots, **kw)
    if len(rows) > t.pool.shape[0] // 2:
        while len(rows) > t.pool.shape[0] // 2:
            t.grow_pool()
    for name in ("ints", "tss", "sdir", "spts", "splen", "sext"):
        getattr(t, name)[:n] = snap[name]
    sel = np.zeros((n, spec.k), np.int64)
    sel[snap["used"]] = np.arange(len(rows))
    t.sel[:n] = sel
    t.pool[:len(rows)] = rows
    # free stacks: the kernels pop from the top; everything at index >= n (>= len(rows)) is free
    t.slot_free[:] = np.arange(t.slot_free.shape[0] - 1, -1, -1)
    t.st[fs.S_SLOT_TOP] = t.ints.shape[0] - n
    t.pool_free[:] = np.arange(t.pool_free.shape[0] - 1, -1, -1)
    t.st[fs.S_POOL_TOP] = t.pool.shape[0] - len(rows)
    for s in range(n):
        key = tuple(int(x) for x in snap["ints"][s, :fs.K_PROTO + 1])
        t.keys[key] = s
    t.st[fs.S_SEQ] = snap["st"][fs.S_SEQ]
    t.st[fs.S_PACKETS] = snap["st"][fs.S_PACKETS]
    if len(snap["st"]) > fs.S_MAX_LAG_US:   # checkpoints from before the late counters lack them
        t.st[fs.S_LATE] = snap["st"][fs.S_LATE]
        t.st[fs.S_MAX_LAG_US] = snap["st"][fs.S_MAX_LAG_US]
    t.fst[:] = snap["fst"]
    t.skips[:] = snap["skips"]
    return t


def save_table(table: FlowTable, path: str | os.PathLike) -> None:
    """Write the live flows atomically (tmp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **snapshot_table(table))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_table(spec: FlowSampleSpec, path: str | os.PathLike, **kw) -> FlowTable:
    with np.load(path) as z:
        return restore_table(spec, {k: z[k] for k in z.files}, **kw)
