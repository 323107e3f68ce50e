"""Fuzz every parser of outside input; print cases / accepted / counted skips / crashes / hangs.

    python benchmarks/fuzz.py [--cases 10000] [--seed 0] [--targets capture,zeek-ws,...]
                              [--time-limit 10] [--save-crashes DIR] [--corpus DIR]
    python benchmarks/fuzz.py --targets capture --seed 0 --case 1234   # replay one case
    python benchmarks/fuzz.py --boundscheck --targets capture,pcap-log,zeek-ws --cases 2000

Targets: benchmarks/fuzz_capture.py, fuzz_messages.py, fuzz_artifacts.py (listed in
fuzz_targets.py); mutators: fuzz_mutate.py. Case i of a target is made from
random.Random(f"{target}:{seed}:{i}") alone, so any case can be replayed. Each target runs
in its own worker process; the parent gives every case `--time-limit` seconds (a hang: the
worker is killed and restarted at the next case) and counts a worker that dies (a segfault
in a compiled kernel, the OOM killer) as a crash.

Outcomes: accepted (parsed and used), counted skip (rejected with the parser's documented
clean error, or partly skipped and counted by the product's own counters), crash (any other
exception, or an input that vanished uncounted), hang. tests/test_fuzz.py runs a few hundred
cases per target with a fixed seed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_targets import ROOT, TARGETS, Target, Uncounted  # noqa: E402

READY_TIMEOUT = 600.0   # set-up may compile the numba kernels on a cold cache


@dataclass
class Tally:
    cases: int = 0
    accepted: int = 0
    skips: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # first crash/hang descriptions

    def add(self, outcome: str, detail: str = "") -> None:
        self.cases += 1
        if outcome == "ok":
            self.accepted += 1
        elif outcome == "skip":
            self.skips += 1
        else:
            if outcome == "hang":
                self.hangs += 1
            else:
                self.crashes += 1
            kind = detail.split(": ", 1)[-1]  # one example per kind, not per case
            if len(self.examples) < 5 and all(not e.endswith(kind) for e in self.examples):
                self.examples.append(detail)


def case_rng(target: str, seed: int, i: int) -> random.Random:
    return random.Random(f"{target}:{seed}:{i}")


def run_case(t: Target, state, seed: int, i: int) -> tuple[str, str]:
    """(outcome, detail) of case i: ok / skip / crash."""
    x = t.make(state, case_rng(t.name, seed, i))
    try:
        return t.run(state, x), ""
    except t.clean:
        return "skip", ""
    except Uncounted as e:
        return "crash", f"case {i}: uncounted input: {e}"
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "crash", (f"case {i}: {type(e).__name__}: {str(e)[:200]} "
                         f"({Path(where.filename).name}:{where.lineno})")


def corpus_default() -> Path | None:
    p = Path(os.environ.get("SEMIFLOW_CORPUS") or ROOT.parent / "shared" / "corpus")
    return p if (p / "manifest.csv").exists() else None


def run_inline(name: str, cases: int, seed: int = 0, corpus: Path | None = None,
               work: Path | None = None) -> Tally:
    """All cases in this process, no hang watchdog (the test suite's mode)."""
    t = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        state = t.setup(Path(work or tmp), corpus)
        tally = Tally()
        start = time.perf_counter()
        for i in range(cases):
            tally.add(*run_case(t, state, seed, i))
        tally.seconds = time.perf_counter() - start
    return tally


def _worker(name: str, seed: int, first: int, last: int, corpus, work: str, conn) -> None:
    """Child process: set up, say ready, then report each case's start and outcome."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t = TARGETS[name]
    state = t.setup(Path(work), corpus)
    conn.send(("ready",))
    for i in range(first, last):
        conn.send(("start", i))
        conn.send(("done", i, *run_case(t, state, seed, i)))
    conn.send(("end",))


def run_isolated(name: str, cases: int, seed: int, time_limit: float,
                 corpus: Path | None, save: Path | None = None) -> Tally:
    """Every case in a worker process under a per-case time limit; restarts after a hang
    or a dead worker and carries on with the next case."""
    ctx = mp.get_context("spawn")
    t = TARGETS[name]
    tally = Tally()
    start = time.perf_counter()
    nxt = 0
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
        while nxt < cases:
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(name, seed, nxt, cases, corpus, work, child),
                            daemon=True)
            p.start()
            child.close()
            if not parent.poll(READY_TIMEOUT):
                raise RuntimeError(f"fuzz target {name}: set-up did not finish in "
                                   f"{READY_TIMEOUT:.0f} s")
            try:
                msg = parent.recv()
            except EOFError:
                raise RuntimeError(f"fuzz target {name}: set-up failed (worker exit "
                                   f"{p.exitcode})") from None
            current = None
            while True:
                if not parent.poll(time_limit if current is not None else READY_TIMEOUT):
                    tally.add("hang", f"case {current}: no answer in {time_limit:g} s")
                    _keep(t, seed, current, save)
                    p.kill()
                    nxt = (current if current is not None else nxt) + 1
                    break
                try:
                    msg = parent.recv()
                except EOFError:
                    p.join(5)
                    tally.add("crash", f"case {current}: worker died (exit {p.exitcode})")
                    _keep(t, seed, current, save)
                    nxt = (current if current is not None else nxt) + 1
                    break
                if msg[0] == "start":
                    current = msg[1]
                elif msg[0] == "done":
                    tally.add(msg[2], msg[3])
                    if msg[2] == "crash":
                        _keep(t, seed, msg[1], save)
                    current = None
                    nxt = msg[1] + 1
                elif msg[0] == "end":
                    nxt = cases
                    break
            p.join(10)
            if p.is_alive():
                p.kill()
            parent.close()
    tally.seconds = time.perf_counter() - start
    return tally


def _keep(t: Target, seed: int, i: int | None, save: Path | None) -> None:
    """Write a crashing or hanging input under save/ (remade from its seed, cheaply)."""
    if save is None or i is None:
        return
    save.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state = t.setup(Path(tmp), corpus_default())
            t.save(t.make(state, case_rng(t.name, seed, i)), save / f"{t.name}-{seed}-{i}")
    except Exception as e:  # saving is a convenience: report, do not stop the run
        print(f"could not save {t.name} case {i}: {e!r}", file=sys.stderr)


def table(rows: dict[str, Tally]) -> str:
    head = ("| target | cases | accepted | counted skips | crashes | hangs | seconds |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {n} | {r.cases} | {r.accepted} | {r.skips} | {r.crashes} | {r.hangs} | "
             f"{r.seconds:.0f} |" for n, r in rows.items()]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per target (10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated, from {', '.join(TARGETS)}")
    ap.add_argument("--time-limit", type=float, default=10.0,
                    help="seconds per case before it counts as a hang (10)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="development corpus (default ../shared/corpus; the bundled lab "
                         "sample alone without it)")
    ap.add_argument("--save-crashes", type=Path, help="write crashing/hanging inputs here")
    ap.add_argument("--case", type=int, help="replay this one case in-process, with traceback")
    ap.add_argument("--boundscheck", action="store_true",
                    help="compile the numba kernels with bounds checks (a separate cache; "
                         "an out-of-bounds access becomes an IndexError, i.e. a crash)")
    a = ap.parse_args(argv)
    if a.boundscheck:  # inherited by the spawned workers before they import numba
        os.environ["NUMBA_BOUNDSCHECK"] = "1"
        os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "semiflow-fuzz-bc")
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; known: {list(TARGETS)}")
    corpus = a.corpus or corpus_default()
    if a.case is not None:
        for n in names:
            t = TARGETS[n]
            with tempfile.TemporaryDirectory() as tmp:
                state = t.setup(Path(tmp), corpus)
                x = t.make(state, case_rng(n, a.seed, a.case))
                print(f"{n} case {a.case}: {t.run(state, x)}")
        return 0
    print(f"seed {a.seed}, {a.cases} cases per target, {a.time_limit:g} s per case; corpus "
          f"{corpus or '(none: bundled lab sample only)'}", flush=True)
    rows: dict[str, Tally] = {}
    for n in names:
        rows[n] = r = run_isolated(n, a.cases, a.seed, a.time_limit, corpus, a.save_crashes)
        print(f"{n}: {r.cases} cases, {r.accepted} accepted, {r.skips} counted skips, "
              f"{r.crashes} crashes, {r.hangs} hangs ({r.seconds:.0f} s)", flush=True)
        for e in r.examples:
            print(f"    {e}", flush=True)
    print()
    print(table(rows))
    return 1 if any(r.crashes or r.hangs for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
