"""The lab's network: one switch namespace holding a bridge, one namespace per host, a veth
pair from each host to the bridge, addresses only inside our own namespaces, no route out.

Everything made here is recorded and torn down by Topology.close() (also on failure: use it
as a context manager), so a run never leaves a namespace or a process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

SUBNET_PREFIX = 16
BRIDGE = "br0"


@dataclass
class Host:
    name: str          # short role name, e.g. "web", "client1", "attacker1"
    ip: str            # primary address
    role: str          # server | client | attacker
    extra_ips: list[str] = field(default_factory=list)


def sh(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


class Topology:
    """Namespaces named <prefix><host>; prefix is unique per run (pid), so runs never clash."""

    def __init__(self, hosts: list[Host], prefix: str | None = None):
        self.hosts = {h.name: h for h in hosts}
        self.prefix = prefix or f"sfl{os.getpid() % 100000}-"
        self.switch = self.prefix + "sw"
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, host: str) -> str:
        return self.prefix + host

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: list[str], timeout: float | None = None,
            check: bool = False, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec_argv(host, argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def spawn(self, host: str, argv: list[str], log: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        """A long-running process in a host namespace, killed (with its group) by close()."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        p = subprocess.Popen(self.exec_argv(host, argv), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def _add_ns(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self.made.append(name)
        ex = ["ip", "netns", "exec", name]
        sh([*ex, "ip", "link", "set", "lo", "up"])
        # IPv6 off: link-local chatter (ND, MLD) would add flows no scenario asked for.
        for key in ("all", "default", "lo"):
            sh([*ex, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"], check=False)

    def up(self) -> None:
        self._add_ns(self.switch)
        sw = ["ip", "netns", "exec", self.switch]
        sh([*sw, "ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
            "forward_delay", "0"])
        sh([*sw, "ip", "link", "set", BRIDGE, "up"])
        for i, h in enumerate(self.hosts.values()):
            ns = self.ns(h.name)
            self._add_ns(ns)
            a, b = f"sfh{i}", f"sfb{i}"
            # Made in the switch namespace, so no interface ever appears in the host's.
            sh([*sw, "ip", "link", "add", a, "type", "veth", "peer", "name", b])
            sh([*sw, "ip", "link", "set", a, "netns", ns])
            sh([*sw, "ip", "link", "set", b, "master", BRIDGE])
            sh([*sw, "ip", "link", "set", b, "up"])
            ex = ["ip", "netns", "exec", ns]
            sh([*ex, "ip", "link", "set", a, "name", "eth0"])
            for ip in [h.ip, *h.extra_ips]:
                sh([*ex, "ip", "addr", "add", f"{ip}/{SUBNET_PREFIX}", "dev", "eth0"])
            sh([*ex, "ip", "link", "set", "eth0", "up"])
            # Ping, ptunnel and hping need raw ICMP; unprivileged ping for the clients too.
            sh([*ex, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"], check=False)
        # Let ARP settle so the first packets of every scenario are not ARP retries.
        time.sleep(0.5)

    def stop_procs(self) -> None:
        terminate(list(reversed(self.procs)))
        self.procs.clear()

    def close(self) -> None:
        self.stop_procs()
        for ns in reversed(self.made):
            # Anything still inside (a stray child of a tool) dies with its namespace's pids.
            pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)
        self.made.clear()

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def terminate(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM each process group (in the order given), then SIGKILL what is still running
    after `timeout` seconds in all."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def leftover_namespaces(prefix: str = "sfl") -> list[str]:
    """Lab namespaces that exist now (a test asserts none survive a run)."""
    out = sh(["ip", "netns", "list"], check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line.strip().startswith(prefix)]
