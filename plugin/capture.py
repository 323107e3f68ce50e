"""Read pcap/pcapng (optionally gzip) captures as a stream and cut them into flows.

Memory is bounded by the live flows, not by the capture: the file is read in fixed-size
blocks and finished flows leave the table as batches (see FlowBatch).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numba import types
from numba.typed import Dict

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec

from . import flowscan as fs
from . import ipfrag

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (0, 0), b"\xa1\xb2\xc3\xd4": (1, 0),   # microseconds: (swap, nsec)
    b"\x4d\x3c\xb2\xa1": (0, 1), b"\xa1\xb2\x3c\x4d": (1, 1),   # nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 8 << 20
# What a broken gzip stream raises: a bad header (OSError), a cut (EOFError), corrupt
# deflate data (zlib.error, which is not an OSError).
STREAM_ERRORS = (OSError, EOFError, zlib.error)
MAX_CAPLEN = 1 << 18  # libpcap's MAXIMUM_SNAPLEN; a larger caplen means a corrupt record

# Zeek's defaults: tcp_inactivity_timeout, udp_inactivity_timeout, icmp_inactivity_timeout,
# tcp_close_delay (also tcp_reset_delay). See scripts/base/init-bare.zeek.
ZEEK_TIMEOUTS = {"tcp": 300.0, "udp": 60.0, "icmp": 60.0, "close": 5.0}

_KEY = types.UniTuple(types.int64, 6)


class CaptureError(ValueError):
    """A capture that cannot be read at all (bad magic, unreadable file)."""


class BadRecord(CaptureError):
    """Record framing is corrupt; `offset` is where the record starts in the scan buffer."""

    def __init__(self, offset: int):
        super().__init__(f"corrupt record at byte {offset} of the scan buffer: cannot "
                         "resynchronise")
        self.offset = offset


@dataclass
class FlowBatch:
    """Finished flows, row i of every array belonging to flow i.

    The K x L sample rows are held packed (each row cut at its extent, as on disk); `data`
    materialises the dense uint8[m, K, L] view when asked for.
    """

    ints: np.ndarray      # int64[m, flowscan.NI]
    times: np.ndarray     # float64[m, 2]: first, last packet
    packed: np.ndarray    # uint8[...]: stored part of every selected row, concatenated
    offsets: np.ndarray   # int64[m, K]: offset of each row in packed, -1 = empty slot
    extent: np.ndarray    # int32[m, K]: bytes of each row before its zero padding
    direction: np.ndarray  # int8[m, K]
    pkt_ts: np.ndarray    # float64[m, K]
    pkt_len: np.ndarray   # int32[m, K]
    l: int

    def __len__(self) -> int:
        return self.ints.shape[0]

    @property
    def data(self) -> np.ndarray:
        out = np.zeros((len(self), self.offsets.shape[1], self.l), np.uint8)
        fs.unpack_rows(self.packed, self.offsets, self.extent,
                       np.arange(len(self), dtype=np.int64), out)
        return out


@dataclass
class ScanReport:
    """What a scan saw and what it skipped, per reason."""

    files: int = 0
    packets: int = 0
    flows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    # one entry per capture scanned: {"file", "packets" (used), "skipped" {reason: n}, "decoded"}
    per_file: list[dict] = field(default_factory=list)
    # what decapsulation and reassembly added (flowscan.NOTES): informational, not skips
    decoded: dict[str, int] = field(default_factory=dict)

    def add_skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def add_decoded(self, what: str, n: int) -> None:
        self.decoded[what] = self.decoded.get(what, 0) + n

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def clean(self) -> bool:
        return not self.skipped and not self.bad_files

    def summary_lines(self) -> list[str]:
        lines = [f"skipped {n} packets: {r}" for r, n in sorted(self.skipped.items(),
                                                                key=lambda x: -x[1])]
        lines += [f"{p}: {why}" for p, why in self.bad_files]
        return lines

    def file_lines(self, limit: int = 20) -> list[str]:
        """Per capture with skipped packets: packets used, skipped, and why (most first)."""
        hit = [f for f in self.per_file if f["skipped"]]
        lines = [f"{f['file']}: {f['packets']} packets used, {sum(f['skipped'].values())} "
                 "skipped (" + ", ".join(f"{n} {r}" for r, n in sorted(
                     f["skipped"].items(), key=lambda x: -x[1])) + ")" for f in hit[:limit]]
        if len(hit) > limit:
            lines.append(f"... and {len(hit) - limit} more capture(s) with skipped packets "
                         "(all of them in extract.json)")
        return lines


class FlowTable:
    """The numba kernels' state: live flows, a pool of sample rows, an output buffer."""

    def __init__(self, spec: FlowSampleSpec, slots: int = 4096, out: int = 4096,
                 timeouts: dict[str, float] | None = None, sweep_every: float = 1.0):
        self.spec = spec
        k, l = spec.k, spec.l
        self.info = np.zeros(fr.NFIELDS, np.int64)
        self.ints = np.zeros((slots, fs.NI), np.int64)
        self.tss = np.zeros((slots, 2), np.float64)
        self.sel = np.zeros((slots, k), np.int64)
        self.sdir = np.zeros((slots, k), np.int8)
        self.spts = np.zeros((slots, k), np.float64)
        self.splen = np.zeros((slots, k), np.int32)
        self.sext = np.zeros((slots, k), np.int32)
        self.slot_free = np.arange(slots - 1, -1, -1, dtype=np.int64)
        pool = max(slots, 1024)
        self.pool = np.zeros((pool, l), np.uint8)
        self.pool_free = np.arange(pool - 1, -1, -1, dtype=np.int64)
        self.keys = Dict.empty(_KEY, types.int64)
        self.oints = np.zeros((out, fs.NI), np.int64)
        self.otss = np.zeros((out, 2), np.float64)
        self.odata = np.zeros((out, k, l), np.uint8)
        self.odir = np.zeros((out, k), np.int8)
        self.opts = np.zeros((out, k), np.float64)
        self.oplen = np.zeros((out, k), np.int32)
        self.oext = np.zeros((out, k), np.int32)
        self.st = np.zeros(fs.NS, np.int64)
        self.st[fs.S_SLOT_TOP] = slots
        self.st[fs.S_POOL_TOP] = pool
        self.fst = np.zeros(3, np.float64)
        self.cfg = np.array([k, spec.selection_code, spec.mask_bits, MAX_CAPLEN], np.int64)
        t = dict(ZEEK_TIMEOUTS, **(timeouts or {}))
        self.tmo = np.array([t["tcp"], t["udp"], t["icmp"], t["close"], sweep_every])
        self.skips = np.zeros(len(fr.SKIP_REASONS), np.int64)
        self.if_link = np.zeros(64, np.int64)
        self.if_res = np.zeros(64, np.float64)
        self.frags = ipfrag.FragTable()

    @property
    def live_flows(self) -> int:
        return len(self.keys)

    def _state(self):
        return (self.ints, self.tss, self.sel, self.sdir, self.spts, self.splen, self.sext,
                self.pool, self.pool_free, self.slot_free, self.keys, self.oints, self.otss,
                self.odata, self.odir, self.opts, self.oplen, self.oext, self.st)

    def grow_slots(self) -> None:
        old = self.ints.shape[0]
        new = old * 2
        for name in ("ints", "tss", "sel", "sdir", "spts", "splen", "sext"):
            a = getattr(self, name)
            b = np.zeros((new,) + a.shape[1:], a.dtype)
            b[:old] = a
            setattr(self, name, b)
        self.slot_free = self._grow_free(self.slot_free, fs.S_SLOT_TOP, old, new)

    def grow_pool(self) -> None:
        old = self.pool.shape[0]
        new = old * 2
        pool = np.zeros((new, self.pool.shape[1]), np.uint8)
        pool[:old] = self.pool
        self.pool = pool
        self.pool_free = self._grow_free(self.pool_free, fs.S_POOL_TOP, old, new)

    def _grow_free(self, free: np.ndarray, top_field: int, old: int, new: int) -> np.ndarray:
        """A free-index stack for new entries: the old free ones, then old..new-1."""
        top = int(self.st[top_field])
        out = np.zeros(new, np.int64)
        out[:top] = free[:top]
        out[top:top + new - old] = np.arange(new - 1, old - 1, -1)
        self.st[top_field] = top + new - old
        return out

    def take_output(self) -> FlowBatch | None:
        m = int(self.st[fs.S_NOUT])
        if m == 0:
            return None
        offsets = np.empty((m, self.spec.k), np.int64)
        packed = fs.pack_rows(self.odata[:m], self.oext[:m], 0, offsets)
        batch = FlowBatch(self.oints[:m].copy(), self.otss[:m].copy(), packed, offsets,
                          self.oext[:m].copy(), self.odir[:m].copy(), self.opts[:m].copy(),
                          self.oplen[:m].copy(), self.spec.l)
        self.st[fs.S_NOUT] = 0
        return batch

    def reset_file(self) -> None:
        """Per-file state: flows never span two capture files."""
        assert self.live_flows == 0
        self.st[fs.S_POS] = 0
        self.st[fs.S_NIF] = 0
        self.fst[:] = 0.0
        self.skips[:] = 0
        self.st[fs.S_NOTE0:] = 0

    def scan(self, buf: np.ndarray, n: int, final: bool, pcapng: bool) -> Iterator[FlowBatch]:
        """Consume complete records of buf[:n]; yields finished flows as the buffer fills."""
        while True:
            if pcapng:
                code = fs.scan_pcapng(buf, n, final, self.info, self.if_link, self.if_res,
                                      *self._state(), self.fst, self.cfg, self.tmo, self.skips,
                                      *self.frags.state())
            else:
                code = fs.scan_pcap(buf, n, final, self.info, *self._state(), self.fst,
                                    self.cfg, self.tmo, self.skips, *self.frags.state())
            if code == fs.R_NEED_DATA:
                return
            if code == fs.R_OUT_FULL:
                batch = self.take_output()
                if batch is not None:
                    yield batch
            elif code == fs.R_NEED_SLOTS:
                self.grow_slots()
            elif code == fs.R_NEED_POOL:
                self.grow_pool()
            elif code == fs.R_NEED_IFACES:
                self.if_link = np.concatenate([self.if_link, np.zeros_like(self.if_link)])
                self.if_res = np.concatenate([self.if_res, np.zeros_like(self.if_res)])
            elif code == fs.R_BAD_RECORD:
                raise BadRecord(int(self.st[fs.S_POS]))

    def finish(self) -> Iterator[FlowBatch]:
        # Datagrams still missing a piece never complete.
        ipfrag.give_up_all(*self.frags.state(), self.keys, self.skips)
        while fs.finish(*self._state(), self.tmo) == fs.R_OUT_FULL:
            batch = self.take_output()
            if batch is not None:
                yield batch
        batch = self.take_output()
        if batch is not None:
            yield batch


def open_capture(path: str | os.PathLike):
    """Open a capture, transparently gunzipping; returns (file object, is_pcapng, header info)."""
    with open(path, "rb") as f:
        head = f.read(4)
    fh = gzip.open(path, "rb") if head[:2] == GZIP_MAGIC else open(path, "rb")
    try:
        magic = fh.read(4)
        rest = fh.read(20) if magic in PCAP_MAGICS else b""
    except STREAM_ERRORS as e:
        fh.close()
        raise CaptureError(f"unreadable: {e}") from e
    if magic == PCAPNG_MAGIC:
        return fh, True, magic
    if magic in PCAP_MAGICS:
        if len(rest) < 20:
            fh.close()
            raise CaptureError("truncated pcap file header")
        return fh, False, magic + rest
    fh.close()
    if len(magic) < 4:
        raise CaptureError("empty or truncated file (no capture header)")
    raise CaptureError(f"not a pcap or pcapng file (magic {magic.hex()})")


def _read_block(fh, size: int) -> tuple[bytes, Exception | None]:
    """Read up to size bytes; on a broken stream return what was read before the error."""
    parts: list[bytes] = []
    got = 0
    read = getattr(fh, "read1", fh.read)
    try:
        while got < size:
            b = read(size - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
    except STREAM_ERRORS as e:
        return b"".join(parts), e
    return b"".join(parts), None


def scan_capture(path: str | os.PathLike, table: FlowTable, report: ScanReport,
                 progress: Callable[[int], None] | None = None) -> Iterator[FlowBatch]:
    """Stream one capture through the flow table, yielding finished flows."""
    fh, pcapng, header = open_capture(path)
    table.reset_file()
    try:
        if pcapng:
            carry = header  # the SHB starts at byte 0: let the kernel parse it
        else:
            swap, nsec = PCAP_MAGICS[header[:4]]
            order = ">" if swap else "<"
            network = int(np.frombuffer(header[20:24], dtype=order + "u4")[0])
            linktype = network & 0x0FFFFFFF
            table.st[fs.S_SWAP] = swap
            table.st[fs.S_NSEC] = nsec
            table.st[fs.S_LINKTYPE] = linktype
            carry = b""
        buf = np.zeros(BLOCK * 2, np.uint8)
        n = len(carry)
        buf[:n] = np.frombuffer(carry, np.uint8)
        eof = False
        done = 0
        try:
            while not eof:
                chunk, err = _read_block(fh, BLOCK)
                if err is not None:  # truncated or corrupt gzip stream: keep what was read
                    report.bad_files.append(
                        (str(path), f"unreadable after byte {done + n + len(chunk)}: {err}"))
                eof = len(chunk) == 0 or err is not None
                if n + len(chunk) > buf.shape[0]:
                    bigger = np.zeros(n + len(chunk) + BLOCK, np.uint8)
                    bigger[:n] = buf[:n]
                    buf = bigger
                buf[n:n + len(chunk)] = np.frombuffer(chunk, np.uint8)
                n += len(chunk)
                table.st[fs.S_POS] = 0
                yield from table.scan(buf, n, eof, pcapng)
                pos = int(table.st[fs.S_POS])
                done += pos
                if progress is not None:
                    progress(pos)
                buf[: n - pos] = buf[pos:n]
                n -= pos
        except BadRecord as e:  # offsets in the (decompressed) file, the pcap header counted
            at = (0 if pcapng else len(header)) + done + e.offset
            report.bad_files.append((str(path), f"corrupt record at byte {at}: cannot "
                                                "resynchronise, the rest of the file skipped"))
        yield from table.finish()
    finally:
        fh.close()
        report.files += 1
        used = int(table.st[fs.S_PACKETS])
        report.packets += used
        table.st[fs.S_PACKETS] = 0
        skipped = {fr.SKIP_REASONS[i]: int(c) for i, c in enumerate(table.skips) if i and c}
        for reason, c in skipped.items():
            report.add_skip(reason, c)
        decoded = {fs.NOTES[i]: int(c) for i, c in enumerate(table.st[fs.S_NOTE0:]) if c}
        for what, c in decoded.items():
            report.add_decoded(what, c)
        report.per_file.append({"file": str(path), "packets": used, "skipped": skipped,
                                "decoded": decoded})
