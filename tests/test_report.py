"""`semiflow report` on logs made by `semiflow score` from corpus captures, opened in headless
Chromium (Debian's package, driven over the DevTools protocol): the key elements render, the
in-page feedback file parses as an allow-list, and no request leaves the page.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import free_port

from semiflow.cli import main as cli_main
from semiflow.detector.artifact import save_artifact
from semiflow.detector.models.semiflow import SemiFlowDetector
from semiflow.detector.models.semiflow_model import SemiFlowConfig
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.detector.threshold import Threshold
from semiflow.plugin.allowlist import read_allowlist
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeeklog_writer import ZeekLogWriter
from semiflow.training.extract import extract
from semiflow.training.labels import Manifest

torch.set_num_threads(1)
NORMAL = ["alicloud.pcap", "chrome.pcap", "firefox.pcap", "ookla.pcap", "pluralsight.pcap"]
SCORED = ["WebattackSQLinj.pcap", "emotet.pcap", "xss.pcap", "dazn.pcapng", "chrome.pcap"]
CONN_FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
               ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"),
               ("service", "string"), ("duration", "interval"), ("orig_bytes", "count"),
               ("resp_bytes", "count"), ("conn_state", "string")]
CHROMIUM = "/usr/bin/chromium"


def tiny_model(corpus_dir: Path, tmp: Path, flag_quantile: float = 0.8) -> Path:
    """A small SemiFlow fitted in seconds on a few normal captures; the threshold is set so
    that some of the scored flows are flagged (the report needs something to show)."""
    nd = corpus_dir / "pcaps" / "ndpi"
    spec = FlowSampleSpec()
    extract([str(nd / f) for f in NORMAL], tmp / "normal.flows", spec,
            manifest=Manifest(corpus_dir / "manifest.csv"))
    st = FlowStore.open(tmp / "normal.flows")
    X, _ = st.samples.packet_rows(np.arange(len(st.flows)))
    det = SemiFlowDetector(SemiFlowConfig(epochs=(2, 2, 4), noise_sigma=0.5), device="cpu",
                           random_state=0).fit(X[:600])
    s = det.anomaly_score(X)
    thr = Threshold(float(np.quantile(s, flag_quantile)), 0.2, 0.2, len(s))
    return save_artifact(tmp / "model", det.encoder_, det.classifier_, det.config_, spec,
                         threshold=thr)


def write_conn_log(extract_dir: Path, path: Path) -> None:
    """conn.log rows for the extracted flows (same deterministic uids as `semiflow score`)."""
    f = FlowStore.open(extract_dir).flows
    with ZeekLogWriter(path, "conn", CONN_FIELDS) as w:
        for r in f.itertuples(index=False):
            w.write({"ts": r.ts, "uid": r.uid, "id.orig_h": r.orig_h, "id.orig_p": r.orig_p,
                     "id.resp_h": r.resp_h, "id.resp_p": r.resp_p, "proto": r.proto,
                     "service": "http" if r.resp_p == 80 else None, "duration": r.duration,
                     "orig_bytes": r.orig_bytes, "resp_bytes": r.resp_bytes,
                     "conn_state": r.conn_state})


@pytest.fixture(scope="module")
def report(corpus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    model = tiny_model(corpus_dir, tmp)
    caps = [str(corpus_dir / "pcaps" / "ndpi" / f) for f in SCORED]
    logs = tmp / "logs"
    assert cli_main(["score", *caps, "--model", str(model), "-o", str(logs), "-q"]) == 0
    extract(caps, tmp / "scored.flows", FlowSampleSpec())
    write_conn_log(tmp / "scored.flows", logs / "conn.log")
    # a rotated, gzipped JSON semiflow.log must be read too: score again as JSON, gzip it
    assert cli_main(["score", caps[0], "--model", str(model), "-o", str(tmp / "j"), "--json",
                     "-q"]) == 0
    subprocess.run(["gzip", "-c", str(tmp / "j" / "semiflow.log")],
                   stdout=open(logs / "semiflow.2024-01-01-00-00-00.log.gz", "wb"), check=True)
    with ZeekLogWriter(logs / "semiflow_dyad.log", "semiflow_dyad",
                       [("ts", "time"), ("host_a", "addr"), ("host_b", "addr"),
                        ("n_flows", "count"), ("score", "double"), ("threshold", "double"),
                        ("verdict", "string"), ("top_tokens", "vector[string]"),
                        ("top_uids", "vector[string]")]) as w:
        w.write({"ts": 1.6e9, "host_a": "10.0.0.1", "host_b": "10.0.0.2", "n_flows": 12,
                 "score": 9.5, "threshold": 4.0, "verdict": "anomalous",
                 "top_tokens": ["t12", "t3"], "top_uids": ["Cabc"]})
    # serve's lifecycle logs in the same directory: drift windows (one drifted, one broken
    # line) and shadow agreement, which must not be read as semiflow.log
    (logs / "semiflow_drift.log").write_text("\n".join([
        json.dumps({"ts": 1.6e9, "model_version": "v1", "start": 1.6e9 - 3600, "end": 1.6e9,
                    "flows": 900, "psi": {"score": 0.02, "service": 0.05, "size:393296": 0.01},
                    "threshold": 0.25, "drifted": []}),
        json.dumps({"ts": 1.6e9 + 3600, "model_version": "v1", "start": 1.6e9,
                    "end": 1.6e9 + 3600, "flows": 1200,
                    "psi": {"score": 0.41, "service": 0.9, "size:393296": None},
                    "threshold": 0.25, "drifted": ["service", "score"]}),
        "{not json"]) + "\n")
    (logs / "semiflow_shadow.log").write_text(json.dumps(
        {"ts": 1.6e9, "shadow_version": "v2", "flows": 10, "flagged_served": 1}) + "\n")
    out = tmp / "report.html"
    assert cli_main(["report", str(logs), "-o", str(out), "--model", str(model),
                     "--extract", str(tmp / "scored.flows"), "--explain-top", "3"]) == 0
    return tmp, out


def test_report_content(report):
    tmp, out = report
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "http://" not in page \
        and "https://" not in page          # nothing to fetch
    for ident in ("fig-timeline", "fig-scores", "fig-coverage", "flagged", "fb-build",
                  "top-sources", "heat-", "dyad", "fig-drift"):
        assert f'id="{ident}' in page, ident
    from semiflow.training.report import load_report_data
    d = load_report_data([tmp / "logs"])
    assert len(d.drift) == 2 and list(d.drift["drifted"]) == ["", "service, score"]
    assert d.drift["psi:service"].iloc[1] == 0.9 and d.read.malformed >= 1
    assert "1 window(s) drifted of" in page and "service, score" in page
    assert not any(f.name.startswith("semiflow_shadow") for f in d.files["semiflow"])
    assert len(d.flagged) >= 1
    assert d.files["semiflow"][0].name.endswith(".gz") or len(d.files["semiflow"]) == 2
    for uid in d.flagged["uid"].head(3):
        assert uid in page


# ---- headless Chromium over the DevTools protocol -----------------------------------------
class Page:
    """Minimal CDP client: one page target, commands and the events seen so far."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect
        self._conn = connect(ws_url, max_size=64 << 20, open_timeout=20)
        self.ws = self._conn.__enter__()
        self.n = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        end = time.time() + timeout
        while time.time() < end:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.time())))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        end = time.time() + timeout
        for e in self.events:
            if e.get("method") == name:
                return e
        while time.time() < end:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.time())))
            self.events.append(msg)
            if msg.get("method") == name:
                return msg
        raise TimeoutError(name)

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        print("SKIP reason: Debian's chromium is not installed (ci/install-chromium.sh)")
        pytest.skip("chromium not installed (run ci/install-chromium.sh)")
    prof = tmp_path_factory.mktemp("chromium-profile")
    port = free_port()
    # Any attempt to reach the network fails here by construction (dead proxy, no DNS);
    # the test still records every request the page makes and requires none.
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", f"--user-data-dir={prof}",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*",
         "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                            timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert targets, "chromium DevTools endpoint did not come up"
        page = Page(targets[0]["webSocketDebuggerUrl"])
        yield page
        page.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_report_in_headless_chromium(report, chromium, tmp_path):
    tmp, out = report
    page = chromium
    page.call("Network.enable")
    page.call("Page.enable")
    page.call("Runtime.enable")
    page.call("Page.navigate", url=out.resolve().as_uri())
    page.wait_event("Page.loadEventFired", timeout=60)
    # key elements render: figures decoded (naturalWidth > 0), table rows, explanations
    imgs = page.js("Array.from(document.images).map(i => [i.id, i.naturalWidth])")
    ids = {i for i, w in imgs if w > 0}
    assert {"fig-timeline", "fig-scores", "fig-coverage", "top-sources"} <= ids, imgs
    assert any(i.startswith("heat-") for i in ids), imgs
    n_rows = page.js("document.querySelectorAll('#flagged tbody tr').length")
    assert n_rows >= 1
    # sorting by score (descending after two clicks) and filtering work
    page.js("var th=[...document.querySelectorAll('#flagged th')].find(t=>t.textContent"
            "==='score'); th.click(); th.click(); 0")
    scores = page.js("[...document.querySelectorAll('#flagged tbody tr')].map(r => "
                     "parseFloat(r.cells[[...document.querySelectorAll('#flagged th')]"
                     ".findIndex(t=>t.textContent.startsWith('score'))].dataset.v))")
    assert scores == sorted(scores, reverse=True)
    uid = page.js("document.querySelector('#flagged tbody tr').dataset.uid")
    page.js(f"var f=document.getElementById('flow-filter'); f.value='{uid}';"
            "f.dispatchEvent(new Event('input')); 0")
    shown = page.js("[...document.querySelectorAll('#flagged tbody tr')]"
                    ".filter(r => r.style.display !== 'none').length")
    assert shown == 1
    # feedback: mark the flow benign in the page -> allow-list lines the reader parses
    page.js("var s=document.querySelector('#flagged tbody tr select.mark'); s.value='flow';"
            "s.dispatchEvent(new Event('change'));"
            "var r=document.querySelectorAll('#flagged tbody tr select.mark');"
            "if(r.length>1){r[1].value='service'; r[1].dispatchEvent(new Event('change'));}"
            "document.getElementById('fb-reason').value='lab scanner';"
            "document.getElementById('fb-reason').dispatchEvent(new Event('change')); 0")
    text = page.js("document.getElementById('fb-text').value")
    href = page.js("document.getElementById('fb-link').href")
    assert href.startswith("data:text/tab-separated-values")
    fb = tmp_path / "feedback.tsv"
    fb.write_text(text)
    rules = read_allowlist(fb)
    assert any(r.uid == uid and r.reason == "lab scanner" and r.orig_h and r.ts for r in rules)
    assert len(rules) == min(2, n_rows)
    # screenshot for people to look at
    page.js("document.getElementById('flow-filter').value='';"
            "document.getElementById('flow-filter').dispatchEvent(new Event('input')); 0")
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = tmp_path / "report-screenshot.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    print(f"report screenshot: {png}")
    assert png.stat().st_size > 10_000
    # no request left the page: every request is the file itself or data: URLs
    reqs = [e["params"]["request"]["url"] for e in page.events
            if e.get("method") == "Network.requestWillBeSent"]
    assert reqs, "network events were not recorded"
    outside = [u for u in reqs if not u.startswith(("file:", "data:"))]
    assert not outside, outside
    failed = [e for e in page.events if e.get("method") == "Network.loadingFailed"]
    assert not failed, failed


def test_report_cli_errors(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2


def test_chromium_installer_is_idempotent():
    script = Path(__file__).resolve().parent.parent / "ci" / "install-chromium.sh"
    assert script.exists()
    if not Path(CHROMIUM).exists() or not shutil.which("bash"):
        pytest.skip("chromium absent: the installer would install it")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already installed" in r.stdout
