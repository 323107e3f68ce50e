"""Shared pieces of the Suricata tests and benchmark: running Suricata, a small model, netns."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "suricata" / "semiflow.yaml"
RULES = ROOT / "suricata" / "semiflow.rules"

TRAIN = ["ndpi/1kxun.pcap", "ndpi/android.pcap", "ndpi/alicloud.pcap", "ndpi/dropbox.pcap",
         "ndpi/chrome.pcap", "ndpi/firefox.pcap", "ndpi/443-curl.pcap", "ndpi/443-firefox.pcap",
         "ndpi/netflix.pcap", "ndpi/reddit.pcap"]


def train_small_model(corpus_dir: Path, out: Path, k: int = 4, l: int = 256) -> Path:
    """A real SemiFlow fitted on a few benign captures (seconds on one core)."""
    import torch

    from semiflow.detector.artifact import save_artifact
    from semiflow.detector.models.semiflow import SemiFlowDetector
    from semiflow.detector.models.semiflow_model import SemiFlowConfig
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.detector.threshold import Threshold
    from semiflow.plugin import flowscan as fs
    from semiflow.plugin.capture import FlowTable, ScanReport, scan_capture

    torch.set_num_threads(1)
    spec = FlowSampleSpec(k=k, l=l, selection="payload")   # a packet-level model
    rows = []
    for rel in TRAIN:
        for b in scan_capture(corpus_dir / "pcaps" / rel, FlowTable(spec), ScanReport()):
            d, n = b.data, b.ints[:, fs.I_NSEL]
            rows += [d[i, :n[i]] for i in range(len(d))]
    X = np.concatenate(rows)
    cfg = SemiFlowConfig(length=l, enc_channels=(8, 16), latent_channels=8, dec_channels=(16, 8),
                         cls_channels=16, cls_hidden=(32,), flow_hidden=32, flow_blocks=2,
                         epochs=(3, 3, 3))
    det = SemiFlowDetector(cfg, device="cpu", amp="off", random_state=0).fit(X)
    s = det.anomaly_score(X)
    thr = Threshold(float(np.quantile(s, 0.99)), 0.01, 0.01, len(s))
    save_artifact(out, det.encoder_, det.classifier_, det.config_, spec, threshold=thr,
                  model_name="semiflow-test", model_version="t1")
    return out


def suricata_read(pcap: Path, out: Path, *extra: str) -> None:
    """suricata -r as docs/suricata.md says to run it offline: --runmode single, so that
    pcap-log is in capture order (later `extra` options win)."""
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["suricata", "-c", str(CONFIG), "-S", str(RULES), "-r", str(pcap),
                          "-l", str(out), "-k", "none", "--runmode", "single", *extra],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def eve_records(path: Path, event_type: str | None = None) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if event_type is None or r.get("event_type") == event_type:
            out.append(r)
    return out


def alerts(path: Path) -> list[dict]:
    return eve_records(path, "alert")


def samples_by_cid(batches) -> dict[str, tuple[int, np.ndarray]]:
    from semiflow.plugin.community_id import CommunityIds
    from semiflow.plugin.flowstore import batch_to_frame
    ids = CommunityIds()
    out: dict = {}
    for b in batches:
        f = batch_to_frame(b, "x")
        d = b.data
        for i, c in enumerate(ids.for_flows(f)):
            out.setdefault(c, (int(f["n_selected"].iloc[i]), d[i]))
    return out


def scores_by_cid(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in eve_records(path, "semiflow"):
        s = r["semiflow"]["score"]
        out.setdefault(r["community_id"], []).append(np.nan if s is None else s)
    return {k: sorted(v) for k, v in out.items()}


_SCORERS: dict = {}


def connector(model: Path, pcap_dir: Path, out: Path, state: Path | None, eve: Path | None = None,
              feeder=None, threshold: float | None = None, clock=time.time):
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.suricata_connector import SuricataConnector
    if str(model) not in _SCORERS:
        _SCORERS[str(model)] = load_scorer(model, device="cpu")
    return SuricataConnector(_SCORERS[str(model)], pcap_dir, eve or pcap_dir / "eve.json", out,
                             state_path=state, feeder=feeder, threshold=threshold, clock=clock,
                             checkpoint_every=0.0)


def next_record_boundary(data: bytes, pos: int) -> int:
    """The first classic-pcap record boundary at or after pos."""
    swap = data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    fmt = ">I" if swap else "<I"
    p = 24
    while p < pos:
        p += 16 + struct.unpack(fmt, data[p + 8:p + 12])[0]
    return p


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_for(pred, timeout: float, every: float = 0.2) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


class SuricataUnixSocket:
    """Suricata in unix-socket mode (pcap files fed with the pcap-file command)."""

    def __init__(self, sock: Path, logdir: Path):
        self.sock, self.logdir = sock, logdir

    def __enter__(self):
        from semiflow.plugin.suricata_socket import SuricataSocket
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["suricata", "-c", str(CONFIG), "-S", str(RULES), f"--unix-socket={self.sock}",
             "-l", str(self.logdir), "-k", "none"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = SuricataSocket(str(self.sock), timeout=30)
        assert wait_for(self._connect, 60), "suricata unix socket did not come up"
        return self

    def _connect(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"suricata exited: {self.proc.returncode}")
        try:
            self.client.connect()
            return True
        except OSError:
            return False

    def pcap_file(self, pcap: Path, outdir: Path) -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        r = self.client.command("pcap-file", {"filename": str(pcap), "output-dir": str(outdir)})
        assert r["return"] == "OK", r

        def idle():
            n = self.client.command("pcap-file-number")["message"]
            cur = self.client.command("pcap-current")["message"]
            return n == 0 and cur == "None"
        assert wait_for(idle, 120), "pcap-file did not finish"
        assert wait_for(lambda: bool(eve_records(outdir / "eve.json", "flow")), 30)

    def lookup(self, host: str) -> bool:
        r = self.client.command("dataset-lookup", {"setname": "semiflow-flagged",
                                                   "settype": "ip", "datavalue": host})
        return r["return"] == "OK"

    def __exit__(self, *exc):
        try:
            self.client.command("shutdown")
        except OSError:
            pass
        self.client.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- network namespaces ------------------------------------------------------------------------
def netns_unavailable() -> str | None:
    """Why a live namespace test cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "not root: cannot create network namespaces"
    name = f"sfprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class NetnsPair:
    """Two namespaces joined by a veth pair; traffic stays between them."""

    def __init__(self, prefix: str, port: int = 8080):
        tag = f"{prefix}{os.getpid() % 10000}"
        self.client_ns, self.server_ns = f"{tag}c", f"{tag}s"
        self.client_if, self.server_if = f"{tag}c0", f"{tag}s0"
        self.client_ip, self.server_ip = "10.231.7.1", "10.231.7.2"
        self.port = port
        self._procs: list[subprocess.Popen] = []

    def _ip(self, *args: str, ns: str | None = None) -> None:
        cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def __enter__(self):
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        self._ip("link", "add", self.client_if, "netns", self.client_ns, "type", "veth",
                 "peer", "name", self.server_if, "netns", self.server_ns)
        for ns, ifc, ip in ((self.client_ns, self.client_if, self.client_ip),
                            (self.server_ns, self.server_if, self.server_ip)):
            self._ip("addr", "add", f"{ip}/24", "dev", ifc, ns=ns)
            self._ip("link", "set", ifc, "up", ns=ns)
            self._ip("link", "set", "lo", "up", ns=ns)
        return self

    def start_suricata(self, logdir: Path) -> subprocess.Popen:
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, "suricata", "-c", str(CONFIG), "-S",
             str(RULES), f"--af-packet={self.server_if}", "-l", str(logdir), "-k", "none",
             "--set", f"af-packet.0.interface={self.server_if}",
             "--set", "unix-command.enabled=no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(p)
        return p

    def http_traffic(self, requests: int) -> int:
        srv = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, sys.executable, "-m", "http.server",
             "--bind", self.server_ip, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(srv)
        code = (f"import urllib.request,time\nok=0\n"
                f"for i in range({requests}):\n"
                f"  for t in range(50):\n"
                f"    try:\n"
                f"      urllib.request.urlopen('http://{self.server_ip}:{self.port}/?q='+str(i),"
                f" timeout=5).read(); ok+=1; break\n"
                f"    except OSError: time.sleep(0.2)\n"
                f"print(ok)\n")
        r = subprocess.run(["ip", "netns", "exec", self.client_ns, sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip() or 0)

    def stop_suricata(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __exit__(self, *exc):
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def suricata_started(logdir: Path) -> bool:
    p = logdir / "suricata.log"
    return p.exists() and "started" in p.read_text().lower()


def live_records(out: Path, server_ip: str) -> list[dict]:
    try:
        return [r for r in eve_records(out, "semiflow") if r["dest_ip"] == server_ip]
    except (json.JSONDecodeError, OSError):
        return []
