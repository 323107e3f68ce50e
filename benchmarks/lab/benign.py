"""Benign traffic: people and machines using the lab's services on a seeded random schedule.

Every client namespace runs one thread that picks actions by weight and sleeps an exponential
gap; the chatty machine fires bursts of short requests. Each action is one bounded shell
command (a time limit on every command, a count limit on every loop).
"""

from __future__ import annotations

import random
import shlex
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from .services import LAB_PASSWORD, LAB_USER, NAMES, ZONE, ip_of
from .topology import Topology

WEB, FILES, MAIL, IOT, MON, DNS = (ip_of(n) for n in ("web", "files", "mail", "iot", "mon",
                                                      "dns"))
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari",
          "curl/7.88.1", "Wget/1.21.3", "python-requests/2.31"]
WORDS = ["sensor", "gateway", "router", "lamp", "pump", "meter", "camera", "relay", "drive"]
SIZES = [1 << 10, 8 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
SSH = (f"sshpass -p {LAB_PASSWORD} ssh -o StrictHostKeyChecking=no "
       f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {LAB_USER}@{FILES}")
SSH_OPTS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


def _browse(rng: random.Random, run: Path) -> str:
    ua = shlex.quote(rng.choice(AGENTS))
    pages = " ".join(f"http://{WEB}/page{rng.randrange(80)}.html"
                     for _ in range(rng.randint(1, 6)))
    tool = rng.random()
    if tool < 0.5:
        return f"curl -s -o /dev/null -A {ua} {pages}"
    if tool < 0.8:
        return f"wget -q -O /dev/null -U {ua} {pages}"
    return f"lynx -dump -useragent={ua} http://{WEB}/page{rng.randrange(80)}.html > /dev/null"


def _app(rng: random.Random, run: Path) -> str:
    ua = shlex.quote(rng.choice(AGENTS))
    base = f"http://{WEB}/app"
    c = rng.randrange(6)
    if c == 0:
        user, pw = rng.choice([("alice", "correct-horse-7"), ("bob", "blue-sky-42"),
                               ("carol", "tea-pot-99"), ("bob", "wrong")])
        return (f"curl -s -o /dev/null -A {ua} -c /dev/null -d user={user} -d pw={pw} "
                f"{base}/login")
    if c == 1:
        return f"curl -s -o /dev/null -A {ua} '{base}/search?q={rng.choice(WORDS)}'"
    if c == 2:
        return f"curl -s -o /dev/null -A {ua} '{base}/item?id={rng.randint(1, 200)}'"
    if c == 3:
        msg = shlex.quote(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))))
        return (f"curl -s -o /dev/null -A {ua} -d name=user{rng.randrange(99)} "
                f"-d email=u@{ZONE} --data-urlencode message={msg} {base}/contact")
    if c == 4:
        body = shlex.quote(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))))
        return f"curl -s -o /dev/null -A {ua} -d author=staff --data-urlencode body={body} " \
               f"{base}/notes"
    size = rng.choice(SIZES[:3])
    return f"curl -s -o /dev/null -A {ua} -F file=@{run}/www/files/doc-{size}.txt {base}/upload"


def _download(rng: random.Random, run: Path) -> str:
    size = rng.choices(SIZES, weights=[5, 5, 4, 3, 2, 1])[0]
    kind = rng.choice(["file", "doc"])
    ext = "bin" if kind == "file" else "txt"
    return f"curl -s -o /dev/null --limit-rate 4M http://{WEB}/files/{kind}-{size}.{ext}"


def _dns(rng: random.Random, run: Path) -> str:
    names = " ".join(f"{rng.choice(NAMES)}.{ZONE}" for _ in range(rng.randint(1, 8)))
    qtype = rng.choice(["A", "A", "A", "MX", "TXT"])
    return f"for n in {names}; do dig +short +tries=1 +time=2 @{DNS} $n {qtype}; done"


def _ssh(rng: random.Random, run: Path) -> str:
    cmd = rng.choice(["uname -a", "ls -la", "df -h", "uptime; who", "cat notes-1.txt",
                      "ps aux | head -20", "du -sh .", "date; id"])
    return f"{SSH} {shlex.quote(cmd)}"


def _scp(rng: random.Random, run: Path) -> str:
    size = rng.choice(SIZES[:4])
    if rng.random() < 0.5:
        return (f"sshpass -p {LAB_PASSWORD} scp {SSH_OPTS} {run}/www/files/file-{size}.bin "
                f"{LAB_USER}@{FILES}:up-{rng.randrange(1000)}.bin")
    batch = f"ls\nget notes-{rng.randrange(5)}.txt /dev/null\n"
    # sftp -b turns password authentication off unless BatchMode is switched back off.
    return (f"f=$(mktemp); printf {shlex.quote(batch)} > $f; sshpass -p {LAB_PASSWORD} sftp "
            f"{SSH_OPTS} -o BatchMode=no -b $f {LAB_USER}@{FILES}; rc=$?; rm -f $f; exit $rc")


def _ftp(rng: random.Random, run: Path) -> str:
    if rng.random() < 0.5:
        size = rng.choice(SIZES[:5])
        return f"curl -s -o /dev/null ftp://{FILES}/pub/data-{size}.bin"
    cmds = f"ls; cat notes-{rng.randrange(5)}.txt; bye"
    return f"lftp -u {LAB_USER},{LAB_PASSWORD} -e {shlex.quote(cmds)} {FILES} > /dev/null"


def _mail(rng: random.Random, run: Path) -> str:
    attach = ""
    if rng.random() < 0.6:
        size = rng.choice([2 << 10, 40 << 10, 300 << 10])
        attach = f"--attach @{run}/attach/attach-{size}.pdf"
    return (f"swaks --silent 2 --server {MAIL} --to ops{rng.randrange(9)}@{ZONE} "
            f"--from staff{rng.randrange(9)}@{ZONE} --header 'Subject: report "
            f"{rng.randrange(1000)}' --body 'see attached' {attach}")


def _mqtt(rng: random.Random, run: Path) -> str:
    n = rng.randint(1, 5)
    return "; ".join(f"mosquitto_pub -h {IOT} -t sensors/{rng.choice(WORDS)}/{rng.randrange(20)} "
                     f"-m {rng.uniform(0, 100):.2f}" for _ in range(n))


def _snmp(rng: random.Random, run: Path) -> str:
    if rng.random() < 0.7:
        return f"snmpget -v2c -c public -t 2 -r 0 {MON} 1.3.6.1.2.1.1.3.0 1.3.6.1.2.1.1.5.0"
    return f"snmpwalk -v2c -c public -t 2 -r 0 {MON} 1.3.6.1.2.1.1"


def _ntp(rng: random.Random, run: Path) -> str:
    return f"ntpdig -t 2 {MON}"


def _redis(rng: random.Random, run: Path) -> str:
    k = f"k{rng.randrange(50)}"
    ops = rng.choice([f"SET {k} {rng.randrange(10**6)}", f"GET {k}", "INCR hits",
                      f"LPUSH q {rng.randrange(99)}", "PING", f"EXPIRE {k} 60"])
    return f"redis-cli -h {IOT} {ops}"


ACTIONS = {"browse": (_browse, 22), "app": (_app, 14), "download": (_download, 6),
           "dns": (_dns, 16), "ssh": (_ssh, 5), "scp": (_scp, 3), "ftp": (_ftp, 4),
           "mail": (_mail, 4), "mqtt": (_mqtt, 8), "snmp": (_snmp, 5), "ntp": (_ntp, 3),
           "redis": (_redis, 8)}


def chatty_burst(rng: random.Random, run: Path) -> str:
    """A monitoring machine: many short requests (health checks, lookups, polls)."""
    n = rng.randint(20, 60)
    names = " ".join(f"{rng.choice(NAMES)}.{ZONE}" for _ in range(rng.randint(5, 15)))
    return (f"for i in $(seq {n}); do curl -s -o /dev/null --max-time 2 "
            f"http://{WEB}/app/api/status; done; "
            f"for n in {names}; do dig +short +tries=1 +time=1 @{DNS} $n; done; "
            f"for i in $(seq {n // 4}); do redis-cli -h {IOT} PING > /dev/null; done; "
            f"snmpget -v2c -c public -t 1 -r 0 {MON} 1.3.6.1.2.1.1.3.0 > /dev/null")


class BenignTraffic:
    """Threads of clients; stop() ends them after their current (time-limited) command."""

    def __init__(self, topo: Topology, clients: list[str], run: Path, seed: int,
                 rate: float = 1.0, chatty: str | None = "chatty",
                 actions: list[str] | None = None, weights: dict[str, float] | None = None):
        self.topo, self.clients, self.run, self.seed = topo, clients, run, seed
        self.actions = actions or list(ACTIONS)
        # another day's mix (drift benchmarks): per-action weights, 0 = never
        self.weights = {n: ACTIONS[n][1] for n in self.actions} | (weights or {})
        self.actions = [n for n in self.actions if self.weights[n] > 0]
        self.rate, self.chatty = rate, chatty
        self.stop_event = threading.Event()
        self.counts: Counter = Counter()
        self.failures: Counter = Counter()
        self.threads: list[threading.Thread] = []
        self.subscriber = None

    def _loop(self, host: str, seed: int, chatty: bool) -> None:
        rng = random.Random(seed)
        names = self.actions
        weights = [self.weights[n] for n in names]
        while not self.stop_event.is_set():
            if chatty:
                name, cmd = "chatty", chatty_burst(rng, self.run)
            else:
                name = rng.choices(names, weights=weights)[0]
                cmd = ACTIONS[name][0](rng, self.run)
            try:
                r = self.topo.run(host, ["timeout", "-k", "2", "30", "bash", "-c", cmd],
                                  timeout=40)
                ok = r.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            self.counts[name] += 1
            if not ok:
                self.failures[name] += 1
            gap = rng.expovariate(self.rate) if not chatty else rng.uniform(1.0, 4.0)
            self.stop_event.wait(min(gap, 10.0))

    def start(self) -> None:
        if self.clients and "mqtt" in self.actions:
            # One long-lived MQTT subscriber, as a dashboard would hold.
            self.subscriber = self.topo.spawn(
                self.clients[0], ["mosquitto_sub", "-h", IOT, "-t", "sensors/#", "-C",
                                  "100000", "-W", "86400"])
        for i, host in enumerate(self.clients):
            t = threading.Thread(target=self._loop, args=(host, self.seed * 1000 + i, False),
                                 daemon=True)
            t.start()
            self.threads.append(t)
        if self.chatty:
            t = threading.Thread(target=self._loop, args=(self.chatty, self.seed * 1000 + 999,
                                                          True), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=45)
        if self.subscriber is not None and self.subscriber.poll() is None:
            self.subscriber.terminate()

    def wait(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end and not self.stop_event.is_set():
            time.sleep(min(1.0, end - time.time()))
