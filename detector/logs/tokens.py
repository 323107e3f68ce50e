"""Conn-log records -> dyad-hour token sequences (methods.md section 2).

A dyad-hour is the undirected host pair (host_a < host_b) plus the hour of the flow start;
its flows, sorted by start time, form one token sequence. Works on Zeek conn.log frames
(`id.orig_h`, ...) and on `semiflow extract` flow tables (`orig_h`, ...) alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

PAD, BOS, UNK = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<unk>"]
TOKENIZERS = ("protobytes", "port", "rich")

# FlowStore column -> Zeek conn.log column
_FLOWSTORE_TO_ZEEK = {"orig_h": "id.orig_h", "orig_p": "id.orig_p",
                      "resp_h": "id.resp_h", "resp_p": "id.resp_p"}
_MALICIOUS = ("malicious", "anomalous", "attack", "malware")


def normalize_conn(df: pd.DataFrame, bucket_s: float = 3600.0) -> pd.DataFrame:
    """Map a conn.log or FlowStore frame to the columns the tokenizers use.

    Output columns: ts, uid, host_a, host_b, a_is_orig, proto, sport, dport, orig_bytes,
    resp_bytes, duration, service, conn_state, hour, malicious (bool, False where no label).
    `hour` is the start of the flow's time bucket: an hour by default, `bucket_s` seconds
    otherwise (short lab runs use 300). Logs without `service`/`conn_state` (the lab's
    labels.conn.log) get "-" (unset); without `orig_bytes`/`resp_bytes`, the IP-level
    `orig_ip_bytes`/`resp_ip_bytes` stand in (headers included: train and test alike).
    Rows without a start time or an endpoint address (unset) are dropped: callers count them.
    """
    df = df.rename(columns={k: v for k, v in _FLOWSTORE_TO_ZEEK.items() if k in df.columns})
    missing = [c for c in ("ts", "id.orig_h", "id.resp_h") if c not in df.columns]
    if missing:
        raise ValueError(f"not a conn log: missing column(s) {', '.join(missing)}")
    n = len(df)

    def col(name: str, default) -> pd.Series:
        return df[name] if name in df.columns else pd.Series([default] * n, index=df.index)

    def num(name: str) -> np.ndarray:
        return pd.to_numeric(col(name, 0), errors="coerce").fillna(0).to_numpy(np.float64)

    def nbytes(side: str) -> np.ndarray:
        if f"{side}_bytes" not in df.columns and f"{side}_ip_bytes" in df.columns:
            return num(f"{side}_ip_bytes")
        return num(f"{side}_bytes")

    usable = df["id.orig_h"].notna() & df["id.resp_h"].notna()
    usable &= (df["id.orig_h"].astype(str) != "") & (df["id.resp_h"].astype(str) != "")
    orig = col("id.orig_h", "").fillna("").astype(str).to_numpy()
    resp = col("id.resp_h", "").fillna("").astype(str).to_numpy()
    a_is_orig = orig <= resp
    ts = pd.to_numeric(df["ts"], errors="coerce").to_numpy(np.float64)
    label = col("label", "").fillna("").astype(str).str.lower()
    out = pd.DataFrame({
        "ts": ts,
        "uid": col("uid", "-").fillna("-").astype(str).to_numpy(),
        "host_a": np.where(a_is_orig, orig, resp),
        "host_b": np.where(a_is_orig, resp, orig),
        "a_is_orig": a_is_orig,
        "proto": col("proto", "-").fillna("-").astype(str).str.lower().to_numpy(),
        "sport": num("id.orig_p").astype(np.int64),
        "dport": num("id.resp_p").astype(np.int64),
        "orig_bytes": nbytes("orig"),
        "resp_bytes": nbytes("resp"),
        "duration": num("duration"),
        "service": col("service", "-").fillna("-").replace("", "-").astype(str).to_numpy(),
        "conn_state": col("conn_state", "-").fillna("-").astype(str).to_numpy(),
        "hour": np.floor(ts / bucket_s) * bucket_s,
        "malicious": label.str.startswith(_MALICIOUS).to_numpy(),
    })
    return out[np.isfinite(ts) & usable.to_numpy()].reset_index(drop=True)


def _log2_bucket(x: np.ndarray, step: float = 1.0) -> np.ndarray:
    return np.floor(np.log2(np.maximum(x, 0) + 1) / step).astype(np.int64)


def tokenize(conn: pd.DataFrame, tokenizer: str = "protobytes") -> np.ndarray:
    """Token strings for a normalized conn frame (one per flow).

    protobytes: protocol letter + floor(log2(total bytes + 1)), e.g. `t12`.
    port:       protocol letter + min(sport, dport) capped at 10000, e.g. `t443`.
    rich:       proto, conn_state, service (else the well-known responder port, else `phi`),
                bytes bucket (log2 / 3), duration decade (log10 ms, capped at 5) and who
                originated (a = the lower address of the dyad), e.g. `t:SF:ssl:b4:d3:a`.
                Coarse buckets keep the vocabulary small enough to learn from a few thousand
                flows; scans (S0/REJ, no bytes, odd ports) and beacons read as distinct words.
    """
    letter = pd.Series(conn["proto"]).str[:1].fillna("-").to_numpy(dtype=object)
    total = conn["orig_bytes"].to_numpy() + conn["resp_bytes"].to_numpy()
    if tokenizer == "protobytes":
        return letter + _log2_bucket(total).astype(str).astype(object)
    if tokenizer == "port":
        port = np.minimum(np.minimum(conn["sport"].to_numpy(), conn["dport"].to_numpy()), 10000)
        return letter + port.astype(str).astype(object)
    if tokenizer == "rich":
        dport = conn["dport"].to_numpy()
        svc = conn["service"].to_numpy(dtype=object)
        port = np.where(dport < 1024, dport.astype(str), "hi").astype(object)
        svc = np.where(svc == "-", "p" + port, svc).astype(object)
        dur = np.minimum(np.floor(np.log10(conn["duration"].to_numpy() * 1000.0 + 1)), 5)
        direction = np.where(conn["a_is_orig"].to_numpy(), "a", "b").astype(object)
        return (letter + ":" + conn["conn_state"].to_numpy(dtype=object) + ":" + svc
                + ":b" + _log2_bucket(total, 3.0).astype(str).astype(object)
                + ":d" + dur.astype(np.int64).astype(str).astype(object) + ":" + direction)
    raise ValueError(f"unknown tokenizer {tokenizer!r} (choose from {', '.join(TOKENIZERS)})")


class Vocabulary:
    """Token string <-> id; ids 0..2 are <pad>, <bos>, <unk>. Unseen tokens map to <unk>."""

    def __init__(self, tokens: list[str] | None = None):
        self.itos: list[str] = list(SPECIALS) + [t for t in (tokens or []) if t not in SPECIALS]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, tokens: Iterable[str], min_count: int = 1,
              max_size: int | None = None) -> Vocabulary:
        counts = Counter(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count),
                      key=lambda t: (-counts[t], t))
        return cls(kept[:max_size] if max_size else kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: np.ndarray | list[str]) -> np.ndarray:
        s = pd.Series(np.asarray(tokens, dtype=object))
        return s.map(self.stoi).fillna(UNK).to_numpy(np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] if 0 <= i < len(self.itos) else "<unk>" for i in ids]

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> Vocabulary:
        if not isinstance(itos, list) or itos[:3] != SPECIALS:
            raise ValueError("vocabulary must be a list starting with <pad>, <bos>, <unk>")
        return cls(itos[3:])


def dyad_hour_frame(conn: pd.DataFrame, tokenizer: str = "protobytes") -> pd.DataFrame:
    """Flows sorted by (hour, host_a, host_b, ts) with their token: the dyad-hour sequences.

    Columns: hour, host_a, host_b, ts, uid, token, malicious. Consecutive rows with the
    same (hour, host_a, host_b) are one sequence.
    """
    tok = tokenize(conn, tokenizer)
    out = pd.DataFrame({"hour": conn["hour"].to_numpy(), "host_a": conn["host_a"].to_numpy(),
                        "host_b": conn["host_b"].to_numpy(), "ts": conn["ts"].to_numpy(),
                        "uid": conn["uid"].to_numpy(), "token": tok,
                        "malicious": conn["malicious"].to_numpy()})
    return out.sort_values(["hour", "host_a", "host_b", "ts"], kind="stable",
                           ignore_index=True)


def group_bounds(seq: pd.DataFrame) -> np.ndarray:
    """Start offsets of each dyad-hour in a dyad_hour_frame, plus len(seq) at the end."""
    if len(seq) == 0:
        return np.zeros(1, dtype=np.int64)
    keys = seq[["hour", "host_a", "host_b"]]
    new = np.ones(len(seq), dtype=bool)
    new[1:] = (keys.iloc[1:].to_numpy() != keys.iloc[:-1].to_numpy()).any(axis=1)
    return np.append(np.flatnonzero(new), len(seq)).astype(np.int64)


def make_windows(ids: np.ndarray, bounds: np.ndarray, window: int,
                 include_current: bool = False) -> np.ndarray:
    """One window per flow, int64[N, window], left-padded with <pad> and a <bos> per sequence.

    include_current=False (language model): the window holds the `window` tokens BEFORE the
    flow, whose token is the target, so the model never sees what it predicts.
    include_current=True (classifier): the window ends with the flow's own token.
    """
    n_seq = len(bounds) - 1
    lengths = np.diff(bounds)
    seg = window + 1  # room for pads + <bos> in front of each sequence
    padded = np.full(len(ids) + n_seq * seg, PAD, dtype=np.int64)
    starts = bounds[:-1] + np.arange(n_seq) * seg  # where each padded sequence begins
    padded[starts + window] = BOS
    pos = np.repeat(starts + seg, lengths) + (np.arange(len(ids)) - np.repeat(bounds[:-1], lengths))
    padded[pos] = ids
    first = pos - window + (1 if include_current else 0)  # window covers [first, first+window)
    return padded[first[:, None] + np.arange(window)[None, :]]
