"""The Zeek <-> detector wire format, Python side (docs/wire-format.md; zeek_scripts/main.zeek).

Messages are Broker's JSON v1 encoding as Zeek's WebSocket API speaks it
(src/cluster/websocket/WebSocket.cc in zeek/zeek; docs.zeek.org "Interacting with Zeek
using WebSockets"): an event is
    {"type": "data-message", "topic": T, "@data-type": "vector",
     "data": [count 1, count 1, vector[string NAME, vector ARGS, (optional metadata)]]}
and every value is {"@data-type": TYPE, "data": VALUE}. Events carry scalars and vectors
of scalars only. tests/test_zeek_scripts.py holds EVENTS against the Zeek declarations.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

# Zeek script type -> JSON v1 "@data-type" (Broker JSON docs, "Data types").
ZEEK_TO_JSON = {
    "string": "string", "count": "count", "int": "integer", "double": "real",
    "bool": "boolean", "addr": "address", "port": "port", "time": "timestamp",
    "interval": "timespan", "subnet": "subnet",
}

FLOW_REQUEST = "SemiFlow::flow_request"
VERDICT = "SemiFlow::verdict"
FLOW_BATCH = "SemiFlow::flow_batch"
VERDICT_BATCH = "SemiFlow::verdict_batch"
MODEL_DRIFT = "SemiFlow::model_drift"

# Event name -> ordered (argument, Zeek type). The ONE Python copy of main.zeek's
# declarations; "vector of T" is a vector of scalars.
EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    FLOW_REQUEST: (
        ("uid", "string"), ("reply_topic", "string"), ("orig_h", "addr"),
        ("orig_p", "port"), ("resp_h", "addr"), ("resp_p", "port"),
        ("linktype", "count"), ("k", "count"), ("snaplen", "count"),
        ("frames", "vector of string"), ("ts", "vector of double"),
        ("wire_len", "vector of count"), ("is_orig", "vector of bool"),
    ),
    VERDICT: (
        ("uid", "string"), ("status", "string"), ("score", "double"),
        ("threshold", "double"), ("anomalous", "bool"), ("packets", "count"),
        ("model", "string"), ("model_version", "string"), ("detail", "string"),
    ),
    FLOW_BATCH: (
        ("reply_topic", "string"), ("uids", "vector of string"), ("linktype", "count"),
        ("k", "count"), ("snaplen", "count"), ("orig_h", "vector of addr"),
        ("orig_p", "vector of port"), ("resp_h", "vector of addr"),
        ("resp_p", "vector of port"), ("n_frames", "vector of count"),
        ("frames", "vector of string"), ("ts", "vector of double"),
        ("wire_len", "vector of count"), ("is_orig", "vector of bool"),
    ),
    VERDICT_BATCH: (
        ("uids", "vector of string"), ("statuses", "vector of string"),
        ("scores", "vector of double"), ("threshold", "double"),
        ("anomalous", "vector of bool"), ("packets", "vector of count"),
        ("model", "string"), ("model_version", "string"), ("details", "vector of string"),
    ),
    MODEL_DRIFT: (
        ("model_version", "string"), ("signal", "string"), ("psi", "double"),
        ("threshold", "double"), ("flows", "count"), ("window_start", "double"),
        ("window_end", "double"),
    ),
}

DEFAULT_REQUEST_TOPIC = "zeek/semiflow/request/"
DEFAULT_VERDICT_TOPIC = "zeek/semiflow/verdict/"

# Verdict statuses (main.zeek Info$status). ok/no_payload/unparsed come from the spec.
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SHED = "shed"


class WireError(ValueError):
    """A message that does not follow the wire format; kind names the class of fault."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def ascii_text(s: str) -> str:
    """Printable ASCII only: anything else becomes '?'. Zeek 6.0-7.2 reject every \\u escape
    (zeek/zeek#3989; fixed in the Broker of 8.0) and json.dumps writes one for each
    non-ASCII or control character, so the content is cleaned, not the encoding."""
    if s.isascii() and s.isprintable():
        return s
    return "".join(c if " " <= c <= "~" else "?" for c in s)


def _py_type(zt: str):
    return {"string": str, "addr": str, "port": str, "count": int, "int": int,
            "double": float, "bool": bool}[zt]


def encode_value(zeek_type: str, value) -> dict:
    """One Zeek value -> {"@data-type", "data"}; vectors of scalars recurse."""
    if zeek_type.startswith("vector of "):
        inner = zeek_type[len("vector of "):]
        return {"@data-type": "vector", "data": [encode_value(inner, v) for v in value]}
    jt = ZEEK_TO_JSON[zeek_type]
    if zeek_type == "double":
        value = float(value)
        if not math.isfinite(value):  # JSON has no NaN/inf; Zeek needs a real
            value = 0.0
    elif zeek_type == "count":
        value = int(value)
        if value < 0:
            raise WireError("type", f"count must be >= 0, got {value}")
    elif zeek_type == "bool":
        value = bool(value)
    elif zeek_type == "string":
        value = ascii_text(str(value))
    elif zeek_type in ("addr", "port"):
        value = str(value)
    return {"@data-type": jt, "data": value}


def event_message(topic: str, name: str, args) -> dict:
    """An event as the JSON v1 data-message Zeek expects from a client."""
    decl = EVENTS[name]
    if len(args) != len(decl):
        raise WireError("arity", f"{name} takes {len(decl)} arguments, got {len(args)}")
    enc = [encode_value(t, a) for (_, t), a in zip(decl, args)]
    return {"type": "data-message", "topic": topic, "@data-type": "vector",
            "data": [{"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1},
                     {"@data-type": "vector", "data": [
                         {"@data-type": "string", "data": name},
                         {"@data-type": "vector", "data": enc}]}]}


def _check(value: dict, zeek_type: str, where: str):
    if not isinstance(value, dict) or "@data-type" not in value or "data" not in value:
        raise WireError("shape", f"{where}: not a JSON v1 value")
    if zeek_type.startswith("vector of "):
        if value["@data-type"] != "vector" or not isinstance(value["data"], list):
            raise WireError("type", f"{where}: expected vector, got {value['@data-type']}")
        inner = zeek_type[len("vector of "):]
        return [_check(v, inner, where) for v in value["data"]]
    want = ZEEK_TO_JSON[zeek_type]
    if value["@data-type"] != want:
        raise WireError("type", f"{where}: expected {want}, got {value['@data-type']}")
    v = value["data"]
    py = _py_type(zeek_type)
    if py is float and isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:
            raise WireError("value", f"{where}: {want} out of range") from None
    if py is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise WireError("type", f"{where}: {want} data must be an integer")
    if not isinstance(v, py):
        raise WireError("type", f"{where}: {want} data has the wrong JSON type")
    return v


def parse_event(msg: dict) -> tuple[str, str, list]:
    """A data-message -> (topic, event name, raw argument values). Raises WireError."""
    if not isinstance(msg, dict) or msg.get("type") != "data-message":
        raise WireError("shape", "not a data-message")
    try:
        outer = msg["data"]
        ev = outer[2]["data"]
        name = ev[0]["data"]
        args = ev[1]["data"]
    except (KeyError, IndexError, TypeError) as e:
        raise WireError("shape", f"not an event: {e!r}") from None
    # Zeek 6-7 append [[count 1, timestamp]]; Zeek 8 always appends a metadata vector,
    # empty without add_network_timestamp (src/cluster/serializer/broker/Serializer.cc@
    # v8.0.0:95).
    if not (2 <= len(ev) <= 3) or not isinstance(args, list) or not isinstance(name, str):
        raise WireError("shape", "event vector must be [name, args(, metadata)]")
    return msg.get("topic", ""), name, args


def decode_args(name: str, args: list) -> dict:
    """Check raw arguments against the declaration; returns {arg name: python value}."""
    decl = EVENTS.get(name)
    if decl is None:
        raise WireError("unknown_event", f"unknown event {name!r}")
    if len(args) != len(decl):
        raise WireError("arity", f"{name}: expected {len(decl)} arguments, got {len(args)}")
    return {n: _check(a, t, f"{name}.{n}") for (n, t), a in zip(decl, args)}


def vector_values(v: dict, tag: str, types: tuple) -> list:
    """The values of a JSON v1 vector whose items are all `tag` with Python types in
    `types`; TypeError otherwise (the decoders' fast paths fall back to the checked one)."""
    if v["@data-type"] != "vector":
        raise TypeError
    items = v["data"]
    if {x["@data-type"] for x in items} - {tag}:
        raise TypeError
    vals = [x["data"] for x in items]
    if set(map(type, vals)) - set(types):
        raise TypeError
    return vals


def port_number(p: str) -> int:
    """'443/tcp' -> 443."""
    try:
        return int(p.split("/", 1)[0])
    except ValueError:
        raise WireError("value", f"bad port {p!r}") from None


@dataclass
class FlowRequest:
    """One decoded SemiFlow::flow_request."""

    uid: str
    reply_topic: str
    orig_h: str
    orig_p: str
    resp_h: str
    resp_p: str
    linktype: int
    k: int
    snaplen: int
    frames: list[bytes]
    ts: list[float]
    wire_len: list[int]
    is_orig: list[bool]

    def frame_tuples(self) -> list[tuple[bytes, int, float, int, bool]]:
        """The (bytes, linktype, ts, wire_len, is_orig) tuples build_flow_sample takes."""
        return [(f, self.linktype, t, w, o)
                for f, t, w, o in zip(self.frames, self.ts, self.wire_len, self.is_orig)]


def flow_request_from_args(args: list) -> FlowRequest:
    """Decode and validate a flow_request's arguments (base64, equal vector lengths)."""
    d = decode_args(FLOW_REQUEST, args)
    n = len(d["frames"])
    if not (len(d["ts"]) == len(d["wire_len"]) == len(d["is_orig"]) == n):
        raise WireError("value", "frames/ts/wire_len/is_orig have different lengths")
    try:
        d["frames"] = [base64.b64decode(f, validate=True) for f in d["frames"]]
    except (binascii.Error, ValueError):
        raise WireError("base64", "a frame is not valid base64") from None
    return FlowRequest(**d)


def flow_request_args(uid: str, reply_topic: str, orig_h: str, orig_p: str, resp_h: str,
                      resp_p: str, linktype: int, k: int, snaplen: int,
                      frames: list[bytes], ts: list[float], wire_len: list[int],
                      is_orig: list[bool]) -> list:
    """Python values in declaration order (what Zeek's publish call passes)."""
    return [uid, reply_topic, orig_h, orig_p, resp_h, resp_p, linktype, k, snaplen,
            [base64.b64encode(f).decode("ascii") for f in frames], list(ts), list(wire_len),
            list(is_orig)]


@dataclass
class Verdict:
    """One SemiFlow::verdict."""

    uid: str
    status: str
    score: float = 0.0
    threshold: float = 0.0
    anomalous: bool = False
    packets: int = 0
    model: str = ""
    model_version: str = ""
    detail: str = ""

    def args(self) -> list:
        return [self.uid, self.status, self.score, self.threshold, self.anomalous,
                self.packets, self.model, self.model_version, self.detail]

    def message(self, topic: str) -> dict:
        return event_message(topic, VERDICT, self.args())

    @classmethod
    def from_args(cls, args: list) -> Verdict:
        return cls(**decode_args(VERDICT, args))


def flow_batch_args(requests: list[list]) -> list:
    """flow_request argument lists (declaration order, frames base64) -> the flow_batch
    arguments that carry the same flows, as batch.zeek publishes them. Every request must
    share reply_topic, linktype, k and snaplen (one worker, one packet source)."""
    if not requests:
        raise ValueError("a batch needs at least one flow")
    shared = {tuple(r[i] for i in (1, 6, 7, 8)) for r in requests}
    if len(shared) != 1:
        raise ValueError("flows of one batch must share reply_topic, linktype, k, snaplen")
    reply, lt, k, snap = shared.pop()
    col = list(zip(*requests))
    cat = [x for r in requests for x in r[9]], [x for r in requests for x in r[10]], \
        [x for r in requests for x in r[11]], [x for r in requests for x in r[12]]
    return [reply, list(col[0]), lt, k, snap, list(col[2]), list(col[3]), list(col[4]),
            list(col[5]), [len(r[9]) for r in requests], *cat]


def verdicts_from_batch_args(args: list) -> list[Verdict]:
    """A verdict_batch's arguments -> one Verdict per flow (raises WireError)."""
    d = decode_args(VERDICT_BATCH, args)
    n = len(d["uids"])
    if not all(len(d[x]) == n for x in ("statuses", "scores", "anomalous", "packets",
                                         "details")):
        raise WireError("value", "verdict_batch vectors have different lengths")
    return [Verdict(u, st, sc, d["threshold"], a, p, d["model"], d["model_version"], de)
            for u, st, sc, a, p, de in zip(d["uids"], d["statuses"], d["scores"],
                                            d["anomalous"], d["packets"], d["details"])]
