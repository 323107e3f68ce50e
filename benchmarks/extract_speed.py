"""Extraction speed and memory: `semiflow extract` against dpkt's reader loop and nfstream.

Builds one large classic pcap (default 2 GB) from the development corpus's Ethernet captures,
each file's timestamps shifted to follow the previous one (an hour apart per repetition, so
old flows time out as on a real sensor), then runs every contender in its own process pinned
to ONE core and prints packets/s and peak RSS side by side.

    .venv/bin/python benchmarks/extract_speed.py [--size-gb 2] [--corpus ../shared/corpus]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CONTENDERS = {
    "semiflow extract (K=8, L=1600, samples to disk)": """
from semiflow.detector.sample.spec import FlowSampleSpec
from semiflow.training.extract import extract
rep = extract([CAP], OUT, FlowSampleSpec())
RESULT = {"packets": rep.packets + rep.skipped_total, "flows": rep.flows}
""",
    "dpkt plain reader loop": """
import dpkt
n = 0
with open(CAP, "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        n += 1
RESULT = {"packets": n}
""",
    "dpkt reader + Ethernet/IP decode": """
import dpkt
n = 0
with open(CAP, "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        try:
            ip = dpkt.ethernet.Ethernet(buf).data
        except (dpkt.NeedData, dpkt.UnpackError):
            pass
        n += 1
RESULT = {"packets": n}
""",
    "nfstream (1 meter, no dissection)": """
import nfstream
flows = packets = 0
for fl in nfstream.NFStreamer(source=CAP, n_meters=1, statistical_analysis=False,
                              splt_analysis=0, n_dissections=0):
    flows += 1
    packets += fl.bidirectional_packets
RESULT = {"packets": packets, "flows": flows}
""",
}

RUNNER = """
import json, resource, sys, time
CAP, OUT = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
{body}
RESULT["seconds"] = time.perf_counter() - t0
RESULT["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(RESULT))
"""


def build_capture(corpus: Path, out: Path, size: int) -> tuple[int, int]:
    """Concatenate the corpus's Ethernet pcaps (retimed) until `size` bytes; returns packets."""
    blocks = []
    cursor = 1_700_000_000
    for p in sorted((corpus / "pcaps").rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if data[:4] != b"\xd4\xc3\xb2\xa1" or struct.unpack_from("<I", data, 20)[0] != 1:
            continue  # little-endian microsecond Ethernet pcaps only: records copy verbatim
        offs = []
        pos = 24
        while pos + 16 <= len(data):
            caplen = struct.unpack_from("<I", data, pos + 8)[0]
            if caplen > 262144 or pos + 16 + caplen > len(data):
                break
            offs.append(pos)
            pos += 16 + caplen
        if not offs:
            continue
        body = np.frombuffer(data[24:pos], np.uint8).copy()
        rel = np.array(offs) - 24
        ts = np.array([struct.unpack_from("<I", data, o)[0] for o in offs], np.int64)
        blocks.append((body, rel, ts - ts.min(), int(ts.max() - ts.min()) + 1))
    base_packets = sum(len(b[1]) for b in blocks)
    base_bytes = sum(len(b[0]) for b in blocks)
    reps = max(1, size // base_bytes)
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for _ in range(reps):
            for body, rel, dts, span in blocks:
                b = body.copy()
                new = cursor + dts
                for j in range(4):  # write the shifted ts_sec of every record
                    b[rel + j] = (new >> (8 * j)) & 0xFF
                f.write(b.tobytes())
                cursor += min(span, 600) + 1
            cursor += 3600
    return reps * base_packets, reps * base_bytes + 24


def run(name: str, body: str, cap: Path, tmp: Path) -> dict:
    code = RUNNER.format(body=body)
    cmd = ["taskset", "-c", "0", sys.executable, "-c", code, str(cap), str(tmp / "out")]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"))
    ap.add_argument("--keep", action="store_true", help="keep the built capture")
    ap.add_argument("--jobs", default=None, metavar="J,J,...",
                    help="instead: `semiflow extract --jobs J` over --files captures of "
                         "--size-gb in all, for each J (the named alternative is J=1)")
    ap.add_argument("--files", type=int, default=32)
    args = ap.parse_args()
    if args.jobs:
        return parallel(args)
    with tempfile.TemporaryDirectory(prefix="semiflow-bench-") as d:
        tmp = Path(d)
        cap = tmp / "big.pcap"
        t = time.perf_counter()
        packets, nbytes = build_capture(Path(args.corpus), cap, int(args.size_gb * 2**30))
        print(f"capture: {nbytes / 2**30:.2f} GiB, {packets:,} packets "
              f"(built in {time.perf_counter() - t:.0f} s)")
        # Warm numba's on-disk cache so compile time is not charged to the run.
        run("warm", CONTENDERS["semiflow extract (K=8, L=1600, samples to disk)"], _tiny(tmp),
            tmp)
        print("\n| contender (one core) | packets/s | peak RSS (MiB) | seconds |")
        print("|---|---:|---:|---:|")
        for name, body in CONTENDERS.items():
            res = run(name, body, cap, tmp)
            if "error" in res:
                print(f"| {name} | failed: {res['error']} | | |")
                continue
            pps = res["packets"] / res["seconds"]
            print(f"| {name} | {pps:,.0f} | {res['peak_rss_mb']:,.0f} | {res['seconds']:.1f} |")
            for p in (tmp / "out").glob("*"):
                p.unlink()
        if args.keep:
            os.replace(cap, "big.pcap")
    return 0


def parallel(args) -> int:
    """Many captures (a day of rotated files), extracted with 1..J processes."""
    with tempfile.TemporaryDirectory(prefix="semiflow-bench-") as d:
        tmp = Path(d)
        one = tmp / "one.pcap"
        packets, nbytes = build_capture(Path(args.corpus), one,
                                        int(args.size_gb * 2**30 / args.files))
        caps = [tmp / f"cap{i:03d}.pcap" for i in range(args.files)]
        for c in caps:
            os.link(one, c)
        print(f"{args.files} captures of {nbytes / 2**20:.0f} MiB, {packets * args.files:,} "
              f"packets in all; {os.cpu_count()} CPUs")
        print("\n| semiflow extract | seconds | packets/s | speed-up |\n|---|---:|---:|---:|")
        base = None
        for j in map(int, args.jobs.split(",")):
            out = tmp / f"out{j}"
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "semiflow", "extract", *map(str, caps),
                                "-o", str(out), "-q", "--jobs", str(j)], capture_output=True,
                               text=True)
            secs = time.perf_counter() - t
            if r.returncode != 0:
                print(f"| --jobs {j} | failed: {r.stderr.strip()[-200:]} | | |")
                continue
            base = base or secs
            print(f"| --jobs {j} | {secs:.1f} | {packets * args.files / secs:,.0f} | "
                  f"{base / secs:.1f}x |", flush=True)
            subprocess.run(["rm", "-rf", str(out)])
    return 0


def _tiny(tmp: Path) -> Path:
    p = tmp / "tiny.pcap"
    with open(p, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    return p


if __name__ == "__main__":
    raise SystemExit(main())
