"""`semiflow serve --zeek ws://127.0.0.1:27759 --model DIR`: the live detector for Zeek.

Wiring only: plugin.zeek_ws keeps the WebSocket to Zeek, plugin.zeek_wire decodes requests,
detector.serving.core batches and scores them off the event loop, plugin.metrics exposes counters.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import signal
import sys
import time

from semiflow.cli import UsageError
from semiflow.detector.serving.core import STATUS_SHED, FlowResult, MicroBatcher, Scorer
from semiflow.detector.serving.requests import RequestBatch
from semiflow.detector.serving.stats import ServingStats
from semiflow.plugin import zeek_wire as zw
from semiflow.plugin.zeek_batch import (
    BatchReply,
    batch_head,
    is_batch,
    verdict_batch_columns_text,
)
from semiflow.plugin.zeek_decode import (
    decode_flow_requests,
    head_of,
    verdict_text,
    warm_up_messages,
)
from semiflow.serve_lifecycle import add_arguments as add_lifecycle_arguments

log = logging.getLogger("semiflow.serve")


def decode_requests(raws: list) -> RequestBatch:
    """A micro-batch of raw texts from Zeek -> RequestBatch (errors carry the uid if known)."""
    return decode_flow_requests(raws)


def model_of(results: list[FlowResult], scorer):
    """The model that scored these results (one micro-batch's), else the scorer's current
    one: after a hot swap the two differ until the batch's verdicts are out."""
    for r in results:
        if r.model is not None:
            return r.model
    return scorer


BATCH_FLOWS_MAX = 64  # zeek_scripts/main.zeek SemiFlow::batch_size's default


class ServeApp:
    """One detector process: client + batcher + (optional) metrics."""

    def __init__(self, scorer: Scorer, url: str, topics: list[str], max_batch: int = 256,
                 max_wait: float = 0.005, queue_size: int = 8192, ssl_context=None,
                 metrics_port: int | None = None, app_name: str = "semiflow",
                 allow=None, extra_metrics=None, observe=None):
        from semiflow.plugin.zeek_ws import ZeekClient, max_message_size

        self.scorer = scorer
        self.last_topic: str | None = None  # where unsolicited events (model_drift) go
        self.stats = ServingStats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client = ZeekClient(url, topics, self._on_message, ssl_context=ssl_context,
                                 # a flow_batch holds up to SemiFlow::batch_size (64) flows
                                 app_name=app_name,
                                 max_size=max_message_size(scorer.spec.k, BATCH_FLOWS_MAX))
        self.batcher = MicroBatcher(scorer, decode_requests, self._on_results,
                                    max_batch=max_batch, max_wait=max_wait,
                                    queue_size=queue_size, stats=self.stats, allow=allow,
                                    observe=observe, warm_input=warm_up_messages(
                                        scorer.spec.k, scorer.spec.l + 64))
        self.loop_lag_max = 0.0  # seconds: the event loop's worst delay, see _watch_loop
        self.metrics = None
        if metrics_port is not None:
            from semiflow.plugin.metrics import MetricsServer, render
            self.metrics = MetricsServer(metrics_port, lambda: render(
                self.stats, self.batcher.queue_depth,
                {"semiflow_zeek_connected": float(self.client.connected.is_set()),
                 "semiflow_zeek_connects_total": float(self.client.connects),
                 "semiflow_verdicts_dropped_total": float(self.client.dropped),
                 "semiflow_zeek_binary_frames_ignored_total":
                     float(self.client.binary_ignored),
                 "semiflow_event_loop_lag_max_seconds": self.loop_lag_max,
                 **(extra_metrics() if extra_metrics else {})}))

    def _verdict(self, r: FlowResult) -> zw.Verdict:
        m = model_of([r], self.scorer)
        return zw.Verdict(r.key, r.status, r.score, m.threshold, r.anomalous,
                          r.packets, m.model_name, m.model_version, r.detail)

    def _texts(self, results: list[FlowResult]) -> list[str]:
        """Verdict messages: one verdict per flow_request, one verdict_batch per reply
        topic for the flows that came in flow_batch events."""
        texts = []
        batched: dict[str, list[FlowResult]] = {}
        for r in results:
            if isinstance(r.reply, BatchReply):
                batched.setdefault(r.reply.topic, []).append(r)
            elif r.reply:
                texts.append(verdict_text(r.reply, self._verdict(r)))
                self.last_topic = r.reply.topic if hasattr(r.reply, "topic") else r.reply
        sc = self.scorer
        if batched:
            self.last_topic = next(reversed(batched))
        for t, rs in batched.items():  # columns straight from the results: no per-flow objects
            m = model_of(rs, sc)
            texts.append(verdict_batch_columns_text(
                t, [r.key for r in rs], [r.status for r in rs], [r.score for r in rs],
                m.threshold, [r.anomalous for r in rs], [r.packets for r in rs],
                m.model_name, m.model_version, [r.detail for r in rs]))
        return texts

    def _on_message(self, raw: str) -> None:
        """On the event loop: enqueue (weighted by the flows a batch names), or answer
        'shed' at once."""
        head = batch_head(raw) if is_batch(raw) else None
        if self.batcher.submit(raw, len(head[1]) if head else 1):
            return
        if head is not None:
            shed = [FlowResult(u, BatchReply(head[0]), STATUS_SHED, detail="detector queue full")
                    for u in head[1]]
        else:
            one = head_of(raw)
            if one is None:
                return  # not a flow request (or unreadable): nothing to answer
            shed = [FlowResult(one[0], one[1], STATUS_SHED, detail="detector queue full")]
        for t in self._texts(shed):
            self.client.publish(t)

    def _on_results(self, results: list[FlowResult]) -> None:
        """On the worker thread: encode here, hand the texts to the loop."""
        texts = self._texts(results)
        if texts and self.loop is not None:
            self.loop.call_soon_threadsafe(self._publish_many, texts)

    def publish_event(self, args: dict) -> None:
        """From any thread: SemiFlow::model_drift to the topic verdicts last went to."""
        if self.last_topic is None or self.loop is None:
            log.warning("model drift (%s) not sent to Zeek: no reply topic seen yet",
                        args.get("signal"))
            return
        text = json.dumps(zw.event_message(self.last_topic, zw.MODEL_DRIFT,
                                           [args[n] for n, _ in zw.EVENTS[zw.MODEL_DRIFT]]))
        self.loop.call_soon_threadsafe(self._publish_many, [text])

    def _publish_many(self, texts: list[str]) -> None:
        for t in texts:
            self.client.publish(t)

    async def _watch_loop(self, period: float = 0.05) -> None:
        """The loop's lag (a sleep's overshoot): Zeek drops a client that does not answer
        its pings (ping_interval 5 s), and the pings are answered on this loop."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(period)
            self.loop_lag_max = max(self.loop_lag_max, loop.time() - t - period)

    async def run(self, stop: asyncio.Event, drain_timeout: float = 20.0) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.create_task(self.client.run())
        watch = asyncio.create_task(self._watch_loop())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        watch.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            # the client gave up (a TLS certificate problem): stop, saying why
            self.batcher.close(1.0)
            if self.metrics is not None:
                self.metrics.close()
            raise task.exception()
        log.info("stopping: finishing queued and in-flight batches")
        await asyncio.to_thread(self.batcher.close, drain_timeout)
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks run
        if self.client.connected.is_set():
            await self.client.flush(5.0)
        self.client.stop()
        try:
            await asyncio.wait_for(task, 5.0)
        except asyncio.TimeoutError:
            task.cancel()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped: %d received, %d scored, %d shed, errors %s; event loop lag at "
                 "most %.1f ms", self.stats.received, self.stats.scored, self.stats.shed,
                 self.stats.errors, self.loop_lag_max * 1000)


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (torch, numba, the model: ~260,000 tracked
    objects) out of the garbage collector's reach. Otherwise each full collection, which
    the JSON parsing's churn triggers every few seconds under load, walks them all: a
    132 ms pause of the event loop that answers Zeek's pings (measured on the 2-core box;
    0.3 ms after the freeze)."""
    gc.collect()
    gc.freeze()


def parse_shards(shard: str) -> tuple[list[int], int]:
    """'I/N', 'I,J/N' or 'I-J/N' (mixable: '0-3,6/8') -> (sorted shard indices, N)."""
    m = re.fullmatch(r"([\d,\-]+)/(\d+)", shard or "")
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"--shard must be I/N, I,J/N or I-J/N, got {shard!r}")
    n = int(m.group(2))
    out: set[int] = set()
    for part in m.group(1).split(","):
        r = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not r:
            raise ValueError(f"--shard: bad shard list {m.group(1)!r}")
        out.update(range(int(r.group(1)), int(r.group(2) or r.group(1)) + 1))
    if not out or max(out) >= n:
        raise ValueError(f"--shard: shards must lie in 0..{n - 1}, got {shard!r}")
    return sorted(out), n


def worker_shards(shard: str | None, workers: int) -> list[str | None]:
    """The --shard each decode process serves: this host's shards dealt round-robin.
    Without --shard, N workers serve shards 0..N-1 of N (SemiFlow::shards = N)."""
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    if not shard:
        if workers == 1:
            return [None]
        ids, n = list(range(workers)), workers
    else:
        ids, n = parse_shards(shard)
    if len(ids) < workers:
        raise ValueError(f"--workers {workers} needs at least {workers} shards; --shard "
                         f"{shard or '(none)'} gives {len(ids)} (set SemiFlow::shards)")
    return [",".join(map(str, ids[w::workers])) + f"/{n}" for w in range(workers)]


def topics_for(prefix: str, shard: str | None) -> list[str]:
    """Topic prefixes to subscribe to: the whole request topic, or one per shard."""
    if not prefix.endswith("/"):
        prefix += "/"
    if not shard:
        return [prefix]
    return [f"{prefix}{i}/" for i in parse_shards(shard)[0]]


async def _watch_parent(stop: asyncio.Event) -> None:
    """A decode worker stops when the scorer process that started it is gone."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("scorer process exited: stopping")
            stop.set()


def register(sub) -> None:
    p = sub.add_parser("serve", help="live detector: score Zeek's flow requests",
                       description="Connect to Zeek's WebSocket API, score every flow the "
                                   "semiflow Zeek package publishes, send verdicts back.")
    p.add_argument("--zeek", default="ws://127.0.0.1:27759",
                   help="Zeek WebSocket endpoint, ws[s]://HOST:PORT (default %(default)s); "
                        "with --workers W, several comma-separated endpoints (Zeek nodes "
                        "listening on the same cluster backend) spread the workers' "
                        "connections: worker i connects to endpoint i %% n")
    p.add_argument("--model", help="model artifact directory (or --models STORE)")
    p.add_argument("--topic-prefix", default=zw.DEFAULT_REQUEST_TOPIC,
                   help="request topic prefix (SemiFlow::request_topic; default %(default)s)")
    p.add_argument("--shard", metavar="I/N",
                   help="serve only these shards of N (SemiFlow::shards=N): I/N, I,J/N, I-J/N")
    p.add_argument("--workers", type=int, default=1,
                   help="decode processes feeding this process's model (1); each takes "
                        "its share of the shards (without --shard: SemiFlow::shards = N)")
    p.add_argument("--max-batch", type=int, default=256, help="flows per batch (256)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="max wait to fill a batch, ms (5)")
    p.add_argument("--queue", type=int, default=8192,
                   help="max queued requests before shedding (8192)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    from semiflow.cli_score import add_gpu_arguments
    add_gpu_arguments(p)
    p.add_argument("--tls-ca", help="CA file to verify Zeek's certificate (wss)")
    p.add_argument("--tls-cert", help="client certificate (Zeek enable_peer_verification)")
    p.add_argument("--tls-key", help="client key")
    p.add_argument("--tls-no-verify", action="store_true",
                   help="do not verify Zeek's certificate (testing only)")
    p.add_argument("--app-name", default="semiflow", help="X-Application-Name header")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--allowlist", metavar="FILE",
                   help="analysts' allow-list (semiflow feedback); re-read when it changes. "
                        "Zeek applies the same file at the sensor; this covers the gap")
    add_lifecycle_arguments(p)
    p.add_argument("--sample-store", metavar="DIR",
                   help="keep the scored flows as rolling extraction shards in DIR, the "
                        "input of the next `semiflow train` (flagged flows labelled anomalous)")
    p.add_argument("--sample-store-gb", type=float, default=1.0,
                   help="bound on DIR's size; the oldest shards go first (1)")
    p.add_argument("--scorer-addr", help=argparse.SUPPRESS)  # decode-worker mode
    p.set_defaults(func=run)


def _port(p: str) -> int:
    try:
        return zw.port_number(p) if p else -1
    except zw.WireError:
        return -1


def _allow_hook(path: str | None):
    """allow(batch) -> bool[m] from the allow-list file, re-read when its mtime changes."""
    if not path:
        return None
    import numpy as np
    import pandas as pd

    from semiflow.plugin.allowlist import allowlisted, read_allowlist

    state = {"mtime": None, "rules": []}
    if os.path.exists(path):
        read_allowlist(path)  # refuse a bad (e.g. world-writable) file at start, in one line

    def allow(batch: RequestBatch):
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None  # removed: no rules until it is back
        if mtime != state["mtime"]:
            state["rules"] = read_allowlist(path) if mtime is not None else []
            state["mtime"] = mtime
            log.info("allow-list %s: %d rule(s)", path, len(state["rules"]))
        if not state["rules"]:
            return np.zeros(len(batch.keys), bool)
        ids = [i or ("", "", "", "") for i in batch.ids] or [("", "", "", "")] * len(batch.keys)
        flows = pd.DataFrame({
            "uid": batch.keys, "id.orig_h": [i[0] for i in ids],
            "id.resp_h": [i[2] for i in ids],
            "id.resp_p": [_port(i[3]) for i in ids],
            "proto": [i[3].partition("/")[2] if i[3] else "" for i in ids]})
        return allowlisted(flows, state["rules"])[0]

    return allow


def _lifecycle(args: argparse.Namespace):
    """The model slot this process serves from (--model or --models), loading each version
    with the command's device and GPU options."""
    from semiflow.detector.scoring import load_scorer
    from semiflow.serve_lifecycle import Lifecycle

    return Lifecycle(args, lambda path: load_scorer(
        path, device=args.device, amp=args.amp, compile=args.compile,
        gpu_path=args.gpu_path == "on"))


def run(args: argparse.Namespace, scorer: Scorer | None = None) -> int:
    """The service; `scorer` replaces the --model artifact (benchmarks' trivial scorer)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The event loop (the Zeek socket: pings, reads) shares the GIL with the batcher and
    # scoring threads; a CPU-bound thread keeps the GIL for the switch interval (5 ms by
    # default) each time the loop waits on a syscall. 1 ms keeps the loop's reads and
    # pongs prompt under load.
    sys.setswitchinterval(0.001)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if not args.scorer_addr and scorer is None and bool(args.model) == bool(args.models):
        raise UsageError("give the model as --model DIR or --models STORE (one of them)")
    shards = worker_shards(args.shard, args.workers)
    lifecycle = None
    from semiflow.serve_pool import zeek_urls
    urls = zeek_urls(args.zeek)
    if len(urls) > max(args.workers, 1) or (len(urls) > 1 and args.scorer_addr):
        raise ValueError(f"--zeek names {len(urls)} endpoints: each decode worker connects "
                         f"to one, so --workers must be at least {len(urls)}")
    if args.workers > 1 and not args.scorer_addr:
        from semiflow.serve_pool import run_pool
        if scorer is None:
            lifecycle = _lifecycle(args)
            scorer = lifecycle.slot
        return run_pool(args, scorer, shards, lifecycle=lifecycle)
    topics = topics_for(args.topic_prefix, args.shard)
    ssl_context = None
    if args.zeek.startswith("wss://"):
        from semiflow.plugin.zeek_ws import tls_context
        ssl_context = tls_context(args.tls_ca, args.tls_cert, args.tls_key,
                                  verify=not args.tls_no_verify)
    if args.scorer_addr:
        from semiflow.detector.serving.zmq_scorer import RemoteScorer
        scorer = RemoteScorer(args.scorer_addr)
    elif scorer is None:
        lifecycle = _lifecycle(args)
        scorer = lifecycle.slot
    samples = None
    if args.sample_store:
        from semiflow.plugin.sample_store import SensorSampleStore
        samples = SensorSampleStore(args.sample_store, scorer.spec,
                                    max_bytes=int(args.sample_store_gb * (1 << 30)))

    def extra_metrics() -> dict[str, float]:
        m = lifecycle.metrics() if lifecycle else {}
        if samples is not None:
            m |= {"semiflow_sample_store_flows_total": float(samples.written),
                  "semiflow_sample_store_dropped_total": float(samples.dropped)}
        return m
    app = ServeApp(scorer, args.zeek, topics, max_batch=args.max_batch,
                   max_wait=args.max_wait_ms / 1000.0, queue_size=args.queue,
                   ssl_context=ssl_context, metrics_port=args.metrics_port,
                   app_name=args.app_name, allow=_allow_hook(args.allowlist),
                   extra_metrics=extra_metrics,
                   observe=samples.observe if samples is not None else None)
    if lifecycle is not None:
        lifecycle.publish_drift = app.publish_event
    log.info("model %s %s (K=%d L=%d, threshold %.4g); topics %s", scorer.model_name,
             scorer.model_version, scorer.spec.k, scorer.spec.l, scorer.threshold, topics)
    if app.metrics is not None:
        log.info("metrics on http://127.0.0.1:%d/metrics", app.metrics.port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if lifecycle is not None:
            loop.add_signal_handler(signal.SIGHUP, lifecycle.wake)
            lifecycle.start()
        watch = asyncio.create_task(_watch_parent(stop)) if args.scorer_addr else None
        try:
            await app.run(stop)
        finally:
            if lifecycle is not None:
                lifecycle.close()
            if samples is not None:
                samples.close()  # what the batcher handed over, written and closed
        if watch is not None:
            watch.cancel()

    freeze_startup_objects()
    started = time.perf_counter()
    asyncio.run(main())
    log.info("served %.1fs", time.perf_counter() - started)
    return 0
