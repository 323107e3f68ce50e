"""Conn-log detector benchmark: (a) dyad-hour AUROC on the labelled Stratosphere logs for each
tokenizer x model, (b) reader speed (ours vs zat vs pandas.read_csv), (c) scoring speed in
conn lines/s, batched vs a naive per-dyad-hour loop, CLSTM vs Transformer.

    .venv/bin/python benchmarks/logs_benchmark.py                 # everything, CPU
    python3 benchmarks/logs_benchmark.py --only speed --device cuda --flows 2000000   # GPU

Split for (a): BY TIME. 008 and 010 are consecutive days of one capture (010 starts where 008
ends); models train on 008 (LMs: its normal dyad-hours only; the threshold is calibrated on
008's last 20% of hours) and are evaluated on all of 010, then the other way round (010 -> 008,
a backward-in-time check only). No window ever spans the two days.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semiflow.detector.logs.detector import LogLMDetector  # noqa: E402
from semiflow.detector.logs.tokens import dyad_hour_frame, normalize_conn  # noqa: E402

LOGS = Path(os.environ.get("SEMIFLOW_ZEEK_LOGS",
                           Path(__file__).resolve().parent.parent.parent / "shared" / "zeek-logs"))
DAY1 = LOGS / "008-zeek-mixed" / "data" / "conn.log.labeled"
DAY2 = LOGS / "010-zeek-mixed" / "data" / "conn.log.labeled"


def quality(epochs: int) -> None:
    from semiflow.plugin.zeeklog import read_zeek_log
    from semiflow.training.log_train import evaluate_scores

    d1, d2 = read_zeek_log(DAY1), read_zeek_log(DAY2)
    print(f"\n## (a) dyad-hour AUROC, split by time (train 008 -> test 010; and 010 -> 008), "
          f"{epochs} epochs, seed 42\n")
    print("| tokenizer | model | kind | AUROC 008->010 | P / R / FPR at thr (->010) "
          "| AUROC 010->008 | vocab |")
    print("|---|---|---|---|---|---|---|")
    for tok in ("protobytes", "port", "rich"):
        for model in ("clstm", "transformer"):
            for sup in (False, True):
                res = []
                for tr, te in ((d1, d2), (d2, d1)):
                    det = LogLMDetector(tokenizer=tok, model=model, supervised=sup,
                                        epochs=epochs, target_fpr=0.01).fit(tr)
                    res.append((evaluate_scores(det.score_dyad_hours(te)), len(det.vocab_)))
                m = res[0][0]
                print(f"| {tok} | {model} | {'supervised' if sup else 'LM'} | "
                      f"{m['auroc']:.3f} | {m['precision']:.2f} / {m['recall']:.2f} / "
                      f"{m['fpr']:.2f} | {res[1][0]['auroc']:.3f} | {res[0][1]} |", flush=True)


def readers() -> None:
    small = [DAY1, DAY2, LOGS / "001-zeek-scenario-malicious" / "labeled-conn.log"]
    # Per-file set-up dominates on these small logs; a long one (day 008's lines repeated)
    # shows the steady-state rate a day of sensor logs sees.
    big = Path(tempfile.mkdtemp(prefix="semiflow-readers-")) / "conn.log"
    text = DAY1.read_text().splitlines(True)
    head = [x for x in text if x.startswith("#") and not x.startswith("#close")]
    body = [x for x in text if not x.startswith("#")]
    with open(big, "w") as fh:
        fh.writelines(head)
        for _ in range(90):
            fh.writelines(body)
    for files in (small, [big]):
        _readers_on(files)


def _readers_on(files) -> None:
    from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log

    lines = sum(1 for f in files for x in open(f) if not x.startswith("#"))
    reps = 5 if lines < 100_000 else 2

    def bench(name, fn):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            n = sum(len(fn_f) for fn_f in fn())
        dt = (time.perf_counter() - t) / reps
        print(f"| {name} | {n} | {lines / dt:,.0f} |")

    print(f"\n## (b) reading {len(files)} real TSV conn log(s) ({lines} lines), one warm-up "
          f"then mean of {reps}\n")
    print("| reader | rows | lines/s |")
    print("|---|---|---|")
    bench("semiflow.plugin.zeeklog.read_zeek_log (typed)",
          lambda: [read_zeek_log(f, ZeekLogReport()) for f in files])

    def pandas_csv():
        out = []
        for f in files:
            with open(f) as fh:
                names = next(x for x in fh if x.startswith("#fields")).rstrip("\n").split("\t")[1:]
            out.append(pd.read_csv(f, sep="\t", comment="#", names=names, na_values=["-"],
                                   low_memory=False))
        return out
    bench("pandas.read_csv (untyped sets, no malformed-line count)", pandas_csv)
    try:
        from zat.log_to_dataframe import LogToDataFrame
    except ImportError:
        print("| zat | not installed | - |")
        return
    z = LogToDataFrame()
    bench("zat LogToDataFrame 0.4.9", lambda: [z.create_dataframe(str(f)) for f in files])


def synthetic_conn(n: int, seed: int = 0) -> pd.DataFrame:
    """n conn records: 2000 hosts, Zipf-ish dyads, 24 hours, realistic-ish byte/port mix."""
    rng = np.random.default_rng(seed)
    hosts = np.array([f"10.{i // 250}.{i % 250}.{7}" for i in range(2000)], dtype=object)
    a = rng.zipf(1.5, n) % 2000
    b = (a * 7 + rng.zipf(1.3, n)) % 2000
    ports = np.array([53, 80, 443, 22, 123, 8080, 3389, 445, 25, 993])
    return pd.DataFrame({
        "ts": np.sort(rng.uniform(0, 24 * 3600, n)) + 1.7e9, "uid": [f"C{i}" for i in range(n)],
        "id.orig_h": hosts[a], "id.resp_h": hosts[b],
        "id.orig_p": rng.integers(1024, 65535, n), "id.resp_p": ports[rng.zipf(1.6, n) % 10],
        "proto": np.where(rng.random(n) < 0.7, "tcp", "udp"),
        "orig_bytes": rng.lognormal(6, 2, n).astype(np.int64),
        "resp_bytes": rng.lognormal(7, 3, n).astype(np.int64), "duration": rng.exponential(2, n),
        "conn_state": rng.choice(["SF", "S0", "REJ", "RSTO", "OTH"], n, p=[.7, .1, .1, .05, .05]),
        "service": rng.choice(["dns", "ssl", "http", "-"], n)})


def speed(device: str, n_flows: int, naive_flows: int) -> None:
    conn = synthetic_conn(n_flows)
    fit_part = synthetic_conn(20_000, seed=1)
    print(f"\n## (c) scoring speed, {n_flows:,} synthetic conn lines, device {device}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| model | path | lines/s | 10M lines would take |")
    print("|---|---|---|---|")
    for model in ("clstm", "transformer"):
        det = LogLMDetector(tokenizer="protobytes", model=model, epochs=1,
                            device=device).fit(fit_part)
        bs = 16384 if device != "cpu" else 4096
        det.score_dyad_hours(conn.iloc[:5000])  # warm-up
        t = time.perf_counter()
        seq = dyad_hour_frame(normalize_conn(conn), det.tokenizer)
        t_tok = time.perf_counter() - t
        out = det.score_sequences(seq, batch_size=bs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rate = n_flows / dt
        print(f"| {model} | batched ({bs}/batch; tokenize+group {t_tok:.1f}s of {dt:.1f}s, "
              f"{len(out):,} dyad-hours) | {rate:,.0f} | {1e7 / rate / 60:.1f} min |", flush=True)
        # the named alternative: naive scoring, one dyad-hour at a time (unbatched)
        sub = dyad_hour_frame(normalize_conn(conn.iloc[:naive_flows]), det.tokenizer)
        keys = sub[["hour", "host_a", "host_b"]].drop_duplicates()
        t = time.perf_counter()
        for k in keys.itertuples(index=False):
            part = sub[(sub["hour"].to_numpy() == k.hour) & (sub["host_a"].to_numpy() == k.host_a)
                       & (sub["host_b"].to_numpy() == k.host_b)]
            det.score_sequences(part)
        dt = time.perf_counter() - t
        rate = naive_flows / dt
        print(f"| {model} | naive: one dyad-hour per call ({len(keys):,} calls) | "
              f"{rate:,.0f} | {1e7 / rate / 60:.1f} min |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["quality", "readers", "speed"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--naive-flows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "quality"):
        quality(args.epochs)
    if args.only in (None, "readers"):
        readers()
    if args.only in (None, "speed"):
        speed(args.device, args.flows, args.naive_flows)


if __name__ == "__main__":
    main()
