"""The load generator of serve_benchmark.py: Zeek workers and Zeek's WebSocket server.

- `Hub` stands for Zeek's WebSocket server with cluster pub/sub (the 7.2+ hub path): a
  ZeekDouble whose clients' data-messages are relayed to every other client subscribed to
  a prefix of their topic, without the double's full checks (Zeek converts in C++). With
  `sink=True` it answers every request itself with an "ok" verdict (read from the head of
  the text, nothing decoded): the load generator's own ceiling.
- `publisher_main` stands for one Zeek worker (one process each): it publishes the
  corpus requests with fresh uids, either per flow (flow_request, the package before
  batching) or as flow_batch events formed by batch.zeek's rule (paced mode:
  plugin/zeek_selection.BatchPolicy; saturating: full batches), and measures each flow's
  latency from the moment it is ready at the worker to its verdict. It subscribes to its
  own reply topic, as a cluster worker does with Cluster::node_topic.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_TOPIC_B = re.compile(rb'"topic"\s*:\s*"([^"\\]*)"')


def make_hub(sink: bool = False):
    import websockets
    from zeek_double import ZeekDouble

    from semiflow.plugin import zeek_wire as zw
    from semiflow.plugin.zeek_batch import batch_head, verdict_batch_text
    from semiflow.plugin.zeek_decode import head_of, verdict_text

    req_prefix = zw.DEFAULT_REQUEST_TOPIC.encode()

    class Hub(ZeekDouble):
        """Relays raw bytes (no UTF-8 decode and re-encode: Zeek relays in C++) and never
        lets a slow reader stall the others: every client has its own outgoing queue and
        writer task, as Zeek queues per WebSocket client. So the hub keeps reading every
        connection (and the pongs behind the data) whatever one client's speed."""

        def __init__(self):
            super().__init__(subscriptions=())
            self.sink = sink
            self.requests = 0  # data-messages on request topics
            self.verdicts = 0  # data-messages on other topics
            self.max_queued = 0  # deepest outgoing queue seen (messages)
            self._out: dict = {}

        async def _handler(self, ws) -> None:
            try:
                subs = json.loads(await ws.recv())
                await ws.send(json.dumps({"type": "ack", "endpoint": f"hub-{id(ws):x}",
                                          "version": self.version}))
                q: collections.deque = collections.deque()
                wake = asyncio.Event()
                self._out[ws] = (q, wake)
                writer = asyncio.create_task(self._writer(ws, q, wake))
                self.clients[ws] = [p.encode() for p in subs]
                try:
                    while True:
                        self._relay(ws, await ws.recv(decode=False))
                finally:
                    writer.cancel()
            except websockets.ConnectionClosed:
                pass
            finally:
                self.clients.pop(ws, None)
                self._out.pop(ws, None)

        async def _writer(self, ws, q, wake) -> None:
            while True:
                if not q:
                    wake.clear()
                    await wake.wait()
                    continue
                self.max_queued = max(self.max_queued, len(q))
                await ws.send(q.popleft(), text=True)

        def _fanout_raw(self, topic: bytes, raw: bytes, exclude=None) -> None:
            for c, subs in list(self.clients.items()):
                if c is not exclude and any(topic.startswith(p) for p in subs):
                    out = self._out.get(c)
                    if out is not None:
                        out[0].append(raw)
                        out[1].set()

        def _relay(self, ws, raw: bytes) -> None:
            m = _TOPIC_B.search(raw, 0, 1024)
            if m is None:
                return
            topic = m.group(1)
            is_req = topic.startswith(req_prefix)
            if is_req:
                self.requests += 1
            else:
                self.verdicts += 1
            if self.sink and is_req:
                text = raw.decode("utf-8", "replace")
                head = batch_head(text)
                if head is not None:
                    reply = head[0]
                    answer = verdict_batch_text(reply, [zw.Verdict(u, "ok") for u in head[1]],
                                                0.5, "sink", "0")
                else:
                    one = head_of(text)
                    if one is None:
                        return
                    reply = one[1]
                    answer = verdict_text(reply, zw.Verdict(one[0], "ok"))
                self._fanout_raw(reply.encode(), answer.encode())
                return
            self._fanout_raw(topic, raw, exclude=ws)

    return Hub()


def hub_main(sink: bool, conn) -> None:
    """One hub in its own process (serve_benchmark --hubs): its URL, then it answers
    'stats' (requests, verdicts, clients, CPU seconds, deepest queue) until 'stop'."""
    async def main():
        hub = await make_hub(sink).start()
        conn.send(hub.url)
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "stop":
                await hub.stop()
                conn.send("stopped")
                return
            conn.send({"requests": hub.requests, "verdicts": hub.verdicts,
                       "clients": len(hub.clients), "cpu": time.process_time(),
                       "max_queued": hub.max_queued})
    asyncio.run(main())


class Hubs:
    """H hub processes; shard s of the requests goes through hub s % H (serve_benchmark
    gives the detector's worker i the URL of hub i % H, and worker i serves shard i)."""

    def __init__(self, n: int, sink: bool):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.procs, self.pipes = [], []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=hub_main, args=(sink, b), daemon=True)
            p.start()
            self.procs.append(p)
            self.pipes.append(a)
        self.urls = [a.recv() for a in self.pipes]

    def stats(self) -> dict:
        out = {"requests": 0, "verdicts": 0, "clients": 0, "cpu": [], "max_queued": 0}
        for a in self.pipes:
            a.send("stats")
            s = a.recv()
            for k in ("requests", "verdicts", "clients"):
                out[k] += s[k]
            out["cpu"].append(s["cpu"])
            out["max_queued"] = max(out["max_queued"], s["max_queued"])
        return out

    def stop(self) -> None:
        for a in self.pipes:
            a.send("stop")
        for a, p in zip(self.pipes, self.procs):
            if a.poll(10):
                a.recv()
            p.join(10)


def templates(reqs: list, reply: str) -> list[list]:
    """The corpus requests' arguments with this worker's reply topic."""
    out = []
    for e in reqs:
        a = list(e.args)
        a[1] = reply
        out.append(a)
    return out


def flow_batch_message(topic: str, args: list) -> dict:
    """zw.event_message(topic, FLOW_BATCH, args) without a call per value (Zeek encodes in
    C++; the publisher must not be the bottleneck). main() checks the two are equal."""
    from semiflow.plugin import zeek_wire as zw

    def vec(tag, vals):
        return {"@data-type": "vector", "data": [{"@data-type": tag, "data": x} for x in vals]}
    tags = {"string": "string", "addr": "address", "port": "port", "count": "count",
            "double": "real", "bool": "boolean"}
    enc = []
    for (_, t), v in zip(zw.EVENTS[zw.FLOW_BATCH], args):
        if t.startswith("vector of "):
            tag = tags[t[len("vector of "):]]
            enc.append(vec(tag, [float(x) for x in v] if tag == "real" else v))
        else:
            enc.append({"@data-type": tags[t], "data": v})
    return {"type": "data-message", "topic": topic, "@data-type": "vector",
            "data": [{"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1},
                     {"@data-type": "vector", "data": [
                         {"@data-type": "string", "data": zw.FLOW_BATCH},
                         {"@data-type": "vector", "data": enc}]}]}


def _encode(args_list: list[list], topic: str, batch: bool) -> str:
    import orjson

    from semiflow.plugin import zeek_wire as zw
    if batch:
        msg = flow_batch_message(topic, zw.flow_batch_args(args_list))
    else:
        msg = zw.event_message(topic, zw.FLOW_REQUEST, args_list[0])
    return orjson.dumps(msg).decode()


def check_encoder(reqs: list) -> None:
    """The fast batch encoder writes exactly what zeek_wire.event_message does."""
    from semiflow.plugin import zeek_wire as zw
    args = zw.flow_batch_args(templates(reqs[:9], "r/"))
    if flow_batch_message("t/", args) != zw.event_message("t/", zw.FLOW_BATCH, args):
        raise AssertionError("zeek_load.flow_batch_message differs from event_message")


def publisher_main(idx: int, urls: list[str], reqs: list, cfg: dict, conn) -> None:
    """One Zeek worker in its own process; results go back through `conn`. It connects
    to every hub of `urls` and publishes shard s through hub s % len(urls)."""
    conn.send(asyncio.run(_publish(idx, urls, reqs, cfg, conn)))


async def _publish(idx: int, urls: list[str], reqs: list, cfg: dict, conn) -> dict:
    import contextlib

    import orjson
    import websockets

    from semiflow.plugin import zeek_wire as zw

    n, bs, wait = cfg["flows"], cfg["batch_size"], cfg["batch_wait"]
    shards, window, rate = cfg["shards"], cfg["window"], cfg.get("rate")
    reply = f"zeek/cluster/node/worker-{idx}/"
    tpl = templates(reqs, reply)

    def flow(i: int) -> list:
        a = list(tpl[i % len(tpl)])
        a[0] = f"W{idx}x{i:09d}"
        return a

    loop = asyncio.get_running_loop()
    sent: dict[str, float] = {}
    lat: list[float] = []
    done_at: list[float] = []     # when each latency was seen (a timeline of the run)
    statuses: dict[str, int] = {}
    done = asyncio.Event()
    room = asyncio.Event()
    got = 0
    msgs_out = 0

    async def receive(ws):
        nonlocal got
        async for text in ws:
            now = time.monotonic()
            ev = orjson.loads(text)["data"][2]["data"]
            a = ev[1]["data"]
            if ev[0]["data"] == zw.VERDICT_BATCH:
                uids = [x["data"] for x in a[0]["data"]]
                sts = [x["data"] for x in a[1]["data"]]
            else:
                uids, sts = [a[0]["data"]], [a[1]["data"]]
            for u, s in zip(uids, sts):
                t = sent.pop(u, None)
                if t is not None:
                    lat.append(now - t)
                    done_at.append(now)
                statuses[s] = statuses.get(s, 0) + 1
            got += len(uids)
            room.set()
            if got >= n:
                done.set()

    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for url in urls:
            c = await stack.enter_async_context(websockets.connect(
                url + "/v1/messages/json", max_size=None, ping_interval=None,
                additional_headers={"X-Application-Name": f"zeek-worker-{idx}"}))
            await c.send(json.dumps([reply]))
            assert json.loads(await c.recv())["type"] == "ack"
            conns.append(c)
        rxs = [asyncio.create_task(receive(c)) for c in conns]
        shard = 0

        def topic() -> tuple[str, object]:
            """The next shard's topic, and the hub connection that carries it."""
            nonlocal shard
            shard += 1
            s = (shard - 1) % shards
            return f"{zw.DEFAULT_REQUEST_TOPIC}{s}/", conns[s % len(conns)]

        if rate is None:
            # Saturation: pre-encoded messages (batches full, as under load), bounded
            # window of outstanding flows.
            per = max(bs, 1)
            msgs = []
            for i in range(0, n, per):
                fl = [flow(j) for j in range(i, min(i + per, n))]
                t, ws = topic()
                msgs.append(([f[0] for f in fl], ws, _encode(fl, t, bs > 0)))
            conn.send("ready")
            await loop.run_in_executor(None, conn.recv)
            t0 = time.monotonic()
            cpu0 = time.process_time()
            for uids, ws, text in msgs:
                while len(sent) + len(uids) > window and len(sent) > 0:
                    room.clear()
                    await room.wait()
                now = time.monotonic()
                for u in uids:
                    sent[u] = now
                await ws.send(text)
                msgs_out += 1
        else:
            # Paced: one flow ready every 1/rate s; batch.zeek's rule (BatchPolicy, the
            # Python model of batch.zeek) forms the batches on this clock.
            from semiflow.plugin.zeek_selection import BatchPolicy
            conn.send("ready")
            await loop.run_in_executor(None, conn.recv)
            t0 = time.monotonic()
            cpu0 = time.process_time()
            pol = BatchPolicy(max(bs, 1), wait)

            async def publish(fl):
                nonlocal msgs_out
                if bs > 0:
                    t, ws = topic()
                    await ws.send(_encode(fl, t, True))
                    msgs_out += 1
                else:
                    for f in fl:
                        t, ws = topic()
                        await ws.send(_encode([f], t, False))
                        msgs_out += 1

            async def timer(deadline: float):
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                fl = pol.due(time.monotonic())
                if fl:
                    await publish(fl)

            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                f = flow(i)
                now = time.monotonic()
                sent[f[0]] = now
                fl = pol.add(f, now)
                if fl:
                    await publish(fl)
                elif len(pol.buf) == 1:
                    loop.create_task(timer(pol.deadline))
            fl = pol.flush(time.monotonic())
            if fl:
                await publish(fl)
        await asyncio.wait_for(done.wait(), cfg.get("timeout", 600))
        t1 = time.monotonic()
        cpu = time.process_time() - cpu0
        for rx in rxs:
            rx.cancel()
    return {"idx": idx, "t0": t0, "t1": t1, "lat": lat, "done_at": done_at,
            "statuses": statuses,
            "messages": msgs_out, "cpu": cpu, "flows": n}
