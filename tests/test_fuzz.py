"""CI's share of benchmarks/fuzz.py: a few hundred cases per target, fixed seed, in-process.

The benchmark itself runs 10,000 cases per target under a per-case time limit (hangs);
here a hang would simply block the test, so only crashes and uncounted inputs are checked.
"""

from __future__ import annotations

import fuzz
import pytest
from fuzz_targets import TARGETS

CASES = 300


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_has_no_crash(name):
    tally = fuzz.run_inline(name, CASES, seed=0, corpus=fuzz.corpus_default())
    assert tally.cases == CASES
    assert tally.crashes == 0, "\n".join(tally.examples)
    # both outcomes occur: the mutators reach past the first check, and break things
    assert tally.accepted > 0 and tally.skips > 0, tally
