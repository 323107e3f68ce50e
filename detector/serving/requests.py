"""What a connector hands the serving loop: a decoded micro-batch of flow requests (the flat
frame arrays spec.build_flow_samples takes) and the error of a request that cannot be scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RequestBatch:
    """What `decode` returns for a micro-batch: decodable flows (key, where to answer, the K
    the sender collected for; -1 = unknown) plus all their frames as flat arrays over one
    byte blob (the arguments of spec.build_flow_samples), and the undecodable items."""

    keys: list[str]
    replies: list
    items: list[int]          # position of each flow in the submitted batch
    ks: np.ndarray            # int64[m]
    blob: np.ndarray          # uint8: every frame's bytes, back to back
    frame_off: np.ndarray     # int64[n_frames]
    frame_len: np.ndarray
    linktype: np.ndarray
    ts: np.ndarray
    wire_len: np.ndarray
    is_orig: np.ndarray
    flow_start: np.ndarray    # int64[m + 1]: flow i owns frames flow_start[i]:flow_start[i+1]
    errors: list = field(default_factory=list)  # (position in batch, RequestError)
    ids: list = field(default_factory=list)  # (orig_h, orig_p, resp_h, resp_p) per flow, if known

    @classmethod
    def empty(cls) -> RequestBatch:
        z = np.zeros(0, np.int64)
        return cls([], [], [], z, np.zeros(0, np.uint8), z, z, z, np.zeros(0), z,
                   np.zeros(0, np.bool_), np.zeros(1, np.int64))

    @classmethod
    def concat(cls, parts: list[tuple[int, RequestBatch]]) -> RequestBatch:
        """Join batches; each part's item positions are shifted by its offset."""
        out = cls.empty()
        blobs, offs, starts = [], [], [np.zeros(1, np.int64)]
        base = nfr = 0
        for shift, b in parts:
            out.keys += b.keys
            out.replies += b.replies
            out.items += [shift + i for i in b.items]
            out.errors += [(shift + i, e) for i, e in b.errors]
            out.ids += b.ids if len(b.ids) == len(b.keys) else [None] * len(b.keys)
            blobs.append(b.blob)
            offs.append(b.frame_off + base)
            starts.append(b.flow_start[1:] + nfr)
            base += len(b.blob)
            nfr += int(b.flow_start[-1])
        cat = np.concatenate
        out.ks = cat([out.ks] + [b.ks for _, b in parts])
        out.blob = cat([out.blob] + blobs)
        out.frame_off = cat([out.frame_off] + offs)
        for name in ("frame_len", "linktype", "ts", "wire_len", "is_orig"):
            setattr(out, name, cat([getattr(out, name)] + [getattr(b, name) for _, b in parts]))
        out.flow_start = cat(starts)
        return out


class RequestError(ValueError):
    """A request that cannot be scored; kind groups them for counting and logging."""

    def __init__(self, kind: str, message: str, key: str | None = None, reply: Any = None):
        super().__init__(message)
        self.kind = kind
        self.key = key
        self.reply = reply
