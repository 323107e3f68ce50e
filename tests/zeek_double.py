"""A test double of Zeek's WebSocket endpoint (loopback only), limited to documented behaviour.

Every behaviour cites where it comes from:
  [WS]   zeek/zeek src/cluster/websocket/WebSocket.cc (WebSocketEventDispatcher::Process,
         HandleSubscriptions, HandleEvent, SendError, SendAck)
  [DOC]  docs.zeek.org "Interacting with Zeek using WebSockets" and Broker's "Web Socket"
         chapter (JSON v1 encoding)
  [OPT]  zeek/zeek scripts/base/frameworks/cluster/main.zeek@v8.0.0:364-380 (types.zeek
         from 8.1) WebSocketServerOptions (ping_interval default 5 sec; a client not
         answering pings is disconnected)
  [SER]  zeek/zeek src/cluster/serializer/broker/Serializer.cc@v8.0.0:95 (events always carry
         a metadata vector, empty by default); Zeek 6/7 append [[count 1, timestamp]]
  [JSON] broker libbroker/broker/internal/json.cc (broker@06d49194): the JSON v1 decoder;
         `real` needs a floating-point literal (:50-52)
  [FACT] shared/docs/zeek-facts.md and shared/docs/zeek-review.md of the team notes (read
         from the Zeek source; the review's S7 lists what this double must do)

Line numbers are those of src/cluster/websocket/WebSocket.cc@v8.0.0 unless said otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re

import websockets

from semiflow.plugin import zeek_wire as zw

# Events "declared in Zeek script" on this node, with their types [FACT: client-sent events
# are dispatched only if declared with the exact types and subscribed].
DECLARED = dict(zw.EVENTS)

# [FACT] Zeek's JSON writer escapes only these, other bytes are copied raw.
_ESC = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
        "\v": "\\v", '"': '\\"'}


def zeek_json_string(s: str) -> str:
    return '"' + "".join(_ESC.get(c, c) for c in s) + '"'


def zeek_json(v) -> str:
    """Encode like Zeek/Broker: only the escapes above; reals with %f (NaN as nan) [FACT]."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{zeek_json_string(k)}:{zeek_json(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(zeek_json(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:f}"
    if isinstance(v, str):
        return zeek_json_string(v)
    raise TypeError(type(v))


_PORT = re.compile(r"\d{1,5}/(tcp|udp|icmp|\?)")


def _addr_ok(d) -> bool:
    try:
        ipaddress.ip_address(d)
        return True
    except ValueError:
        return False


# [JSON] what Broker's JSON decoder accepts per @data-type (else the message fails to
# decode: "failed to decode JSON object", :508).
_JSON_OK = {
    "string": lambda d: isinstance(d, str),
    "address": lambda d: isinstance(d, str) and _addr_ok(d),
    "port": lambda d: isinstance(d, str) and bool(_PORT.fullmatch(d)) and
    int(d.split("/")[0]) < 65536,
    "count": lambda d: isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**64,
    "integer": lambda d: isinstance(d, int) and not isinstance(d, bool) and
    -2**63 <= d < 2**63,
    "real": lambda d: isinstance(d, float),
    "boolean": lambda d: isinstance(d, bool),
    "vector": lambda d: isinstance(d, list) and all(_json_value_ok(x) for x in d),
    "set": lambda d: isinstance(d, list) and all(_json_value_ok(x) for x in d),
    "subnet": lambda d: isinstance(d, str) and "/" in d,
    "timestamp": lambda d: isinstance(d, str),
    "timespan": lambda d: isinstance(d, str),
    "enum-value": lambda d: isinstance(d, str),
    "none": lambda d: d == {},
}


def _json_value_ok(value) -> bool:
    """[JSON] A JSON v1 value Broker can decode at all (independent of any declaration)."""
    if not isinstance(value, dict) or set(value) != {"@data-type", "data"}:
        return False
    ok = _JSON_OK.get(value["@data-type"])
    return ok is not None and ok(value["data"])


def _declared_type_ok(value, zeek_type: str) -> bool:
    """[WS :549] to_zeek_event: the decoded value's tag must be the declared type's."""
    if zeek_type.startswith("vector of "):
        inner = zeek_type[len("vector of "):]
        return value["@data-type"] == "vector" and \
            all(_declared_type_ok(x, inner) for x in value["data"])
    return value["@data-type"] == zw.ZEEK_TO_JSON[zeek_type]


def _strict_type_ok(value, zeek_type: str) -> bool:
    """Both checks: Broker can decode it and it has the declared type."""
    return _json_value_ok(value) and _declared_type_ok(value, zeek_type)


# [WS :298-301] X-Application-Name must consist of these characters (default "unknown").
_APP_NAME = re.compile(r"[-/_.=:*@a-zA-Z0-9]*")


def event_metadata(style: str) -> list:
    """[SER] The third element of an event Zeek publishes: "8" -> an empty vector;
    "6" or "7" -> [[count 1, timestamp]] (network time); "none" -> no third element."""
    if style == "8":
        return [{"@data-type": "vector", "data": []}]
    if style in ("6", "7"):
        return [{"@data-type": "vector", "data": [{"@data-type": "vector", "data": [
            {"@data-type": "count", "data": 1},
            {"@data-type": "timestamp", "data": "2026-11-30T07:00:00.000"}]}]}]
    return []


class ZeekDouble:
    """Serve /v1/messages/json on 127.0.0.1; record the events clients publish to us."""

    def __init__(self, subscriptions=(zw.DEFAULT_VERDICT_TOPIC,), ping_interval: float = 5.0,
                 port: int = 0, version: str = "8.0.0-double", metadata: str = "8",
                 ssl_context=None):
        self.subscriptions = list(subscriptions)  # what "Zeek script" subscribed to
        self.ping_interval = ping_interval
        self.port = port
        self.version = version
        self.metadata = metadata  # [SER] shape of the events this double publishes
        self.app_names: list[str] = []  # X-Application-Name of accepted clients
        self.received: list[tuple[str, str, list]] = []  # dispatched (topic, name, args)
        self.verdict_flows = 0  # flows answered so far (len(verdicts()) without decoding)
        self.errors_sent: list[dict] = []
        self.clients: dict = {}  # ws -> subscribed prefixes (after ack)
        self.event = asyncio.Event()  # set whenever something is dispatched
        self.server = None
        # [OPT] Cluster::WebSocketServerOptions$tls_options: Zeek serves wss:// with its
        # certificate (and, with enable_peer_verification, requires a client certificate)
        self.ssl_context = ssl_context

    @property
    def url(self) -> str:
        if self.ssl_context is not None:  # the name test certificates are issued for
            return f"wss://localhost:{self.port}"
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> ZeekDouble:
        # [OPT] ping_interval: clients that do not answer pings are dropped.
        self.server = await websockets.serve(
            self._handler, "127.0.0.1", self.port, ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval, max_size=None, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # [WS] Terminate(): close 1001 "Terminating"
            await self.server.wait_closed()
            self.server = None
        self.clients.clear()

    async def _error(self, ws, code: str, context: str) -> None:
        # [WS] SendError: {"type":"error","code":...,"context":...}
        msg = {"type": "error", "code": code, "context": context}
        self.errors_sent.append(msg)
        await ws.send(zeek_json(msg))

    async def _handler(self, ws) -> None:
        path = ws.request.path
        if path != "/v1/messages/json":
            # [WS] Process(WebSocketOpen): invalid_uri error then close 1008.
            await self._error(ws, "invalid_uri", "Invalid URI - use /v1/messages/json")
            await ws.close(1008, "Invalid URI - use /v1/messages/json")
            return
        app = ws.request.headers.get("X-Application-Name", "unknown")
        if not _APP_NAME.fullmatch(app):
            # [WS :298-307] invalid_application_name error then close 1008.
            await self._error(ws, "invalid_application_name", "Invalid X-Application-Name")
            await ws.close(1008, "Invalid X-Application-Name")
            return
        try:
            first = await ws.recv()
            # [WS :430-448] HandleSubscriptions: array of strings, else
            # deserialization_failed, and then just `return`: the socket stays open, no
            # ack is ever sent, and later messages wait in the client's queue forever
            # (Process :586-589 queues messages of a client that is not acked).
            try:
                subs = json.loads(first)
            except ValueError:
                subs = None
            bad = None
            if not isinstance(subs, list):
                bad = "subscriptions not an array"
            elif not all(isinstance(s, str) for s in subs):
                bad = "individual subscription not a string"
            if bad is not None:
                await self._error(ws, "deserialization_failed", bad)
                async for _ in ws:
                    pass  # queued, never processed
                return
            self.app_names.append(app)
            # [WS] SendAck: {"type":"ack","endpoint":<node id>,"version":<zeek version>}
            await ws.send(zeek_json({"type": "ack", "endpoint": f"double-{id(ws):x}",
                                     "version": self.version}))
            self.clients[ws] = subs
            async for text in ws:
                await self._client_message(ws, text)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.clients.pop(ws, None)

    async def _client_message(self, ws, text) -> None:
        # [WS :498-508] HandleEvent: Broker's JSON v1 decode first; any value it cannot
        # decode (a real sent as an int, a negative count, a malformed address or port,
        # an unknown @data-type) fails the whole message here.
        try:
            msg = json.loads(text)
            ok = isinstance(msg, dict) and msg.get("type") == "data-message" and \
                msg.get("@data-type") == "vector" and \
                all(_json_value_ok(x) for x in msg.get("data") or [None])
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            await self._error(ws, "deserialization_failed", "failed to decode JSON object")
            return
        topic = msg.get("topic")
        if not topic:  # [WS :510-514]
            await self._error(ws, "deserialization_failed", "no topic in top-level JSON object")
            return
        # [WS :549] to_zeek_event: layout [1, 1, [name, args(, metadata)]], a declared
        # event, its arity, and each value's tag equal to the declared type.
        try:
            outer = msg["data"]
            ev = outer[2]["data"]
            name = ev[0]["data"] if ev[0]["@data-type"] == "string" else None
            args = ev[1]["data"] if ev[1]["@data-type"] == "vector" else None
            shape = len(outer) == 3 and 2 <= len(ev) <= 3
        except (IndexError, KeyError, TypeError):
            name, args, shape = None, None, False
        decl = DECLARED.get(name)
        if not shape or decl is None or args is None or len(args) != len(decl) or \
                not all(_declared_type_ok(a, t) for a, (_, t) in zip(args, decl)):
            await self._error(ws, "deserialization_failed", "failed to create Zeek event")
            return
        # [FACT] dispatched on this node only if subscribed to a prefix of the topic.
        if any(topic.startswith(p) for p in self.subscriptions):
            self.received.append((topic, name, args))
            if name == zw.VERDICT:
                self.verdict_flows += 1
            elif name == zw.VERDICT_BATCH:
                self.verdict_flows += len(args[0]["data"])   # the uids vector
            self.event.set()
        # Other clients subscribed to the topic get it too (pub/sub).
        await self._fanout(topic, text, exclude=ws)

    async def _fanout(self, topic: str, text: str, exclude=None) -> None:
        for c, subs in list(self.clients.items()):
            if c is not exclude and any(topic.startswith(p) for p in subs):
                try:
                    await c.send(text)
                except websockets.ConnectionClosed:
                    pass

    async def publish(self, topic: str, name: str, args: list) -> int:
        """Zeek script publishing an event; returns how many clients got it. Events
        before the ack are discarded [WS :66 drops if ! IsAcked()]. The event carries the
        metadata element of self.metadata's Zeek version [SER]."""
        msg = zw.event_message(topic, name, args)
        msg["data"][2]["data"] += event_metadata(self.metadata)
        text = zeek_json(msg)
        n = 0
        for c, subs in list(self.clients.items()):
            if any(topic.startswith(p) for p in subs):
                try:
                    await c.send(text)
                    n += 1
                except websockets.ConnectionClosed:
                    pass
        return n

    def verdicts(self) -> list[zw.Verdict]:
        """Every flow's verdict received so far: per-flow verdicts and the entries of
        verdict_batch events, in arrival order."""
        out: list[zw.Verdict] = []
        for _, n, a in self.received:
            if n == zw.VERDICT:
                out.append(zw.Verdict.from_args(a))
            elif n == zw.VERDICT_BATCH:
                out += zw.verdicts_from_batch_args(a)
        return out

    def verdict_events(self) -> dict[str, int]:
        """How many events of each name were dispatched."""
        out: dict[str, int] = {}
        for _, n, _ in self.received:
            out[n] = out.get(n, 0) + 1
        return out
