"""CI's share of benchmarks/fuzz.py: a few hundred cases per target, fixed seed, in-process.

The benchmark itself runs 10,000 cases per target under a per-case time limit (hangs);
here a hang would simply block the test, so only crashes and uncounted inputs are checked.
Below them, generation-based fuzzing (hypothesis) of the two text decoders.
"""

from __future__ import annotations

import fuzz
import pytest
from fuzz_targets import TARGETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CASES = 300


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_has_no_crash(name):
    tally = fuzz.run_inline(name, CASES, seed=0, corpus=fuzz.corpus_default())
    assert tally.cases == CASES
    assert tally.crashes == 0, "\n".join(tally.examples)
    # both outcomes occur: the mutators reach past the first check, and break things
    assert tally.accepted > 0 and tally.skips > 0, tally


# Generation-based fuzzing alongside the mutation fuzzing above: hypothesis builds arbitrary
# JSON trees and byte strings (and shrinks a failure to its smallest form).

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=30)
SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _request_message() -> dict:
    from semiflow.plugin import zeek_wire as zw
    args = zw.flow_request_args("Cq", "reply/", "10.0.0.1", "1/tcp", "10.0.0.2", "2/tcp", 1, 4,
                                320, [b"\x45" * 40], [1.0], [40], [True])
    return zw.event_message("req/", zw.FLOW_REQUEST, args)


@SETTINGS
@given(where=st.integers(0, 12), value=JSON, inner=st.booleans())
def test_any_json_in_any_request_argument_is_decoded_or_counted(where, value, inner):
    import json

    from semiflow.plugin.zeek_decode import decode_flow_requests

    msg = _request_message()
    arg = msg["data"][2]["data"][1]["data"][where]
    if inner and isinstance(arg["data"], list) and arg["data"]:
        arg["data"][0] = value        # an element of a vector
    else:
        arg["data"] = value           # the argument's value itself
    batch = decode_flow_requests([json.dumps(msg)])
    assert len(batch.keys) + len(batch.errors) == 1


@SETTINGS
@given(lines=st.lists(st.binary(max_size=60), max_size=8))
def test_any_eve_bytes_are_records_or_counted(lines, tmp_path_factory):
    from semiflow.plugin.suricata import EveFollower

    eve = tmp_path_factory.mktemp("eve") / "eve.json"
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    eve.write_bytes(data)
    fol = EveFollower(eve)
    fol.poll()
    fol.close()
    want = sum(1 for line in data.split(b"\n")[:-1] if line.strip())
    assert fol.counters.records + fol.counters.malformed == want
