"""WebSocket client for Zeek's WebSocket API (JSON v1): handshake, reconnect, publish.

Protocol (src/cluster/websocket/WebSocket.cc in zeek/zeek; docs.zeek.org "Interacting with
Zeek using WebSockets"): connect to ws[s]://HOST:PORT/v1/messages/json, send a JSON array of
topic prefixes as the first text frame, wait for {"type":"ack",...}; afterwards every text
frame is a data-message or an {"type":"error","code":...,"context":...}. Zeek closes clients
that do not answer its pings (Cluster::WebSocketServerOptions$ping_interval, 5 s): the
`websockets` library answers pings on this loop, so nothing here may block it.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import random
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import websockets

log = logging.getLogger("semiflow.zeek_ws")

WS_PATH = "/v1/messages/json"

# The largest text frame Zeek legally sends us, so the client can refuse anything bigger
# instead of buffering it (websockets' max_size; it closes the connection with 1009). A
# flow_request carries at most K frames (SemiFlow::k, the model's K); a frame is at most
# libpcap's MAXIMUM_SNAPLEN bytes (SemiFlow::snaplen = 0 ships whole frames), base64 makes
# 4 characters of every 3 bytes; each frame also brings its ts/wire_len/is_orig values and
# the four {"@data-type":..,"data":..} wrappers (< 256 characters, with Zeek's %f reals);
# the rest of a request (event name, uid, topics, addresses, ports, counts, Zeek's metadata
# vector) is well under 4 KiB. For K = 8 that is about 2.8 MB. A message kind carrying
# several requests multiplies it by the most requests one message may hold.
FRAME_MAX = 1 << 18
FRAME_JSON_OVERHEAD = 256
REQUEST_JSON_OVERHEAD = 4096


def max_message_size(k: int, requests_per_message: int = 1) -> int:
    """Bytes of the largest legal message from Zeek for K-packet flow requests."""
    per_frame = 4 * -(-FRAME_MAX // 3) + FRAME_JSON_OVERHEAD
    return requests_per_message * (REQUEST_JSON_OVERHEAD + k * per_frame)


class ZeekTLSError(ConnectionError):
    """A TLS certificate problem: retrying cannot fix it, so the client stops."""


# TLS alerts by which the server turns down our client certificate (OpenSSL reason codes).
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED",
                       "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED")


def tls_failure(exc: BaseException, url: str) -> str | None:
    """One line saying what to fix, if exc (or what caused it) is a certificate problem."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"TLS: {url} presented a certificate that does not verify "
                    f"({exc.verify_message}); check --tls-ca and that the URL's host name is "
                    "one Zeek's certificate is issued for")
        reason = (exc.reason or "") if isinstance(exc, ssl.SSLError) else ""
        if any(a in reason for a in _CLIENT_CERT_ALERTS):
            return (f"TLS: {url} refused our client certificate ({reason}); check --tls-cert "
                    "and --tls-key against the CA Zeek verifies clients with")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _tls_hint(exc: BaseException, url: str) -> str:
    """Over TLS, a server that closes during the opening handshake has usually refused our
    client certificate (TLS 1.3 may say so only in an alert the client never reads)."""
    if not url.startswith("wss://"):
        return ""
    while exc is not None:
        if isinstance(exc, EOFError):
            return (" (closed during the TLS/WebSocket handshake: if Zeek verifies peers, "
                    "check --tls-cert and --tls-key)")
        exc = exc.__cause__ or exc.__context__
    return ""


def plaintext_warning(url: str) -> str | None:
    """A warning for plain ws:// to anything but a loopback address, else None."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        return None
    host = parts.hostname or ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (f"PLAIN-TEXT WEBSOCKET to {host}: flow bytes and verdicts cross the network "
            "unencrypted and unauthenticated; use wss:// with --tls-ca (and --tls-cert/"
            "--tls-key for Zeek's peer verification)")


def normalise_url(url: str) -> str:
    """ws://host:port -> ws://host:port/v1/messages/json (an explicit path is kept)."""
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"--zeek must be ws://HOST:PORT or wss://HOST:PORT, got {url!r}")
    rest = url.split("://", 1)[1]
    return url if "/" in rest else url + WS_PATH


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """Client TLS: verify Zeek's certificate against ca_file (or the system store);
    cert/key for Zeek's enable_peer_verification."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ZeekClient:
    """Keeps one connection to Zeek alive; hands every message to `on_message` (raw text).

    on_message runs on the event loop and must return quickly. `publish` queues an
    already-encoded message; messages queued while disconnected wait (bounded by
    max_pending, oldest dropped and counted) and go out after the next ack.
    """

    def __init__(self, url: str, topics: list[str], on_message: Callable[[str], None],
                 ssl_context: ssl.SSLContext | None = None, app_name: str = "semiflow",
                 backoff_initial: float = 0.1, backoff_max: float = 30.0,
                 ack_timeout: float = 10.0, max_pending: int = 100_000,
                 on_state: Callable[[str], None] | None = None,
                 max_size: int = max_message_size(8)):
        self.url = normalise_url(url)
        self.max_size = max_size
        warning = plaintext_warning(self.url)
        if warning:
            log.warning(warning)
        self.topics = list(topics)
        self.on_message = on_message
        self.ssl_context = ssl_context
        self.app_name = app_name
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ack_timeout = ack_timeout
        self.on_state = on_state
        self.out: collections.deque[str] = collections.deque()
        self.max_pending = max_pending
        self.dropped = 0
        self.binary_ignored = 0  # binary frames: the API speaks text frames only
        self.connects = 0
        self.zeek_errors: dict[str, int] = {}
        self.ack: dict | None = None
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ws = None

    def publish(self, msg: dict | str) -> None:
        """Queue one message (dict -> compact ASCII JSON; Zeek mis-decodes \\u escapes of
        non-ASCII, so only ASCII is ever produced here: ensure_ascii)."""
        text = msg if isinstance(msg, str) else json.dumps(msg, separators=(",", ":"))
        if len(self.out) >= self.max_pending:
            self.out.popleft()
            self.dropped += 1
        self.out.append(text)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued message is sent (or timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.out and loop.time() < end:
            self._wake.set()
            await asyncio.sleep(0.01)
        return not self.out

    def _state(self, s: str) -> None:
        if self.on_state is not None:
            self.on_state(s)

    async def run(self) -> None:
        """Connect, handshake, pump messages; reconnect with exponential backoff + jitter."""
        delay = self.backoff_initial
        while not self._stop.is_set():
            try:
                async with websockets.connect(
                        self.url, ssl=self.ssl_context, max_size=self.max_size,
                        ping_interval=None,
                        additional_headers={"X-Application-Name": self.app_name},
                        open_timeout=self.ack_timeout, close_timeout=1) as ws:
                    self._ws = ws
                    await ws.send(json.dumps(self.topics))
                    ack = json.loads(await asyncio.wait_for(ws.recv(), self.ack_timeout))
                    if not isinstance(ack, dict) or ack.get("type") != "ack":
                        raise ConnectionError(f"handshake refused: {ack!r}")
                    self.ack = ack
                    self.connects += 1
                    delay = self.backoff_initial
                    log.info("connected to %s (endpoint %s, version %s), subscribed to %s",
                             self.url, ack.get("endpoint"), ack.get("version"), self.topics)
                    self.connected.set()
                    self._state("connected")
                    await self._pump(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # refused, reset, bad ack: all mean "try again"
                fatal = tls_failure(e, self.url)
                if fatal:  # except a certificate problem: no retry fixes it
                    raise ZeekTLSError(fatal) from None
                if not self._stop.is_set():
                    log.warning("zeek connection: %s%s; retrying in %.1fs", e,
                                _tls_hint(e, self.url), delay)
            finally:
                self._ws = None
                if self.connected.is_set():
                    self.connected.clear()
                    self._state("disconnected")
            if self._stop.is_set():
                break
            try:
                await asyncio.wait_for(self._stop.wait(), delay * (0.5 + random.random()))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self.backoff_max)

    async def _pump(self, ws) -> None:
        recv = asyncio.create_task(self._receive(ws))
        send = asyncio.create_task(self._send(ws))
        done, pending = await asyncio.wait({recv, send}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in pending:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc

    async def _receive(self, ws) -> None:
        async for msg in ws:
            if isinstance(msg, bytes):  # the API is text frames only: count, skip
                if self.binary_ignored == 0:
                    log.warning("zeek sent a binary frame (%d bytes): ignored; further ones "
                                "are counted", len(msg))
                self.binary_ignored += 1
                continue
            try:
                self.on_message(msg)
            except Exception as e:  # a handler bug must not drop the connection
                log.exception("message handler failed: %s", e)

    async def _send(self, ws) -> None:
        while not self._stop.is_set() or self.out:
            if not self.out:
                self._wake.clear()
                await self._wake.wait()
                continue
            text = self.out[0]
            await ws.send(text)
            self.out.popleft()  # only after it went out: a broken send is retried
        await ws.close()

    def count_zeek_error(self, code: str, context: str) -> None:
        """Error messages from Zeek are counted; the first of each code is logged."""
        key = f"{code}: {context}"
        n = self.zeek_errors.get(key, 0)
        self.zeek_errors[key] = n + 1
        if n == 0:
            log.warning("zeek reported an error: %s (further ones counted)", key)
