"""`semiflow serve --workers N`: N decode processes feeding this process's model.

This process owns the model (and the GPU) and runs a ScorerServer on a private ipc://
socket; each worker is `semiflow serve --scorer-addr ADDR --shard ...` (the ordinary
single-process service with a RemoteScorer), holding its own WebSocket to Zeek for its
share of the request shards. Workers that die are restarted; SIGTERM/SIGINT stop the
workers first (they finish their in-flight batches, which this process still scores).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from semiflow.detector.serving.core import warm_up
from semiflow.detector.serving.zmq_scorer import ScorerServer

log = logging.getLogger("semiflow.serve")


def zeek_urls(zeek: str) -> list[str]:
    """`--zeek URL[,URL...]` -> the URLs (worker i connects to URL i % n)."""
    urls = [u.strip() for u in zeek.split(",") if u.strip()]
    if not urls:
        raise ValueError("--zeek needs at least one ws[s]://HOST:PORT")
    return urls

_FORWARD = ("model", "topic_prefix", "max_batch", "max_wait_ms", "queue", "tls_ca",
            "tls_cert", "tls_key", "threads", "allowlist", "sample_store", "sample_store_gb")


def worker_command(args: argparse.Namespace, addr: str, shard: str, i: int) -> list[str]:
    urls = zeek_urls(args.zeek)
    cmd = [sys.executable, "-m", "semiflow", "serve", "--scorer-addr", addr, "--shard", shard,
           "--app-name", f"{args.app_name}-w{i}", "--zeek", urls[i % len(urls)]]
    for name in _FORWARD:
        v = getattr(args, name, None)
        if v is not None:
            cmd += ["--" + name.replace("_", "-"), str(v)]
    if args.tls_no_verify:
        cmd.append("--tls-no-verify")
    if args.metrics_port is not None:
        cmd += ["--metrics-port", str(args.metrics_port + i)]
    return cmd


def run_pool(args: argparse.Namespace, scorer, shards: list[str],
             drain_timeout: float = 30.0, lifecycle=None) -> int:
    """lifecycle (semiflow/serve_lifecycle.py): its slot is `scorer`; it follows the model
    store here, where the model lives (SIGHUP checks at once); drift goes to its log only,
    since this process holds no connection to Zeek."""
    warm_up(scorer)  # the workers' RemoteScorers do not warm it
    tmp = tempfile.mkdtemp(prefix="semiflow-serve-")
    server = ScorerServer(scorer, f"ipc://{tmp}/scorer", max_flows=max(4 * args.max_batch,
                                                                       4096))
    stopping = False

    def on_signal(*_):
        nonlocal stopping
        stopping = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if lifecycle is not None:
        signal.signal(signal.SIGHUP, lambda *_: lifecycle.wake())
        lifecycle.start()

    def spawn(i: int) -> subprocess.Popen:
        log.info("worker %d: shard %s", i, shards[i])
        return subprocess.Popen(worker_command(args, server.addr, shards[i], i))

    failed = False
    from semiflow.cli_serve import freeze_startup_objects
    freeze_startup_objects()
    procs = [spawn(i) for i in range(len(shards))]
    started = [time.monotonic()] * len(procs)
    log.info("model %s %s (K=%d L=%d) scoring for %d decode workers on %s",
             scorer.model_name, scorer.model_version, scorer.spec.k, scorer.spec.l,
             len(procs), server.addr)
    try:
        while not stopping:
            server.serve_once(0.1)
            for i, p in enumerate(procs):
                if p.poll() == 2 and not stopping:
                    # 2: the worker stopped on an error it printed in one line (a TLS
                    # certificate, a bad file); restarting it would repeat that forever
                    log.error("worker %d stopped on an error (above): stopping", i)
                    stopping, failed = True, True
                    break
                if p.poll() is not None and not stopping:
                    # Back off a worker that dies at once (bad URL, TLS files...).
                    if time.monotonic() - started[i] < 5.0:
                        time.sleep(1.0)
                    log.warning("worker %d exited with %s: restarting", i, p.returncode)
                    procs[i] = spawn(i)
                    started[i] = time.monotonic()
        log.info("stopping %d workers (they finish their in-flight batches)", len(procs))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + drain_timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < end:
            server.serve_once(0.05)
        for p in procs:
            if p.poll() is None:
                log.warning("worker pid %d did not stop in time: killing it", p.pid)
                p.kill()
                p.wait(5)
    finally:
        if lifecycle is not None:
            lifecycle.close()
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("stopped: scored %d flows in %d merged batches (%.1fs building and scoring)",
             server.flows, server.batches, server.busy_s)
    return 2 if failed else 0
