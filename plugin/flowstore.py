"""The on-disk format of extracted flows (docs/flow-sample-spec.md, "Output format").

A directory holding
    packets.bin    the selected packets' sample rows, each cut at its extent (the zero padding
                   up to L is not stored: on real traffic that is ~90% of N x K x L)
    pkt_off.npy    int64[N, K]      byte offset of each packet's row in packets.bin, -1 = empty
    pkt_ext.npy    int32[N, K]      stored length of each row (the rest of the L bytes are zero)
    pkt_dir.npy    int8[N, K]       0 originator->responder, 1 responder->originator, -1 empty
    pkt_ts.npy     float64[N, K]    packet timestamps (epoch seconds)
    pkt_len.npy    int32[N, K]      wire length of each packet
    flows.parquet  the flow table (one row per flow, Zeek conn.log-like columns)
    extract.json   spec, inputs, counts and skipped packets by reason
FlowStore.open() presents the samples as an N x K x L uint8 array (PackedSamples: indexing
materialises only the rows asked for). Everything is written as a stream, so N is not
bounded by memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap as _mmap
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semiflow.detector.sample.spec import STATUS_NO_PAYLOAD, STATUS_OK, FlowSampleSpec

from . import flowscan as fs
from .capture import FlowBatch

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}
_HEADER_LEN = 256  # fixed npy header length so it can be rewritten in place with the final N


class NpyStreamWriter:
    """Append rows to a .npy file whose first dimension is only known at the end."""

    def __init__(self, path: str | os.PathLike, dtype, tail_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.tail_shape = tuple(tail_shape)
        self.rows = 0
        self._f = open(self.path, "wb")
        self._f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (n,) + self.tail_shape}
        body = repr(d).encode("latin1")
        pre = b"\x93NUMPY\x01\x00"
        room = _HEADER_LEN - len(pre) - 2 - 1
        body = body + b" " * (room - len(body)) + b"\n"
        return pre + np.uint16(len(body)).tobytes() + body

    def write(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        assert a.shape[1:] == self.tail_shape, (a.shape, self.tail_shape)
        self._f.write(a.tobytes())
        self.rows += a.shape[0]

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(self._header(self.rows))
        self._f.close()


def _addresses(ver: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Text addresses; each distinct address of the batch is formatted once."""
    out = np.empty(len(ver), dtype=object)
    v4 = ver == 4
    if v4.any():
        codes, uniq = pd.factorize(lo[v4])  # hash-based: O(n), no sort
        text = [socket.inet_ntop(socket.AF_INET, (int(a) & 0xFFFFFFFF).to_bytes(4, "big"))
                for a in uniq]
        out[v4] = np.array(text, dtype=object)[codes]
    for i in np.flatnonzero(~v4):  # IPv6: rarer; formatted one by one
        b = (int(hi[i]) & (2**64 - 1)).to_bytes(8, "big") + \
            (int(lo[i]) & (2**64 - 1)).to_bytes(8, "big")
        out[i] = socket.inet_ntop(socket.AF_INET6, b)
    return out


def conn_state(flags: np.ndarray, proto: np.ndarray, orig_pkts: np.ndarray,
               resp_pkts: np.ndarray) -> np.ndarray:
    """Zeek's conn_state from the TCP flag history (base/protocols/conn/main.zeek)."""
    f = flags
    o_syn, r_synack = (f & fs.O_SYN) > 0, (f & fs.R_SYNACK) > 0
    o_fin, r_fin = (f & fs.O_FIN) > 0, (f & fs.R_FIN) > 0
    o_rst, r_rst = (f & fs.O_RST) > 0, (f & fs.R_RST) > 0
    est = o_syn & r_synack
    tcp = np.select(
        [o_syn & ~r_synack & r_rst, o_syn & ~r_synack & o_rst, o_syn & ~r_synack & o_fin,
         ~o_syn & r_synack & r_rst, ~o_syn & r_synack & r_fin,
         est & o_rst, est & r_rst, est & o_fin & r_fin, est & o_fin, est & r_fin, est,
         o_syn & ~r_synack & (resp_pkts == 0), o_syn & ~r_synack],
        ["REJ", "RSTOS0", "SH", "RSTRH", "SHR", "RSTO", "RSTR", "SF", "S2", "S3", "S1",
         "S0", "S0"], default="OTH")
    other = np.where(resp_pkts == 0, "S0", np.where(orig_pkts == 0, "SHR", "SF"))
    return np.where(proto == 6, tcp, other)


_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each element."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def make_uids(source: str, seq: np.ndarray, ts: np.ndarray) -> list[str]:
    """Zeek-style connection uids ("C" + base62), deterministic so reruns agree."""
    salt = np.uint64(int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(),
                                    "big"))
    usec = np.round(np.asarray(ts) * 1e6).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        a = _mix64(np.asarray(seq, np.int64).view(np.uint64) ^ salt)
        b = _mix64(a ^ usec)
    chars = np.empty((len(a), 17), np.uint8)
    chars[:, 0] = ord("C")
    for j, part in ((1, a), (9, b)):  # 8 base62 digits from each 64-bit half
        v = part.copy()
        for i in range(8):
            chars[:, j + i] = _B62[(v % np.uint64(62)).astype(np.int64)]
            v //= np.uint64(62)
    return chars.view("S17").ravel().astype(str).tolist()


def batch_to_frame(batch: FlowBatch, source: str) -> pd.DataFrame:
    """The flow-table rows (conn.log-like) of one batch of finished flows."""
    I = batch.ints  # noqa: N806
    ver = I[:, fs.I_IPVER]
    nsel = I[:, fs.I_NSEL]
    proto = I[:, fs.I_PROTO]
    df = pd.DataFrame({
        "uid": make_uids(source, I[:, fs.I_SEQ], batch.times[:, 0]),
        "ts": batch.times[:, 0],
        "duration": batch.times[:, 1] - batch.times[:, 0],
        "orig_h": _addresses(ver, I[:, fs.I_ORIG_HI], I[:, fs.I_ORIG_LO]),
        "orig_p": I[:, fs.I_ORIG_P].astype(np.int32),
        "resp_h": _addresses(ver, I[:, fs.I_RESP_HI], I[:, fs.I_RESP_LO]),
        "resp_p": I[:, fs.I_RESP_P].astype(np.int32),
        "proto": [PROTO_NAMES.get(int(p), str(int(p))) for p in proto],
        "ip_version": ver.astype(np.int8),
        "orig_pkts": I[:, fs.I_ORIG_PKTS], "resp_pkts": I[:, fs.I_RESP_PKTS],
        "orig_ip_bytes": I[:, fs.I_ORIG_IP_BYTES], "resp_ip_bytes": I[:, fs.I_RESP_IP_BYTES],
        "orig_bytes": I[:, fs.I_ORIG_BYTES], "resp_bytes": I[:, fs.I_RESP_BYTES],
        "conn_state": conn_state(I[:, fs.I_FLAGS], proto, I[:, fs.I_ORIG_PKTS],
                                 I[:, fs.I_RESP_PKTS]),
        "n_selected": nsel.astype(np.int16),
        "status": np.where(nsel > 0, STATUS_OK, STATUS_NO_PAYLOAD),
        "source_file": source,
    })
    return df


class PackedSamples:
    """N x K x L uint8 samples, stored without their zero padding; indexes like an array."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, blob: np.ndarray, offs: np.ndarray, exts: np.ndarray, l: int):
        self.blob, self.offs, self.exts = blob, offs, exts
        self.shape = (offs.shape[0], offs.shape[1], l)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, rows, k: int | None = None, width: int | None = None) -> np.ndarray:
        """Dense uint8[len(rows), K, L] for the given flow rows; only the first k packets
        and width bytes of each when given (read no more than the caller keeps)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        k = self.shape[1] if k is None else min(k, self.shape[1])
        width = self.shape[2] if width is None else min(width, self.shape[2])
        out = np.zeros((rows.shape[0], k, width), np.uint8)
        fs.unpack_rows(self.blob, self.offs, self.exts, rows, out)
        return out

    def packet_rows(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[n_packets, L], position of each packet's flow within rows)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = int((self.offs[rows] >= 0).sum()) if rows.size else 0
        out = np.zeros((n, self.shape[2]), np.uint8)
        pos = np.zeros(n, np.int64)
        fs.unpack_packets(self.blob, self.offs, self.exts, rows, out, pos)
        return out, pos

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            dense = self.rows([int(first) % self.shape[0]])[0]
            return dense[rest] if rest else dense
        dense = self.rows(np.arange(self.shape[0])[first])
        return dense[(slice(None),) + rest] if rest else dense

    def __array__(self, dtype=None, copy=None):
        a = self.rows(np.arange(self.shape[0]))
        return a if dtype is None else a.astype(dtype)


FORMAT_VERSION = 2
# The per-packet arrays of an extraction (see the module docstring), each [N, K].
PACKET_ARRAYS = {"pkt_off": np.int64, "pkt_ext": np.int32, "pkt_dir": np.int8,
                 "pkt_ts": np.float64, "pkt_len": np.int32}


def packet_array_writers(out_dir: str | os.PathLike, k: int) -> dict[str, NpyStreamWriter]:
    """One streaming .npy writer per per-packet array, in PACKET_ARRAYS order."""
    return {n: NpyStreamWriter(Path(out_dir) / f"{n}.npy", t, (k,))
            for n, t in PACKET_ARRAYS.items()}


def write_meta(out_dir: str | os.PathLike, spec: FlowSampleSpec, flows: int, meta: dict
               ) -> None:
    """extract.json: what the writer saw (`meta`), the spec, the flow count, the format."""
    meta = dict(meta, spec=spec.to_dict(), flows=flows, format_version=FORMAT_VERSION)
    (Path(out_dir) / "extract.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


class FlowStoreWriter:
    """Streams batches of flows into an extraction directory."""

    def __init__(self, out_dir: str | os.PathLike, spec: FlowSampleSpec):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        k = spec.k
        self._blob = open(self.dir / "packets.bin", "wb")
        self._blob_size = 0
        w = packet_array_writers(self.dir, k)
        self.pkt_off, self.pkt_ext, self.pkt_dir, self.pkt_ts, self.pkt_len = (
            w[n] for n in PACKET_ARRAYS)
        self._pq: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, batch: FlowBatch, table: pd.DataFrame) -> None:
        table = table.copy()
        table.insert(0, "row", np.arange(self.rows, self.rows + len(table), dtype=np.int64))
        offs = np.where(batch.offsets >= 0, batch.offsets + self._blob_size, -1)
        self._blob.write(batch.packed.data)
        self._blob_size += batch.packed.shape[0]
        self.pkt_off.write(offs)
        self.pkt_ext.write(batch.extent)
        self.pkt_dir.write(batch.direction)
        self.pkt_ts.write(batch.pkt_ts)
        self.pkt_len.write(batch.pkt_len)
        t = pa.Table.from_pandas(table, preserve_index=False)
        if self._pq is None:
            self._schema = t.schema
            self._pq = pq.ParquetWriter(self.dir / "flows.parquet", self._schema)
        self._pq.write_table(t.cast(self._schema))
        self.rows += len(table)

    def close(self, meta: dict) -> None:
        self._blob.close()
        for w in (self.pkt_off, self.pkt_ext, self.pkt_dir, self.pkt_ts, self.pkt_len):
            w.close()
        if self._pq is None:  # no flow at all: still write a readable, empty table
            z = np.zeros((0, 1), np.int32)
            empty = batch_to_frame(FlowBatch(np.zeros((0, fs.NI), np.int64), np.zeros((0, 2)),
                                             np.zeros(0, np.uint8), z.astype(np.int64), z,
                                             z.astype(np.int8), z.astype(float), z, 1), "")
            empty.insert(0, "row", np.zeros(0, np.int64))
            for col in ("label", "family", "source"):
                empty[col] = pd.Series([], dtype=object)
            pq.write_table(pa.Table.from_pandas(empty, preserve_index=False),
                           self.dir / "flows.parquet")
        else:
            self._pq.close()
        write_meta(self.dir, self.spec, self.rows, meta)


@dataclass
class FlowStore:
    """An extraction directory opened for reading (arrays memory-mapped)."""

    path: Path
    spec: FlowSampleSpec
    flows: pd.DataFrame
    samples: PackedSamples
    pkt_dir: np.ndarray
    pkt_ts: np.ndarray
    pkt_len: np.ndarray
    meta: dict

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = True,
             columns: list[str] | None = None,
             categorical: list[str] | None = None) -> FlowStore:
        """columns: read only these of the flow table; categorical: read these as pandas
        categoricals (training needs 5 of 23 columns, labels and file names repeat: at 100M
        flows the table, not the memory-mapped samples, is what fills RAM)."""
        p = Path(path)
        try:
            meta = json.loads((p / "extract.json").read_text())
        except FileNotFoundError as e:
            raise ValueError(f"{p} is not an extraction directory (no extract.json)") from e
        except ValueError as e:
            raise ValueError(f"{p}/extract.json is corrupt: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{p}: extraction format {meta.get('format_version')} is not "
                             f"supported by this version ({FORMAT_VERSION}); re-run semiflow "
                             "extract")
        spec = FlowSampleSpec.from_dict(meta["spec"])
        mode = "r" if mmap else None
        try:
            arrays = {n: np.load(p / f"{n}.npy", mmap_mode=mode)
                      for n in ("pkt_off", "pkt_ext", "pkt_dir", "pkt_ts", "pkt_len")}
            size = (p / "packets.bin").stat().st_size
            blob = (np.memmap(p / "packets.bin", np.uint8, "r") if size and mmap else
                    np.fromfile(p / "packets.bin", np.uint8))
            flows = pq.read_table(p / "flows.parquet", columns=columns,
                                  read_dictionary=categorical).to_pandas()
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: unreadable extraction ({e})") from e
        n = arrays["pkt_off"].shape[0]
        if len(flows) != n:
            raise ValueError(f"{p}: flows.parquet has {len(flows)} rows but pkt_off.npy {n}")
        if n and _packet_end(arrays["pkt_off"], arrays["pkt_ext"]) > size:
            raise ValueError(f"{p}: packets.bin is truncated ({size} bytes)")
        samples = PackedSamples(blob, arrays.pop("pkt_off"), arrays.pop("pkt_ext"), spec.l)
        return cls(p, spec, flows, samples, meta=meta, **arrays)

    def drop_pages(self) -> None:
        """Unmap the file pages read so far from this process (they stay in the page cache):
        reads of a few flows spread over a large store would otherwise leave most of its
        files in the resident set (the kernel maps pages around each one read)."""
        for a in (self.samples.blob, self.samples.offs, self.samples.exts, self.pkt_dir,
                  self.pkt_ts, self.pkt_len):
            drop_pages(a)


def drop_pages(a: np.ndarray) -> None:
    """MADV_DONTNEED on a memory-mapped array's mapping (nothing for one in memory)."""
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(_mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _packet_end(offs: np.ndarray, exts: np.ndarray, step: int = 1 << 18) -> int:
    """The end of the last packet row in packets.bin, a block of flows at a time (whole, the
    sum is 12 bytes a packet slot; the pages read are dropped as it goes)."""
    end = 0
    for a in range(0, len(offs), step):
        end = max(end, int((offs[a:a + step] + exts[a:a + step]).max(initial=0)))
        drop_pages(offs)
        drop_pages(exts)
    return end
