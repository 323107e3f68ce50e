"""Suricata's unix command socket: dataset-add / dataset-remove with expiry and a rate limit.

The protocol is suricatasc's (suricata/sc/suricatasc.py): connect, send {"version": "0.2"},
read {"return": "OK"}; then one JSON object per command ({"command": ..., "arguments": ...}
plus a newline) and one JSON reply ending in a newline. A socket that is gone or a command
Suricata refuses is counted and retried later; it never stops the connector.
"""

from __future__ import annotations

import json
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

PROTOCOL_VERSION = "0.2"


class SuricataSocketError(OSError):
    """The socket is unreachable or answered something that is not the protocol."""


class SuricataSocket:
    """A minimal suricatasc: one connection, reconnects on demand."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        self.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
            self._sock = s
            s.sendall(json.dumps({"version": PROTOCOL_VERSION}).encode())
            reply = self._recv()
        except OSError as e:
            self.close()
            raise SuricataSocketError(f"{self.path}: {e}") from e
        if reply.get("return") != "OK":
            self.close()
            raise SuricataSocketError(f"{self.path}: handshake refused: {reply}")

    def _recv(self) -> dict:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self._sock.recv(4096)
            if not chunk:
                raise SuricataSocketError(f"{self.path}: connection closed by Suricata")
            data += chunk
        try:
            return json.loads(data)
        except ValueError as e:
            raise SuricataSocketError(f"{self.path}: not JSON: {data[:80]!r}") from e

    def command(self, name: str, arguments: dict | None = None) -> dict:
        """Send one command; returns Suricata's reply ({"return": "OK"|"NOK", "message": ...})."""
        if self._sock is None:
            self.connect()
        msg = {"command": name}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall((json.dumps(msg) + "\n").encode())
            return self._recv()
        except OSError as e:
            self.close()
            raise SuricataSocketError(f"{self.path}: {e}") from e

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


@dataclass
class DatasetCounters:
    added: int = 0
    removed: int = 0
    refreshed: int = 0       # flagged again while listed: expiry pushed back, no command
    rate_limited: int = 0    # flags not sent this second (--rate); retried while flagged
    socket_errors: int = 0   # socket gone or unreachable; the work is kept and retried
    refused: int = 0         # Suricata answered NOK (e.g. unknown dataset)
    below_min: int = 0       # flags of hosts not yet at --min-flags within --flag-window
    last_error: str = ""
    errors: list[str] = field(default_factory=list)


class DatasetFeeder:
    """Keeps a Suricata dataset equal to "hosts flagged in the last ttl seconds".

    add() queues a host; pump() sends what the rate limit allows (at most `rate` dataset-add
    commands per second) and removes entries whose ttl ran out. Pending work survives a
    missing socket (counted) and is sent when it comes back. A host is listed only once it was
    flagged `min_flags` times within `window` seconds: the rule alerts on ALL of a listed
    host's traffic for `ttl`, so one false-positive flow must not turn a busy benign host into
    thousands of alerts (measured in the lab: docs/lab.md).
    """

    def __init__(self, client: SuricataSocket, dataset: str, settype: str = "ip",
                 ttl: float = 3600.0, rate: float = 10.0, clock=time.time,
                 min_flags: int = 1, window: float = 300.0):
        if min_flags < 1:
            raise ValueError("min_flags must be >= 1")
        self.min_flags = min_flags
        self.window = window
        self.recent: dict[str, deque] = {}   # host -> times of its flags, not yet listed
        self.client = client
        self.dataset = dataset
        self.settype = settype
        self.ttl = ttl
        self.rate = rate
        self.clock = clock
        self.counters = DatasetCounters()
        self.active: OrderedDict[str, float] = OrderedDict()   # host -> expiry (epoch s)
        self.queued: OrderedDict[str, None] = OrderedDict()     # flagged, not yet added
        self.to_remove: OrderedDict[str, None] = OrderedDict()  # expired, remove failed so far
        self._window = (0.0, 0)

    def add(self, host: str) -> None:
        if host in self.active:
            self.active[host] = self.clock() + self.ttl
            self.active.move_to_end(host)
            self.counters.refreshed += 1
            return
        if self.min_flags > 1 and host not in self.queued:
            now = self.clock()
            times = self.recent.setdefault(host, deque())
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) < self.min_flags:
                self.counters.below_min += 1
                if len(self.recent) > 100_000:   # bounded: forget the stalest hosts
                    for h in list(self.recent)[:10_000]:
                        del self.recent[h]
                return
            del self.recent[host]
        self.to_remove.pop(host, None)
        self.queued[host] = None

    def _send(self, command: str, host: str) -> bool:
        try:
            reply = self.client.command(command, {"setname": self.dataset,
                                                  "settype": self.settype,
                                                  "datavalue": host})
        except SuricataSocketError as e:
            self.counters.socket_errors += 1
            self.counters.last_error = str(e)
            return False
        if reply.get("return") != "OK":
            self.counters.refused += 1
            msg = f"{command} {host}: {reply.get('message')}"
            self.counters.last_error = msg
            if len(self.counters.errors) < 10:
                self.counters.errors.append(msg)
            return command == "dataset-remove"   # nothing to remove: done with it
        return True

    def pump(self) -> None:
        now = self.clock()
        for host, exp in list(self.active.items()):
            if exp > now:
                break  # ordered by expiry (refresh moves to the end)
            del self.active[host]
            self.to_remove[host] = None
        for host in list(self.to_remove):
            if not self._send("dataset-remove", host):
                return  # socket gone: try again on the next pump
            del self.to_remove[host]
            self.counters.removed += 1
        start, sent = self._window
        if now - start >= 1.0:
            start, sent = now, 0
        for host in list(self.queued):
            if sent >= self.rate:
                self.counters.rate_limited += len(self.queued)
                break
            if not self._send("dataset-add", host):
                break
            del self.queued[host]
            self.active[host] = now + self.ttl
            self.counters.added += 1
            sent += 1
        self._window = (start, sent)

    def state(self) -> dict:
        return {"active": dict(self.active), "queued": list(self.queued),
                "to_remove": list(self.to_remove)}

    def load_state(self, d: dict) -> None:
        self.active = OrderedDict(sorted(d.get("active", {}).items(), key=lambda kv: kv[1]))
        self.queued = OrderedDict.fromkeys(d.get("queued", []))
        self.to_remove = OrderedDict.fromkeys(d.get("to_remove", []))
