"""Flows/s of each stage of the live decode path, per flow vs per micro-batch, one core.

    python benchmarks/decode_benchmark.py [--corpus ../shared/corpus] [--k 8 --l 1600]

Inputs are the exact flow_request texts the Zeek package publishes for a corpus slice
(plugin/zeek_selection.py, encoded the way Zeek's JSON writer does). Each stage is timed
against the named alternative it replaces, in the same run:
  parse     json.loads                      vs orjson.loads
  decode    per message: json + zeek_wire validation + base64.b64decode (the thorough path)
            vs zeek_decode.decode_flow_requests on the whole batch (orjson, flat checks,
            binascii, one blob)
  samples   spec.build_flow_sample per flow vs spec.build_flow_samples per batch
  keys      the connection keys of a batch's flows (tunnel.conn_keys: a Python loop) for every
            flow vs only the flows tunnel.flows_may_tunnel marks (what build_flow_samples does)
  verdicts  json.dumps(Verdict.message()) vs zeek_decode.verdict_text
  total     thorough decode + per-flow samples + json verdicts vs the batch path
  flow_batch  the batch path on per-flow flow_request texts vs on flow_batch texts of
            --zeek-batch flows each (one orjson parse, one base64 pass per message), and
            verdict_text per flow vs verdict_batch_text per --zeek-batch flows
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def rate(fn, n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"))
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--l", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--copies", type=int, default=10, help="repeat the corpus requests")
    ap.add_argument("--zeek-batch", type=int, default=64, help="flows per flow_batch (64)")
    a = ap.parse_args()

    import orjson
    from serve_benchmark import build_requests
    from zeek_double import zeek_json

    from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_sample, build_flow_samples
    from semiflow.plugin import zeek_wire as zw
    from semiflow.plugin.zeek_decode import _thorough, decode_flow_requests, verdict_text

    spec = FlowSampleSpec(k=a.k, l=a.l)
    reqs = build_requests(Path(a.corpus), a.k, a.l)
    texts = [zeek_json(e.message()) for e in reqs] * a.copies
    n = len(texts)
    batches = [texts[i:i + a.batch] for i in range(0, n, a.batch)]
    nfr = sum(len(e.args[9]) for e in reqs) * a.copies
    print(f"{n} flow requests ({len(reqs)} distinct corpus flows x {a.copies}), "
          f"{nfr / n:.1f} frames and {sum(map(len, texts)) / n:,.0f} bytes of JSON per "
          f"request; K={a.k} L={a.l}; batch {a.batch}; one core, best of 3", flush=True)

    def line(stage, old_name, old, new_name, new):
        print(f"{stage:>9}: {old_name} {old:>10,.0f} flows/s ({1e6 / old:6.1f} us/flow)  |  "
              f"{new_name} {new:>10,.0f} flows/s ({1e6 / new:6.1f} us/flow)  x{new / old:.1f}",
              flush=True)

    line("parse", "json.loads", rate(lambda: [json.loads(t) for t in texts], n),
         "orjson.loads", rate(lambda: [orjson.loads(t) for t in texts], n))

    def thorough():
        return [_thorough(t) for t in texts]
    dec_old = rate(thorough, n)
    dec_new = rate(lambda: [decode_flow_requests(b) for b in batches], n)
    line("decode", "per-message thorough", dec_old, "batch decode", dec_new)

    flows = [[(f, v[2], t, w, o) for f, t, w, o in zip(v[4], v[5], v[6], v[7])]
             for v in thorough()]
    rb = [decode_flow_requests(b) for b in batches]
    build_flow_sample(flows[0], spec)  # compile/load the kernels before timing

    def batch_samples():
        for b in rb:   # with the conn_ids, as serve passes them (tunnelled flows)
            build_flow_samples(b.blob, b.frame_off, b.frame_len, b.linktype, b.ts,
                               b.wire_len, b.is_orig, b.flow_start, spec, b.ids)
    smp_old = rate(lambda: [build_flow_sample(f, spec) for f in flows], n)
    smp_new = rate(batch_samples, n)
    line("samples", "build_flow_sample", smp_old, "build_flow_samples", smp_new)

    from semiflow.detector.sample import tunnel as tn
    line("keys", "conn_keys, every flow", rate(lambda: [tn.conn_keys(b.ids) for b in rb], n),
         "conn_keys of flows_may_tunnel", rate(lambda: [tn.conn_keys(b.ids, tn.flows_may_tunnel(
             b.blob, b.frame_off, b.frame_len, b.linktype, b.flow_start)) for b in rb], n))

    vs = [zw.Verdict(e.uid, "ok", 0.0123, 0.5, False, 8, "semiflow", "v1") for e in reqs]
    vs = vs * a.copies
    topic = zw.DEFAULT_VERDICT_TOPIC
    ver_old = rate(lambda: [json.dumps(v.message(topic), separators=(",", ":"))
                            for v in vs], n)
    ver_new = rate(lambda: [verdict_text(topic, v) for v in vs], n)
    line("verdicts", "json.dumps(message)", ver_old, "verdict_text", ver_new)
    tot_old = 1 / (1 / dec_old + 1 / smp_old + 1 / ver_old)
    tot_new = 1 / (1 / dec_new + 1 / smp_new + 1 / ver_new)
    line("total", "per-flow path", tot_old, "batch path", tot_new)

    from semiflow.plugin.zeek_batch import verdict_batch_text
    zb = a.zeek_batch
    args = [e.args for e in reqs] * a.copies
    btexts = [orjson.dumps(zw.event_message(zw.DEFAULT_REQUEST_TOPIC + "0/", zw.FLOW_BATCH,
                                            zw.flow_batch_args(args[i:i + zb]))).decode()
              for i in range(0, n, zb)]
    per = max(a.batch // zb, 1)  # flow_batch messages per micro-batch of --batch flows
    bbatches = [btexts[i:i + per] for i in range(0, len(btexts), per)]
    assert sum(len(decode_flow_requests(b).keys) for b in bbatches) == n
    line("zeek batch", "flow_request texts", dec_new, f"flow_batch x{zb}",
         rate(lambda: [decode_flow_requests(b) for b in bbatches], n))
    line("verdicts", "verdict_text", ver_new, f"verdict_batch_text x{zb}",
         rate(lambda: [verdict_batch_text(topic, vs[i:i + zb], 0.5, "semiflow", "v1")
                       for i in range(0, n, zb)], n))


if __name__ == "__main__":
    main()
