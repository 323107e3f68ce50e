"""The flow-sample specification: which packets of a connection, which bytes, which masking.

One definition serves the offline path (captures -> training) and the live path (Zeek or
Suricata frames -> detector). Artifacts store the spec they were trained with, and the live
path refuses samples built with a different one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import frame as fr

SELECT_PAYLOAD = "payload"
SELECT_ALL = "all"
_SELECT_CODES = {SELECT_PAYLOAD: 0, SELECT_ALL: 1}

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
    selection: str = SELECT_PAYLOAD
    mask: tuple[str, ...] = ("addresses",)
    version: int = 1
    layout: str = field(default="ip60-transport60-payload", compare=True)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"spec: k must be >= 1, got {self.k}")
        if self.l < 1:
            raise ValueError(f"spec: l must be >= 1, got {self.l}")
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


def build_flow_sample(frames: Iterable[tuple[bytes, int, float, int, bool]],
                      spec: FlowSampleSpec) -> FlowSample:
    """Apply the spec to one connection's frames, in arrival order.

    Each frame is (bytes, linktype, ts, wire_len, is_orig). This is the live path's entry
    point; the capture loop calls the same kernels (parse_frame, write_sample_row).
    """
    data, direction, ts, wire_len = empty_flow_arrays(spec)
    data, direction, ts, wire_len = data[0], direction[0], ts[0], wire_len[0]
    skipped: dict[str, int] = {}
    n = 0
    parsed = 0
    info = np.zeros(fr.NFIELDS, np.int64)
    bits = spec.mask_bits
    for raw, linktype, t, wlen, is_orig in frames:
        buf = np.frombuffer(raw, np.uint8)
        reason = fr.parse_frame(buf, 0, buf.shape[0], int(linktype), info)
        if reason != fr.OK:
            name = fr.SKIP_REASONS[reason]
            skipped[name] = skipped.get(name, 0) + 1
            continue
        parsed += 1
        if n >= spec.k or not spec.selects(int(info[fr.F_PAYLEN])):
            continue
        fr.write_sample_row(buf, info, data[n], bits)
        direction[n] = 0 if is_orig else 1
        ts[n] = t
        wire_len[n] = wlen
        n += 1
    status = STATUS_OK if n else (STATUS_NO_PAYLOAD if parsed else STATUS_UNPARSED)
    return FlowSample(data, direction, ts, wire_len, n, status, skipped)
