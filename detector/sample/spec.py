"""The flow-sample specification: which packets of a connection, which bytes, which masking.

One definition serves the offline path (captures -> training) and the live path (Zeek or
Suricata frames -> detector). Artifacts store the spec they were trained with, and the live
path refuses samples built with a different one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit

from . import frame as fr
from . import tunnel as tn

SELECT_PAYLOAD = "payload"
SELECT_ALL = "all"
_SELECT_CODES = {SELECT_PAYLOAD: 0, SELECT_ALL: 1}
# Upper bounds of a spec: no frame is longer than libpcap's MAXIMUM_SNAPLEN (2^18 bytes), and
# K beyond a few thousand packets is no sample of a connection's start. A spec read from an
# artifact is outside input: these bounds keep a corrupt one from sizing m x K x L buffers.
MAX_K = 4096
MAX_L = 1 << 18

# Flow status: why a flow has (or lacks) a sample. A flow with nothing selected is reported
# as such, never scored as normal.
STATUS_OK = "ok"
STATUS_NO_PAYLOAD = "no_payload"    # nothing matched the selection rule (scans, failed handshakes)
STATUS_UNPARSED = "unparsed"        # frames arrived, but none parsed (all skipped)


@dataclass(frozen=True)
class FlowSampleSpec:
    """K packets x L bytes per flow, selected and masked the same way everywhere."""

    k: int = 8
    l: int = 1600
    # "all" since the lab measurements (docs/model.md): scans and floods carry no payload
    selection: str = SELECT_ALL
    mask: tuple[str, ...] = ("addresses",)
    version: int = 1
    layout: str = field(default="ip60-transport60-payload", compare=True)

    def __post_init__(self) -> None:
        for name, top in (("k", MAX_K), ("l", MAX_L)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"spec: {name} must be an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"spec: {name} must be >= 1, got {v}")
            if v > top:
                raise ValueError(f"spec: {name} must be <= {top}, got {v}")
            object.__setattr__(self, name, int(v))
        if self.selection not in _SELECT_CODES:
            raise ValueError(f"spec: selection must be one of {sorted(_SELECT_CODES)}, "
                             f"got {self.selection!r}")
        unknown = set(self.mask) - set(fr.MASK_BITS)
        if unknown:
            raise ValueError(f"spec: unknown mask field(s) {sorted(unknown)}; "
                             f"known: {sorted(fr.MASK_BITS)}")
        object.__setattr__(self, "mask", tuple(sorted(set(self.mask))))

    @property
    def mask_bits(self) -> int:
        bits = 0
        for name in self.mask:
            bits |= fr.MASK_BITS[name]
        return bits

    @property
    def selection_code(self) -> int:
        return _SELECT_CODES[self.selection]

    def selects(self, payload_len: int) -> bool:
        """The packet-selection rule, for one parsed packet."""
        return self.selection == SELECT_ALL or payload_len > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mask"] = list(self.mask)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FlowSampleSpec:
        if not isinstance(d, dict):
            raise ValueError(f"spec: expected an object, got {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["mask"] = tuple(known.get("mask", ("addresses",)))
        return cls(**known)


@dataclass
class FlowSample:
    """One flow's model input: K x L bytes plus per-packet metadata (-1 direction = empty slot)."""

    data: np.ndarray          # uint8[K, L]
    direction: np.ndarray     # int8[K]: 0 originator -> responder, 1 back, -1 empty
    ts: np.ndarray            # float64[K]
    wire_len: np.ndarray      # int32[K]
    n_selected: int
    status: str
    skipped: dict[str, int]


def empty_flow_arrays(spec: FlowSampleSpec, n: int = 1):
    return (np.zeros((n, spec.k, spec.l), np.uint8), np.full((n, spec.k), -1, np.int8),
            np.zeros((n, spec.k), np.float64), np.zeros((n, spec.k), np.int32))


def parse_frame(data: bytes | np.ndarray, linktype: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one raw frame; returns (buffer, info) where info[F_REASON] == 0 means parsed."""
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    info = np.zeros(fr.NFIELDS, np.int64)
    fr.parse_frame(buf, 0, buf.shape[0], int(linktype), info)
    return buf, info


def sample_row(data: bytes | np.ndarray, linktype: int, spec: FlowSampleSpec) -> np.ndarray:
    """One frame -> one L-byte row; raises ValueError naming the reason if it does not parse."""
    buf, info = parse_frame(data, linktype)
    if info[fr.F_REASON] != fr.OK:
        raise ValueError(fr.SKIP_REASONS[info[fr.F_REASON]])
    row = np.zeros(spec.l, np.uint8)
    fr.write_sample_row(buf, info, row, spec.mask_bits)
    return row


STATUS_CODES = (STATUS_OK, STATUS_NO_PAYLOAD, STATUS_UNPARSED)  # build_flow_samples' codes


@dataclass
class FlowSampleBatch:
    """m flows' model input from one `build_flow_samples` call (row i = flow i)."""

    data: np.ndarray          # uint8[m, K, L]
    direction: np.ndarray     # int8[m, K]: 0 orig -> resp, 1 back, -1 empty slot
    ts: np.ndarray            # float64[m, K]
    wire_len: np.ndarray      # int32[m, K]
    n_selected: np.ndarray    # int64[m]
    status: np.ndarray        # int8[m]: index into STATUS_CODES
    skipped: np.ndarray       # int64[m, len(frame.SKIP_REASONS)]: frames skipped, by reason

    def skipped_dict(self, i: int) -> dict[str, int]:
        return {fr.SKIP_REASONS[r]: int(c) for r, c in enumerate(self.skipped[i]) if c}

    def flow(self, i: int) -> FlowSample:
        return FlowSample(self.data[i], self.direction[i], self.ts[i], self.wire_len[i],
                          int(self.n_selected[i]), STATUS_CODES[self.status[i]],
                          self.skipped_dict(i))


@njit(cache=True, nogil=True)
def _build_flow_samples(blob, frame_off, frame_len, linktype, ts, wire_len, is_orig,
                        flow_start, keys, select_all, mask, data, direction, out_ts, out_wlen,
                        n_sel, status, skipped):
    """The one loop over flows and their frames (arrival order); outputs pre-zeroed."""
    info = np.zeros(fr.NFIELDS, np.int64)
    tmp = np.zeros(fr.NFIELDS, np.int64)
    k = data.shape[1]
    for f in range(flow_start.shape[0] - 1):
        n = 0
        parsed = 0
        for j in range(flow_start[f], flow_start[f + 1]):
            a = frame_off[j]
            buf = blob[a:a + frame_len[j]]
            reason = tn.parse_frame_for(buf, 0, buf.shape[0], linktype[j], keys[f], info, tmp)
            if reason != fr.OK:
                skipped[f, reason] += 1
                continue
            parsed += 1
            if n >= k or not (select_all or info[fr.F_PAYLEN] > 0):
                continue
            fr.write_sample_row(buf, info, data[f, n], mask)
            direction[f, n] = 0 if is_orig[j] else 1
            out_ts[f, n] = ts[j]
            out_wlen[f, n] = wire_len[j]
            n += 1
        n_sel[f] = n
        status[f] = 0 if n else (1 if parsed else 2)


def build_flow_samples(blob: np.ndarray, frame_off: np.ndarray, frame_len: np.ndarray,
                       linktype: np.ndarray, ts: np.ndarray, wire_len: np.ndarray,
                       is_orig: np.ndarray, flow_start: np.ndarray,
                       spec: FlowSampleSpec, conn_ids: Sequence | None = None
                       ) -> FlowSampleBatch:
    """Apply the spec to many flows at once, in one compiled loop (the live path's decoder).

    Frames are byte ranges of one uint8 blob: frame j is blob[frame_off[j]:+frame_len[j]],
    with its linktype, ts, wire_len and is_orig; flow i owns frames
    flow_start[i]:flow_start[i+1], in arrival order (flow_start has m+1 entries). The
    capture loop calls the same kernels (parse_frame, write_sample_row).
    conn_ids: each flow's Zeek conn_id (orig_h, orig_p, resp_h, resp_p) or None; a tunnelled
    connection's frames arrive with their outer layers, and the sample starts at the IP level
    that is this connection (tunnel.parse_frame_for). Without it: the outer level.
    """
    flow_start = np.ascontiguousarray(flow_start, np.int64)
    nf = int(flow_start[-1]) if len(flow_start) else 0
    arrs = [np.ascontiguousarray(a, t) for a, t in (
        (frame_off, np.int64), (frame_len, np.int64), (linktype, np.int64),
        (ts, np.float64), (wire_len, np.int64), (is_orig, np.bool_))]
    if flow_start.ndim != 1 or len(flow_start) < 1 or flow_start[0] != 0 \
            or (np.diff(flow_start) < 0).any() or any(len(a) < nf for a in arrs):
        raise ValueError("build_flow_samples: flow_start must run from 0 up to the frame count")
    blob = np.ascontiguousarray(blob, np.uint8)
    if nf and (arrs[0][:nf].min() < 0 or arrs[1][:nf].min() < 0
               or (arrs[0][:nf] + arrs[1][:nf]).max() > len(blob)):
        raise ValueError("build_flow_samples: a frame lies outside the blob")
    m = len(flow_start) - 1
    data, direction, out_ts, out_wlen = empty_flow_arrays(spec, m)
    n_sel = np.zeros(m, np.int64)
    status = np.zeros(m, np.int8)
    skipped = np.zeros((m, len(fr.SKIP_REASONS)), np.int64)
    keys = tn.conn_keys(conn_ids, tn.flows_may_tunnel(blob, *arrs[:3], flow_start)) \
        if conn_ids is not None and len(conn_ids) == m else np.zeros((m, 8), np.int64)
    _build_flow_samples(blob, *arrs, flow_start, keys, spec.selection == SELECT_ALL,
                        spec.mask_bits, data, direction, out_ts, out_wlen, n_sel, status,
                        skipped)
    return FlowSampleBatch(data, direction, out_ts, out_wlen, n_sel, status, skipped)


def build_flow_sample(frames: Iterable[tuple[bytes, int, float, int, bool]],
                      spec: FlowSampleSpec) -> FlowSample:
    """Apply the spec to one connection's frames, in arrival order.

    Each frame is (bytes, linktype, ts, wire_len, is_orig); a thin wrapper over
    build_flow_samples, so one and many flows go through the same code.
    """
    frames = list(frames)
    lens = np.array([len(f[0]) for f in frames], np.int64)
    off = np.zeros(len(frames), np.int64)
    np.cumsum(lens[:-1], out=off[1:])
    blob = np.frombuffer(b"".join(bytes(f[0]) for f in frames), np.uint8)
    col = list(zip(*frames)) if frames else [(), (), (), (), ()]
    batch = build_flow_samples(
        blob, off, lens, np.array(col[1], np.int64), np.array(col[2], np.float64),
        np.array(col[3], np.int64), np.array(col[4], np.bool_),
        np.array([0, len(frames)], np.int64), spec)
    return batch.flow(0)
