"""Live scenario: the real Suricata 7 on the lab bridge (AF_PACKET) with `semiflow suricata
--follow` and the dataset closed loop, then what happened, measured from Suricata's own logs:
which hosts semiflow put in the dataset, which hosts Suricata alerted on, and how many seconds
passed from each attack phase's start to Suricata's first alert on that phase's attacker.

The lab drives the product only through its command line (it never imports the detector).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from .topology import Topology, terminate

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "suricata" / "semiflow.yaml"
RULES = REPO / "suricata" / "semiflow.rules"
SID = 9100001  # suricata/semiflow.rules: alert on traffic from a host semiflow flagged


def semiflow_cli() -> list[str]:
    exe = shutil.which("semiflow") or str(REPO / ".venv" / "bin" / "semiflow")
    return [exe]


class SuricataLive:
    """Suricata in the switch namespace on br0, semiflow following its pcap-log and eve.json."""

    def __init__(self, topo: Topology, out: Path, model: Path, flag: str = "src",
                 min_flags: int = 1, flag_window: float = 300.0):
        self.min_flags, self.flag_window = min_flags, flag_window
        # Absolute: Suricata puts a relative socket path under its own run directory.
        self.topo, self.dir, self.flag = topo, (out / "suricata").resolve(), flag
        self.model = model.resolve()
        self.sock = self.dir / "command.socket"
        self.suricata: subprocess.Popen | None = None
        self.connector: subprocess.Popen | None = None

    def start(self) -> None:
        if shutil.which("suricata") is None:
            raise RuntimeError("suricata is not installed (sh ci/install-suricata.sh)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.suricata = self.topo.spawn("sw", [
            "suricata", "-c", str(CONFIG), "-S", str(RULES), "--af-packet=br0", "-l",
            str(self.dir), "-k", "none", "--set", "af-packet.0.interface=br0",
            "--set", "unix-command.enabled=yes", "--set", f"unix-command.filename={self.sock}"],
            log=str(self.dir / "suricata.stdout"))
        deadline = time.time() + 90
        while not self.sock.exists():
            if self.suricata.poll() is not None or time.time() > deadline:
                raise RuntimeError("suricata did not come up: " +
                                   (self.dir / "suricata.stdout").read_text()[-500:])
            time.sleep(0.5)
        time.sleep(3.0)  # AF_PACKET threads start after the socket
        # The connector runs in the host namespace: it only reads files and the unix socket.
        log = open(self.dir / "semiflow-suricata.log", "ab")
        self.connector = subprocess.Popen(
            [*semiflow_cli(), "suricata", "--pcap-dir", str(self.dir), "--eve",
             str(self.dir / "eve.json"), "--follow", "--socket", str(self.sock),
             "--model", str(self.model), "--flag", self.flag, "--ttl", "3600", "--rate", "50",
             "--min-flags", str(self.min_flags), "--flag-window", str(self.flag_window),
             "--join-wait", "20", "--no-state", "--report",
             str(self.dir / "semiflow-report.json"), "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> None:
        # The connector first: on SIGTERM it finishes its open flows and the dataset loop.
        terminate([p for p in (self.connector,) if p is not None], 120)
        terminate([p for p in (self.suricata,) if p is not None], 60)


def _eve(path: Path, event_type: str) -> list[dict]:
    out = []
    if not path.exists():
        return out
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event_type") == event_type:
                out.append(rec)
    return out


def _epoch(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def summarize(out: Path, ledger: list[dict], attackers: set[str]) -> dict:
    """Flagged hosts, alerted hosts and time to first alert per attack phase."""
    d = out / "suricata"
    verdicts = _eve(d / "semiflow.json", "semiflow")
    alerts = [a for a in _eve(d / "eve.json", "alert")
              if a.get("alert", {}).get("signature_id") == SID]
    flagged: dict[str, int] = {}
    for v in verdicts:
        if v["semiflow"]["verdict"] == "anomalous":
            flagged[v["src_ip"]] = flagged.get(v["src_ip"], 0) + 1
    alerted: dict[str, int] = {}
    first_alert: dict[str, float] = {}
    for a in alerts:
        alerted[a["src_ip"]] = alerted.get(a["src_ip"], 0) + 1
        t = _epoch(a["timestamp"])
        first_alert[a["src_ip"]] = min(first_alert.get(a["src_ip"], t), t)
    phases = []
    for e in ledger:
        if "start" not in e:
            phases.append({"phase": e["phase"], "status": e["status"]})
            continue
        hosts = set(e.get("attacker_hosts", [e["attacker"]]))
        times = [_epoch(a["timestamp"]) for a in alerts
                 if a["src_ip"] in hosts and _epoch(a["timestamp"]) >= e["start"]]
        phases.append({"phase": e["phase"], "attacker": e["attacker"],
                       "seconds_to_first_alert": round(min(times) - e["start"], 1)
                       if times else None,
                       "alerts_during_phase": sum(1 for t in times
                                                  if t <= e.get("end", t) + 30)})
    report = {}
    if (d / "semiflow-report.json").exists():
        report = json.loads((d / "semiflow-report.json").read_text())
    return {
        "semiflow_records": len(verdicts),
        "anomalous_verdicts_by_src_host": flagged,
        "attacker_hosts_flagged": sorted(h for h in flagged if h in attackers),
        "benign_hosts_flagged": sorted(h for h in flagged if h not in attackers),
        "suricata_alerts_by_src_host": alerted,
        "attacker_hosts_alerted": sorted(h for h in alerted if h in attackers),
        "benign_hosts_alerted": sorted(h for h in alerted if h not in attackers),
        "phases": phases,
        "connector": report.get("connector", {}), "dataset": report.get("dataset", {}),
    }
