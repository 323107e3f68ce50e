"""What a fuzz target of benchmarks/fuzz.py is, and the error for input that vanished.

A target builds its seeds once (`setup`), makes one mutated input per case (`make`, from a
seeded random.Random) and runs it (`run`) through the code the product runs, which returns
"ok" (accepted) or "skip" (rejected or partly skipped, and counted by the product's own
counters: extract's per-reason skip counts and bad files, the serve loop's error statuses
and error counters, the EVE follower's malformed count, the allow-list's invalid count).
Raising one of the target's `clean` types is a documented clean rejection (also a counted
skip); any other exception, and an `Uncounted` (input that vanished without being counted),
is a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Uncounted(AssertionError):
    """An input the product neither processed nor counted (silent data loss)."""


@dataclass
class Target:
    name: str
    what: str
    setup: Callable[[Path, Path | None], object]
    make: Callable[[object, object], object]
    run: Callable[[object, object], str]
    clean: tuple[type[BaseException], ...] = ()
    save: Callable[[object, Path], None] = field(default=lambda x, p: p.write_text(repr(x)))
