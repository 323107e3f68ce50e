"""The dataset loop's host gate: a host enters Suricata's dataset only after --min-flags
anomalous flows within --flag-window (one false positive must not list a busy benign host,
whose every packet the rule would then alert on for the whole TTL)."""

from __future__ import annotations

from semiflow.plugin.suricata_socket import DatasetFeeder


class FakeSocket:
    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def command(self, command: str, args: dict) -> dict:
        self.sent.append((command, args["datavalue"]))
        return {"return": "OK"}


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_one_flag_lists_a_host_by_default():
    sock, clock = FakeSocket(), Clock()
    f = DatasetFeeder(sock, "semiflow-flagged", clock=clock)
    f.add("10.0.0.5")
    f.pump()
    assert sock.sent == [("dataset-add", "10.0.0.5")]


def test_min_flags_within_the_window_gate_the_host():
    sock, clock = FakeSocket(), Clock()
    f = DatasetFeeder(sock, "semiflow-flagged", clock=clock, min_flags=3, window=60.0)
    f.add("10.0.0.5")              # a lone false positive ...
    clock.t += 120.0               # ... ages out of the window
    f.add("10.0.0.5")
    clock.t += 10.0
    f.add("10.0.0.5")
    f.pump()
    assert sock.sent == [] and f.counters.below_min == 3
    clock.t += 10.0
    f.add("10.0.0.5")              # third flag within 60 s: listed
    f.pump()
    assert sock.sent == [("dataset-add", "10.0.0.5")] and f.counters.added == 1
    f.add("10.0.0.5")              # listed hosts are refreshed, not re-added
    assert f.counters.refreshed == 1
    clock.t += 4000.0              # ttl (3600 s) ran out: removed, and gated again
    f.pump()
    assert sock.sent[-1] == ("dataset-remove", "10.0.0.5")
    f.add("10.0.0.5")
    f.pump()
    assert sock.sent[-1] == ("dataset-remove", "10.0.0.5")
