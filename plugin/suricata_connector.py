"""The Suricata connector: pcap-log + eve.json in, EVE `semiflow` records (+ dataset) out.

Suricata is the capture engine. Its pcap-log files give the first bytes of every flow; they go
through the same capture loop and flow-sample spec as `semiflow extract`, are scored, and each
verdict is written as an EVE line joined to Suricata's flow by community_id (and flow_id once
Suricata has logged the flow). Anomalous flows can put their source (or destination) into a
Suricata dataset over the unix socket, so that Suricata's own rule alerts (or drops).

Exactly once: a checkpoint holds the pcap-log position, the flow table's live flows, the
held-back records, the dataset state and the size of the output file, all taken at one
instant. A restarted connector truncates the output to that size and goes on from there.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from semiflow.detector.sample.spec import FlowSampleSpec

from . import flowscan as fs
from .capture import FlowBatch, FlowTable
from .community_id import CommunityIds
from .flowstore import batch_to_frame
from .pcap_follow import FollowPosition, PcapLogFollower, load_table, save_table
from .suricata import EveFollower, FlowIndex, semiflow_record
from .suricata_socket import DatasetFeeder

STATE_VERSION = 1


@dataclass
class ConnectorCounters:
    flows: int = 0
    scored: int = 0
    anomalous: int = 0
    unscored: int = 0
    records: int = 0
    joined: int = 0          # records that carry Suricata's flow_id
    held: int = 0            # records now waiting for Suricata's flow record
    restarts: int = 0


class SuricataConnector:
    """Poll-driven: call step() repeatedly (follow mode) or once with final=True (offline)."""

    def __init__(self, scorer, pcap_dir: str | os.PathLike, eve_path: str | os.PathLike,
                 out_path: str | os.PathLike, state_path: str | os.PathLike | None = None,
                 feeder: DatasetFeeder | None = None, flag: str = "src",
                 join_wait: float = 0.0, write_unscored: bool = True,
                 threshold: float | None = None, prefix: str = "log.pcap",
                 checkpoint_every: float = 10.0, community_id_seed: int = 0,
                 clock: Callable[[], float] = time.time):
        if flag not in ("src", "dst"):
            raise ValueError(f"flag must be src or dst, got {flag!r}")
        self.scorer = scorer
        self.spec: FlowSampleSpec = scorer.spec
        self.pcap_dir = Path(pcap_dir)
        self.out_path = Path(out_path)
        self.state_path = Path(state_path) if state_path else None
        self.feeder = feeder
        self.flag = flag
        self.join_wait = join_wait
        self.write_unscored = write_unscored
        self.threshold = scorer.threshold if threshold is None else float(threshold)
        self.checkpoint_every = checkpoint_every
        self.clock = clock
        self.counters = ConnectorCounters()
        self.ids = CommunityIds(community_id_seed)
        self.eve = EveFollower(eve_path)
        self.index = FlowIndex()
        self.pending: list[tuple[float, dict, float]] = []   # (deadline, record, first ts)
        self.source = self.pcap_dir.name or "suricata"
        self._last_checkpoint = 0.0
        self._last_data = clock()
        position, table = FollowPosition(), None
        out_size = None
        if self.state_path is not None and self.state_path.exists():
            position, table, out_size = self._load_state()
        if table is None:
            table = FlowTable(self.spec)
        self.follower = PcapLogFollower(self.pcap_dir, table, prefix, position)
        if out_size is not None and self.out_path.exists() \
                and self.out_path.stat().st_size > out_size:
            os.truncate(self.out_path, out_size)   # records after the checkpoint: redone
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.out_path, "a", encoding="utf-8")

    # --- state -------------------------------------------------------------------------------
    def _table_path(self) -> Path:
        return self.state_path.with_name(self.state_path.name + ".flows.npz")

    def _load_state(self):
        try:
            d = json.loads(self.state_path.read_text())
            if d.get("version") != STATE_VERSION:
                raise ValueError(f"state version {d.get('version')}")
            if d.get("spec") != self.spec.to_dict():
                raise ValueError("state was written with another flow-sample spec")
            table = load_table(self.spec, self._table_path()) \
                if self._table_path().exists() else None
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{self.state_path}: unusable connector state ({e}); "
                             "move it away to start afresh") from e
        self.counters = ConnectorCounters(**d.get("counters", {}))
        self.counters.restarts += 1
        self.pending = [tuple(p) for p in d.get("pending", [])]
        if self.feeder is not None:
            self.feeder.load_state(d.get("dataset", {}))
        return FollowPosition(**d["position"]), table, int(d["out_size"])

    def checkpoint(self) -> None:
        """Save everything needed to resume exactly here (atomically, output flushed first)."""
        if self.state_path is None:
            return
        self._out.flush()
        os.fsync(self._out.fileno())
        save_table(self.follower.table, self._table_path())
        d = {"version": STATE_VERSION, "spec": self.spec.to_dict(),
             "position": asdict(self.follower.pos), "out_size": self._out.tell(),
             "counters": asdict(self.counters), "pending": self.pending,
             "dataset": self.feeder.state() if self.feeder is not None else {},
             "follow": asdict(self.follower.counters), "saved_at": self.clock()}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, self.state_path)
        self._last_checkpoint = self.clock()

    # --- the loop ----------------------------------------------------------------------------
    def step(self, final: bool = False, idle_flush: bool = True) -> int:
        """One poll: eve, pcap-log, scoring, output, dataset. Returns flows finished."""
        for rec in self.eve.poll():
            self.index.add(rec)
        bytes_before = self.follower.counters.bytes_read
        t0 = self.follower.capture_time
        batches = list(self.follower.poll(final=final))
        now = self.clock()
        if self.follower.counters.bytes_read > bytes_before:
            self._last_data = now
        if final:
            batches += list(self.follower.finish())
        elif idle_flush and t0 > 0 and now - self._last_data > 1.0:
            # no packets lately: let capture time follow the wall clock so idle flows end
            batches += list(self.follower.advance_clock(
                self.follower.capture_time + (now - self._last_data)))
            self._last_data = now
        n = 0
        for b in batches:
            n += self._batch(b)
        if final:
            for rec in self.eve.poll():
                self.index.add(rec)
        self._release(final)
        if self.feeder is not None:
            self.feeder.pump()
        self._out.flush()
        if final or now - self._last_checkpoint >= self.checkpoint_every:
            self.checkpoint()
        return n

    def _batch(self, b: FlowBatch) -> int:
        frame = batch_to_frame(b, self.source)
        nsel = frame["n_selected"].to_numpy().astype(np.int64)
        scores = np.full(len(frame), np.nan)
        if (nsel > 0).any():
            scores = self.scorer.score_flows(b.data, nsel)
        cids = self.ids.for_flows(frame)
        now = self.clock()
        model, version = self.scorer.model_name, self.scorer.model_version
        for i, f in enumerate(frame.itertuples(index=False)):
            self.counters.flows += 1
            s = float(scores[i])
            if math.isnan(s):
                self.counters.unscored += 1
                if not self.write_unscored:
                    continue
                verdict, score = "unscored", None
            else:
                self.counters.scored += 1
                score = s
                verdict = "anomalous" if (not math.isnan(self.threshold)
                                          and s > self.threshold) else "normal"
            rec = semiflow_record(
                ts=f.ts, community_id=cids[i], flow_id=None, src_ip=f.orig_h,
                src_port=f.orig_p, dest_ip=f.resp_h, dest_port=f.resp_p, proto=f.proto,
                score=score, threshold=self.threshold, verdict=verdict, status=f.status,
                model=model, model_version=version, packets_used=int(nsel[i]), uid=f.uid)
            if verdict == "anomalous":
                self.counters.anomalous += 1
                if self.feeder is not None:
                    self.feeder.add(f.orig_h if self.flag == "src" else f.resp_h)
            self.pending.append((now + self.join_wait, rec, float(f.ts)))
        return len(frame)

    def _release(self, final: bool) -> None:
        """Write records that found their Suricata flow, or waited long enough."""
        now = self.clock()
        keep = []
        for deadline, rec, first_ts in self.pending:
            flow = self._suricata_flow(rec, first_ts)
            if flow is not None:
                rec = dict(rec, flow_id=flow.flow_id)
                rec = _reorder(rec)
                rec["semiflow"]["joined"] = True
                self.counters.joined += 1
            elif not (final or now >= deadline):
                keep.append((deadline, rec, first_ts))
                continue
            self._out.write(json.dumps(rec) + "\n")
            self.counters.records += 1
        self.pending = keep
        self.counters.held = len(keep)

    def _suricata_flow(self, rec: dict, first_ts: float):
        """Suricata's flow for a record: by community_id, else by the id Suricata < 7.0.12
        logs for a flow whose two addresses are equal (community_id.suricata_same_host)."""
        flow = self.index.lookup(rec["community_id"], first_ts)
        if flow is None and rec["src_ip"] == rec["dest_ip"]:
            alias = self.ids.suricata_same_host(
                rec["proto"], rec["src_ip"], rec["dest_ip"], rec["src_port"],
                rec["dest_port"], 6 if ":" in rec["src_ip"] else 4)
            if alias is not None:
                flow = self.index.lookup(alias, first_ts)
        return flow

    def close(self) -> None:
        self.checkpoint()
        self._out.close()
        self.eve.close()

    def report(self) -> dict:
        d = {"connector": asdict(self.counters), "pcap_log": asdict(self.follower.counters),
             "eve": {k: v for k, v in asdict(self.eve.counters).items()},
             "eve_flows_indexed": len(self.index),
             "packets": int(self.follower.table.st[fs.S_PACKETS]),
             # out of timestamp order (several Suricata worker threads): flows may be split
             "late_packets": int(self.follower.table.st[fs.S_LATE]),
             "max_lag_s": round(int(self.follower.table.st[fs.S_MAX_LAG_US]) / 1e6, 3),
             "live_flows": self.follower.table.live_flows,
             "problems": self.follower.problems[:10]}
        if self.feeder is not None:
            d["dataset"] = asdict(self.feeder.counters)
        return d


def _reorder(rec: dict) -> dict:
    """flow_id right after timestamp, as Suricata lays out its events."""
    out = {"timestamp": rec["timestamp"], "flow_id": rec["flow_id"]}
    out.update((k, v) for k, v in rec.items() if k not in out)
    return out
