"""Runs one lab scenario and writes its capture, labels, attack ledger, versions and seed.

    python -m lab.run --scenario test-mixed --seed 2 --minutes 15 --clients 6 -o lab-out/test-mixed

(run from benchmarks/, as root). Scenarios: train-benign (benign only), test-mixed (benign +
every attack phase), ci (small: curl + dig benign, nmap + hydra attacks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import attacks, services
from .benign import ACTIONS, BenignTraffic
from .label import label_capture
from .suricata_live import SuricataLive, summarize
from .topology import Topology

SCENARIOS = ("train-benign", "test-mixed", "ci", "sample")
CI_PHASES = ["nmap_syn_scan", "ssh_bruteforce"]
# The sample shipped with the package (demo, end-to-end test): small versions of several
# families and light benign traffic (no large downloads), a capture of about 2 MB.
SAMPLE_PHASES = ["nmap_syn_scan", "ssh_bruteforce", "sql_injection", "dir_bruteforce",
                 "dns_tunnel", "icmp_tunnel", "http_exfiltration", "syn_flood"]
LIGHT_ACTIONS = ["browse", "app", "dns", "ssh", "mqtt", "snmp", "ntp", "redis", "mail"]
CI_ACTIONS = ["browse", "dns"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_mix(text: str) -> dict[str, float]:
    """'dns=0,redis=30' -> {'dns': 0.0, 'redis': 30.0}; unknown actions are an error."""
    out = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        if name not in ACTIONS or not w:
            raise ValueError(f"{part!r}: want ACTION=WEIGHT with ACTION one of "
                             f"{', '.join(ACTIONS)}")
        out[name] = float(w)
    return out


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(scenario: str, out: Path, seed: int, minutes: float, clients: int,
        phases: list[str] | None = None, suricata_model: Path | None = None,
        min_flags: int = 1, flag_window: float = 300.0, log=print,
        mix: dict[str, float] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sflab-"))
    work.chmod(0o755)
    topo = Topology(services.hosts(clients))
    created_user = False
    ledger: list[dict] = []
    t0 = time.time()
    info: dict = {"scenario": scenario, "seed": seed, "minutes": minutes, "clients": clients,
                  "namespace_prefix": topo.prefix, "mix": mix or {}}
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with topo:
            created_user = services.ensure_user()
            status = services.Services(topo, work, seed).start()
            info["services"] = status
            down = [k for k, v in status.items() if not v]
            log(f"lab: {len(topo.hosts)} namespaces up; services down: {down or 'none'}")
            pcap = out / "capture.pcap"
            cap = topo.spawn("sw", ["tcpdump", "-i", "br0", "-s", "0", "-U", "-n", "-w",
                                    str(pcap)], log=str(work / "logs" / "tcpdump.log"))
            time.sleep(1.5)
            live = None
            if suricata_model is not None:
                live = SuricataLive(topo, out, suricata_model, min_flags=min_flags,
                                    flag_window=flag_window)
                info["suricata_gate"] = {"min_flags": min_flags, "flag_window": flag_window}
                live.start()
                log("lab: suricata on br0 with semiflow suricata --follow")
            client_names = [h for h, v in topo.hosts.items() if v.role == "client"
                            and h != "chatty"]
            small = scenario in ("ci", "sample")
            chatty = None if small else "chatty"
            actions = {"ci": CI_ACTIONS, "sample": LIGHT_ACTIONS}.get(scenario)
            benign = BenignTraffic(topo, client_names, work, seed, rate=0.5 if small else 1.0,
                                   chatty=chatty, actions=actions, weights=mix)
            benign.start()
            total = minutes * 60
            if scenario == "train-benign":
                benign.wait(total)
            else:
                default = {"ci": CI_PHASES, "sample": SAMPLE_PHASES}.get(scenario)
                catalog = attacks.phases(work, small=small)
                todo = phases or default or list(catalog)
                rng = random.Random(seed)
                # The sample opens with a benign-only stretch: its end-to-end test trains there.
                warm = total * 0.5 if scenario == "sample" else min(20.0, total * 0.15)
                benign.wait(warm)
                for name in todo:
                    log(f"lab: attack phase {name}")
                    entry = attacks.run_phase(topo, catalog[name], work / "logs")
                    ledger.append(entry)
                    log(f"lab:   {entry['status']}" + (f" ({entry['reason']})"
                                                       if "reason" in entry else ""))
                    benign.wait(rng.uniform(5, 15) if small else rng.uniform(15, 40))
                left = total - (time.time() - t0)
                if left > 0:
                    benign.wait(left)
            benign.stop()
            info["benign_actions"] = dict(benign.counts)
            info["benign_failures"] = dict(benign.failures)
            time.sleep(2.0)
            if live is not None:
                time.sleep(25.0)  # let the connector's join wait and the dataset loop settle
                live.stop()
            if cap.poll() is None:
                os.kill(cap.pid, signal.SIGINT)   # tcpdump flushes and closes the file
            cap.wait(timeout=10)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if created_user:
            services.remove_user()
    info["duration_s"] = round(time.time() - t0, 1)
    attackers = services.ATTACKER_IPS
    counts = label_capture(out / "capture.pcap", ledger, attackers, out / "labels.conn.log")
    info["flows"] = {f"{lab}/{fam}": n for (lab, fam), n in sorted(counts.items())}
    info["capture_sha256"] = _sha256(out / "capture.pcap")
    info["capture_bytes"] = (out / "capture.pcap").stat().st_size
    if suricata_model is not None:
        info["suricata"] = summarize(out, ledger, attackers)
    (out / "ledger.json").write_text(json.dumps(ledger, indent=1))
    (out / "versions.json").write_text(json.dumps(services.tool_versions(), indent=1))
    (out / "run.json").write_text(json.dumps(info, indent=1))
    # Server and tool logs travel with the run (small), the work dir does not.
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for f in (work / "logs").glob("*.log"):
        (logs / f.name).write_bytes(f.read_bytes()[-200_000:])
    shutil.rmtree(work, ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=SCENARIOS, required=True)
    ap.add_argument("-o", "--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--suricata-model", type=Path, default=None, metavar="MODEL_DIR",
                    help="also run Suricata 7 on the bridge with `semiflow suricata --follow` "
                         "and the dataset closed loop, scoring with this model")
    ap.add_argument("--min-flags", type=int, default=1,
                    help="with --suricata-model: semiflow suricata --min-flags (default 1)")
    ap.add_argument("--flag-window", type=float, default=300.0,
                    help="with --suricata-model: semiflow suricata --flag-window (default 300)")
    ap.add_argument("--mix", default=None, metavar="ACTION=WEIGHT,...",
                    help="change the benign mix (e.g. dns=0,redis=30: no DNS clients, triple "
                         "redis); actions: " + ",".join(ACTIONS))
    ap.add_argument("--phases", default=None,
                    help="comma-separated attack phases (default: every family)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: must run as root (network namespaces)", file=sys.stderr)
        return 2
    phases = args.phases.split(",") if args.phases else None
    try:
        mix = parse_mix(args.mix) if args.mix else None
    except ValueError as e:
        print(f"lab: --mix: {e}", file=sys.stderr)
        return 2
    try:
        info = run(args.scenario, args.out, args.seed, args.minutes, args.clients, phases,
                   args.suricata_model, args.min_flags, args.flag_window, mix=mix)
    except KeyboardInterrupt as e:
        print(f"lab: interrupted ({e}); namespaces torn down", file=sys.stderr)
        return 130
    keys = ("scenario", "seed", "duration_s", "flows", "capture_sha256", "suricata")
    print(json.dumps({k: info[k] for k in keys if k in info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
