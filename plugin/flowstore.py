"""The on-disk format of extracted flows (docs/flow-sample-spec.md, "Output format").

A directory holding
    samples.npy    uint8[N, K, L]   the model input, row i = flow i of flows.parquet
    pkt_dir.npy    int8[N, K]       0 originator->responder, 1 responder->originator, -1 empty
    pkt_ts.npy     float64[N, K]    packet timestamps (epoch seconds)
    pkt_len.npy    int32[N, K]      wire length of each packet
    flows.parquet  the flow table (one row per flow, Zeek conn.log-like columns)
    extract.json   spec, inputs, counts and skipped packets by reason
All arrays are written as a stream (header rewritten at close), so N is not bounded by memory.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semiflow.detector.spec import STATUS_NO_PAYLOAD, STATUS_OK, FlowSampleSpec

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


def _addr(ver: int, hi: int, lo: int) -> str:
    if ver == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(((hi & (2**64 - 1)) << 64) | (lo & (2**64 - 1))))


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


def make_uid(source: str, seq: int, ts: float) -> str:
    """A Zeek-style connection uid ("C" + base62), deterministic so reruns agree."""
    h = int.from_bytes(hashlib.blake2b(f"{source}|{seq}|{ts:.6f}".encode(), digest_size=12)
                       .digest(), "big")
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    out = []
    while h:
        h, r = divmod(h, 62)
        out.append(alphabet[r])
    return "C" + "".join(reversed(out))


def batch_to_frame(batch: FlowBatch, source: str) -> pd.DataFrame:
    """The flow-table rows (conn.log-like) of one batch of finished flows."""
    I = batch.ints  # noqa: N806
    ver = I[:, fs.I_IPVER]
    nsel = I[:, fs.I_NSEL]
    proto = I[:, fs.I_PROTO]
    df = pd.DataFrame({
        "uid": [make_uid(source, int(s), float(t)) for s, t in zip(I[:, fs.I_SEQ],
                                                                     batch.times[:, 0])],
        "ts": batch.times[:, 0],
        "duration": batch.times[:, 1] - batch.times[:, 0],
        "orig_h": [_addr(int(v), int(h), int(lo)) for v, h, lo in
                   zip(ver, I[:, fs.I_ORIG_HI], I[:, fs.I_ORIG_LO])],
        "orig_p": I[:, fs.I_ORIG_P].astype(np.int32),
        "resp_h": [_addr(int(v), int(h), int(lo)) for v, h, lo in
                   zip(ver, I[:, fs.I_RESP_HI], I[:, fs.I_RESP_LO])],
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


class FlowStoreWriter:
    """Streams batches of flows into an extraction directory."""

    def __init__(self, out_dir: str | os.PathLike, spec: FlowSampleSpec):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        k, l = spec.k, spec.l
        self.samples = NpyStreamWriter(self.dir / "samples.npy", np.uint8, (k, l))
        self.pkt_dir = NpyStreamWriter(self.dir / "pkt_dir.npy", np.int8, (k,))
        self.pkt_ts = NpyStreamWriter(self.dir / "pkt_ts.npy", np.float64, (k,))
        self.pkt_len = NpyStreamWriter(self.dir / "pkt_len.npy", np.int32, (k,))
        self._pq: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, batch: FlowBatch, table: pd.DataFrame) -> None:
        table = table.copy()
        table.insert(0, "row", np.arange(self.rows, self.rows + len(table), dtype=np.int64))
        self.samples.write(batch.data)
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
        for w in (self.samples, self.pkt_dir, self.pkt_ts, self.pkt_len):
            w.close()
        if self._pq is None:  # no flow at all: still write a readable, empty table
            empty = batch_to_frame(FlowBatch(np.zeros((0, fs.NI), np.int64),
                                             np.zeros((0, 2)), np.zeros((0, 1, 1), np.uint8),
                                             np.zeros((0, 1), np.int8), np.zeros((0, 1)),
                                             np.zeros((0, 1), np.int32)), "")
            empty.insert(0, "row", np.zeros(0, np.int64))
            for col in ("label", "family"):
                empty[col] = pd.Series([], dtype=object)
            pq.write_table(pa.Table.from_pandas(empty, preserve_index=False),
                           self.dir / "flows.parquet")
        else:
            self._pq.close()
        meta = dict(meta, spec=self.spec.to_dict(), flows=self.rows, format_version=1)
        (self.dir / "extract.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


@dataclass
class FlowStore:
    """An extraction directory opened for reading (arrays memory-mapped)."""

    path: Path
    spec: FlowSampleSpec
    flows: pd.DataFrame
    samples: np.ndarray
    pkt_dir: np.ndarray
    pkt_ts: np.ndarray
    pkt_len: np.ndarray
    meta: dict

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = True) -> FlowStore:
        p = Path(path)
        try:
            meta = json.loads((p / "extract.json").read_text())
        except FileNotFoundError as e:
            raise ValueError(f"{p} is not an extraction directory (no extract.json)") from e
        mode = "r" if mmap else None
        arrays = {n: np.load(p / f"{n}.npy", mmap_mode=mode)
                  for n in ("samples", "pkt_dir", "pkt_ts", "pkt_len")}
        flows = pq.read_table(p / "flows.parquet").to_pandas()
        if len(flows) != arrays["samples"].shape[0]:
            raise ValueError(f"{p}: flows.parquet has {len(flows)} rows but samples.npy "
                             f"{arrays['samples'].shape[0]}")
        return cls(p, FlowSampleSpec.from_dict(meta["spec"]), flows, meta=meta, **arrays)
