"""The Suricata connector's flows/s and lag, against offline `semiflow score`, in one run.

A large capture (the corpus' Ethernet pcaps laid end to end, timestamps shifted so files do
not overlap, repeated) is
  1. scored offline by `semiflow score` on the raw capture (the named alternative);
  2. replayed through `suricata -r` with suricata/semiflow.yaml while `semiflow suricata
     --follow` runs on its pcap-log + eve.json (lag: how long after Suricata exits the
     connector has written its last record; share of records out before Suricata exited);
  3. scored by `semiflow suricata` offline on Suricata's finished output (flows/s);
  4. with --gaps: the per-flow breakdown of how the two paths' flows differ, by cause
     (tests/suricata_gaps.py; docs/suricata.md "pcap-log vs the raw capture").

    python benchmarks/suricata_benchmark.py [--model DIR] [--repeat 2] [--device cpu] [--gaps]
    python benchmarks/suricata_benchmark.py --gaps-only [--runmode autofp]   # breakdown only
    python benchmarks/suricata_benchmark.py --gaps-ndpi 12   # the 12 largest nDPI captures
    (--config / --rules: another Suricata configuration, e.g. an older suricata/semiflow.yaml)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import suricata_gaps as gaps  # noqa: E402
import suricata_helpers as sh  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def build_capture(out: Path, repeat: int) -> tuple[int, int]:
    """Concatenate the corpus' Ethernet pcaps, each shifted to start after the previous."""
    files = sorted(p for p in (CORPUS / "pcaps").glob("*/*.pcap"))
    t_next, n = 1_600_000_000.0, 0
    with open(out, "wb") as fo:
        w = dpkt.pcap.Writer(fo, linktype=dpkt.pcap.DLT_EN10MB, snaplen=262144)
        for _ in range(repeat):
            for p in files:
                try:
                    with open(p, "rb") as fi:
                        r = dpkt.pcap.Reader(fi)
                        if r.datalink() != dpkt.pcap.DLT_EN10MB:
                            continue
                        pkts = list(r)
                except (ValueError, dpkt.dpkt.NeedData):
                    continue
                if not pkts:
                    continue
                t0 = float(pkts[0][0])
                last = t0
                for ts, buf in pkts:
                    # monotonic time inside the merged file; odd clocks capped at an hour
                    ts = min(max(float(ts), last), t0 + 3600.0)
                    last = ts
                    w.writepkt(buf, ts=t_next + (ts - t0))
                    n += 1
                t_next += (last - t0) + 400.0   # > every flow timeout: no flow spans files
    return n, out.stat().st_size


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{r.stdout}\n{r.stderr}")
    return dt, r


def count_lines(p: Path) -> int:
    if not p.exists():
        return 0
    with open(p, "rb") as f:
        return sum(1 for _ in f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="artifact (default: bundled, else train one)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="/tmp/semiflow-suricata-bench")
    ap.add_argument("--runmode", default="single",
                    help="suricata -r's runmode (default single, as docs/suricata.md says "
                         "offline; autofp: several worker threads, pcap-log out of order)")
    ap.add_argument("--gaps", action="store_true",
                    help="also print the per-flow breakdown of raw vs pcap-log flows by cause")
    ap.add_argument("--gaps-only", action="store_true",
                    help="only suricata -r and the breakdown (no scoring, no replay timing)")
    ap.add_argument("--gaps-ndpi", type=int, default=0, metavar="N",
                    help="only the breakdown, summed over the N largest nDPI captures, each "
                         "through its own suricata -r, for the k=8 'all' and k=4 'payload' "
                         "specs")
    ap.add_argument("--config", default=str(sh.CONFIG), help="suricata.yaml (default shipped)")
    ap.add_argument("--rules", default=str(sh.RULES), help="rules (default shipped)")
    args = ap.parse_args()
    sur_cmd = ["suricata", "-c", args.config, "-S", args.rules, "-k", "none",
               "--runmode", args.runmode]
    depth = gaps.suricata_depth(Path(args.config))
    if args.gaps_ndpi:
        gaps_ndpi(args.gaps_ndpi, Path(args.work) / f"ndpi-{args.runmode}", sur_cmd, depth)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else ROOT / "semiflow" / "data" / "model"
    if not (model / "model.json").exists() and not any(model.glob("*.json")):
        model = work / "model"
        if not model.exists():
            print("no bundled model: training the small test model", flush=True)
            sh.train_small_model(CORPUS, model)
    cap = work / f"big-x{args.repeat}.pcap"
    if not cap.exists():
        n, size = build_capture(cap, args.repeat)
    else:
        n, size = None, cap.stat().st_size
    print(f"capture {cap} ({size / 1e6:.1f} MB{f', {n} packets' if n else ''}); "
          f"model {model}; device {args.device}", flush=True)
    sf = [sys.executable, "-m", "semiflow"]
    if args.gaps_only:
        out = work / f"gaps-{args.runmode}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t_sur, _ = timed(sur_cmd + ["-r", str(cap), "-l", str(out)])
        print(f"suricata -r --runmode {args.runmode}: {t_sur:.1f} s")
        print_gaps(cap, out, model, depth)
        return

    # 1. offline semiflow score on the raw capture
    out1 = work / "score"
    shutil.rmtree(out1, ignore_errors=True)
    t_score, r = timed(sf + ["score", str(cap), "--model", str(model), "-o", str(out1),
                             "--device", args.device, "-q"])
    flows_score = int(r.stdout.split(" flows:")[0].split()[-1])

    # 2. replay through suricata -r with the connector following
    live = work / "replay"
    shutil.rmtree(live, ignore_errors=True)
    live.mkdir()
    out2 = live / "semiflow.json"
    idle = 3.0
    conn = subprocess.Popen(sf + ["suricata", "--pcap-dir", str(live), "--eve",
                                  str(live / "eve.json"), "--model", str(model), "-o", str(out2),
                                  "--device", args.device, "--follow", "--no-state",
                                  "--join-wait", "5", "--poll", "0.2", "--idle-exit", str(idle),
                                  "--report", str(work / "replay-report.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8.0)   # let the connector import torch and load the model first
    t0 = time.perf_counter()
    sur = subprocess.run(sur_cmd + ["-r", str(cap), "-l", str(live)], capture_output=True,
                         text=True)
    t_sur = time.perf_counter() - t0
    at_exit = count_lines(out2)
    last_n, last_change = at_exit, time.perf_counter()
    while conn.poll() is None:
        c = count_lines(out2)
        if c != last_n:
            last_n, last_change = c, time.perf_counter()
        time.sleep(0.05)
    cout, cerr = conn.communicate()
    if conn.returncode != 0 or sur.returncode != 0:
        raise SystemExit(f"replay failed:\n{sur.stderr[-2000:]}\n{cerr[-2000:]}")
    total = count_lines(out2)
    lag = last_change - (t0 + t_sur) if total != at_exit else 0.0
    rep = json.loads((work / "replay-report.json").read_text())
    pcap_log = sum(p.stat().st_size for p in live.glob("log.pcap*"))

    # 3. the connector offline on Suricata's finished output
    out3 = work / "offline.json"
    out3.unlink(missing_ok=True)
    t_conn, r3 = timed(sf + ["suricata", "--pcap-dir", str(live), "--eve", str(live / "eve.json"),
                             "--model", str(model), "-o", str(out3), "--device", args.device,
                             "--no-state", "--report", str(work / "offline-report.json")])
    rep3 = json.loads((work / "offline-report.json").read_text())
    flows_conn = rep3["connector"]["flows"]

    print(f"suricata -r: {t_sur:.1f} s; pcap-log {pcap_log / 1e6:.1f} MB "
          f"({pcap_log / size:.0%} of the capture)")
    print(f"semiflow score (raw capture, offline):   {flows_score} flows in {t_score:.1f} s "
          f"= {flows_score / t_score:.0f} flows/s")
    print(f"semiflow suricata (Suricata's output):    {flows_conn} flows in {t_conn:.1f} s "
          f"= {flows_conn / t_conn:.0f} flows/s "
          f"({rep3['connector']['joined']} records joined to a flow_id)")
    print(f"semiflow suricata --follow during replay: {rep['connector']['records']} records, "
          f"{at_exit} ({at_exit / max(total, 1):.0%}) written before Suricata exited; last "
          f"record {lag:.1f} s after Suricata exited (includes --idle-exit {idle:.0f} s "
          f"and --join-wait 5 s for flows still open at the end)")
    if rep3.get("late_packets"):
        print(f"pcap-log out of timestamp order: {rep3['late_packets']} packets up to "
              f"{rep3['max_lag_s']:.0f} s behind (--runmode {args.runmode})")
    if args.gaps:
        print_gaps(cap, live, model, depth)


def print_gaps(cap: Path, sur_out: Path, model: Path, depth: int) -> None:
    """The two paths' flows joined per flow, every difference by cause (model's spec)."""
    from semiflow.detector.scoring import load_scorer
    spec = load_scorer(model, device="cpu").spec
    bd = gaps.explain(cap, sur_out, spec, depth=depth)
    print(f"per-flow breakdown (k={spec.k}, l={spec.l}, selection {spec.selection}):")
    print("\n".join(bd.lines()))


def gaps_ndpi(n: int, work: Path, sur_cmd: list[str], depth: int) -> None:
    """The breakdown over the n largest nDPI captures (README's '12 largest' figure)."""
    from semiflow.detector.sample.spec import FlowSampleSpec
    files = sorted((CORPUS / "pcaps" / "ndpi").iterdir(), key=lambda p: -p.stat().st_size)[:n]
    specs = [FlowSampleSpec(k=8, l=256, selection="all"),
             FlowSampleSpec(k=4, l=256, selection="payload")]
    totals = [gaps.Breakdown() for _ in specs]
    shutil.rmtree(work, ignore_errors=True)
    for p in files:
        out = work / p.stem
        out.mkdir(parents=True)
        timed(sur_cmd + ["-r", str(p), "-l", str(out)])
        for spec, tot in zip(specs, totals):
            tot.add(gaps.explain(p, out, spec, depth=depth))
    print(f"{n} largest nDPI captures ({', '.join(p.name for p in files)}); "
          f"{' '.join(sur_cmd[1:])}")
    for spec, tot in zip(specs, totals):
        print(f"per-flow breakdown (k={spec.k}, l={spec.l}, selection {spec.selection}):")
        print("\n".join(tot.lines()))


if __name__ == "__main__":
    main()
