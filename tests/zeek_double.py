"""A test double of Zeek's WebSocket endpoint (loopback only), limited to documented behaviour.

Every behaviour cites where it comes from:
  [WS]   zeek/zeek src/cluster/websocket/WebSocket.cc (WebSocketEventDispatcher::Process,
         HandleSubscriptions, HandleEvent, SendError, SendAck)
  [DOC]  docs.zeek.org "Interacting with Zeek using WebSockets" and Broker's "Web Socket"
         chapter (JSON v1 encoding)
  [OPT]  zeek/zeek scripts/base/frameworks/cluster/types.zeek WebSocketServerOptions
         (ping_interval default 5 sec; a client not answering pings is disconnected)
  [FACT] /work/shared/docs/zeek-facts.md (read from the Zeek source)
"""

from __future__ import annotations

import asyncio
import json
import math

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


def _strict_type_ok(value, zeek_type: str) -> bool:
    """Zeek's conversion: count vs integer must match; a real needs a '.'/exponent [FACT]."""
    if not isinstance(value, dict) or set(value) != {"@data-type", "data"}:
        return False
    if zeek_type.startswith("vector of "):
        inner = zeek_type[len("vector of "):]
        return value["@data-type"] == "vector" and isinstance(value["data"], list) and \
            all(_strict_type_ok(x, inner) for x in value["data"])
    if value["@data-type"] != zw.ZEEK_TO_JSON[zeek_type]:
        return False
    d = value["data"]
    return {"string": lambda: isinstance(d, str),
            "addr": lambda: isinstance(d, str),
            "port": lambda: isinstance(d, str) and "/" in d,
            "count": lambda: isinstance(d, int) and not isinstance(d, bool) and d >= 0,
            "int": lambda: isinstance(d, int) and not isinstance(d, bool),
            "double": lambda: isinstance(d, float),
            "bool": lambda: isinstance(d, bool)}[zeek_type]()


class ZeekDouble:
    """Serve /v1/messages/json on 127.0.0.1; record the events clients publish to us."""

    def __init__(self, subscriptions=(zw.DEFAULT_VERDICT_TOPIC,), ping_interval: float = 5.0,
                 port: int = 0, version: str = "8.0.0-double", ssl_context=None):
        self.subscriptions = list(subscriptions)  # what "Zeek script" subscribed to
        self.ping_interval = ping_interval
        self.port = port
        self.version = version
        self.received: list[tuple[str, str, list]] = []  # dispatched (topic, name, args)
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
        try:
            first = await ws.recv()
            # [WS] HandleSubscriptions: array of strings, else deserialization_failed.
            try:
                subs = json.loads(first)
            except ValueError:
                subs = None
            if not isinstance(subs, list):
                await self._error(ws, "deserialization_failed", "subscriptions not an array")
                return
            if not all(isinstance(s, str) for s in subs):
                await self._error(ws, "deserialization_failed",
                                  "individual subscription not a string")
                return
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
        # [WS] HandleEvent: decode JSON v1, topic required, then to_zeek_event().
        try:
            msg = json.loads(text)
            _ = msg["data"][2]["data"]
        except (ValueError, KeyError, IndexError, TypeError):
            await self._error(ws, "deserialization_failed", "failed to decode JSON object")
            return
        topic = msg.get("topic") if isinstance(msg, dict) else None
        if not topic:
            await self._error(ws, "deserialization_failed", "no topic in top-level JSON object")
            return
        ev = msg["data"][2]["data"]
        name = ev[0].get("data") if ev and isinstance(ev[0], dict) else None
        args = ev[1].get("data") if len(ev) > 1 and isinstance(ev[1], dict) else None
        decl = DECLARED.get(name)
        if decl is None or not isinstance(args, list) or len(args) != len(decl) or \
                not all(_strict_type_ok(a, t) for a, (_, t) in zip(args, decl)):
            # [WS] to_zeek_event fails for unknown events, wrong arity or types.
            await self._error(ws, "deserialization_failed", "failed to create Zeek event")
            return
        # [FACT] dispatched on this node only if subscribed to a prefix of the topic.
        if any(topic.startswith(p) for p in self.subscriptions):
            self.received.append((topic, name, args))
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
        before the ack are discarded [WS: DoProcessEvent drops if ! IsAcked()]."""
        text = zeek_json(zw.event_message(topic, name, args))
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
        return [zw.Verdict.from_args(a) for _, n, a in self.received if n == zw.VERDICT]
