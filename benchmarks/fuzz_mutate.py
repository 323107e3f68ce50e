"""Seeded mutators for benchmarks/fuzz.py: bytes (bit flips, cuts, length fields at their
extremes) and JSON trees (wrong types, huge vectors, deep nesting).

Every mutator takes a `random.Random`, so case i of a run is reproducible from (seed, i)
alone: the fuzz runner can restart a worker after a hang at case i+1 without replaying.
A byte-level fuzzer alone rarely keeps a message parseable while breaking one field; these
mutators know where the length fields and the typed values are.
"""

from __future__ import annotations

import copy
import json
import random

# Values that break length and count checks: around type limits and libpcap's MAXIMUM_SNAPLEN.
INTERESTING_U32 = (0, 1, 2, 3, 4, 7, 8, 11, 12, 15, 16, 19, 20, 27, 28, 39, 40, 59, 60, 64,
                   0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x3FFFF,
                   0x40000, 0x40001, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_U16 = tuple(v for v in INTERESTING_U32 if v <= 0xFFFF)
INTERESTING_U8 = tuple(v for v in INTERESTING_U32 if v <= 0xFF)


def set_uint(data: bytearray, off: int, size: int, value: int, big: bool = True) -> None:
    """Write value (truncated to size bytes) at off, if it fits in data."""
    if 0 <= off and off + size <= len(data):
        data[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(
            size, "big" if big else "little")


def extreme(rng: random.Random, size: int) -> int:
    pool = {1: INTERESTING_U8, 2: INTERESTING_U16}.get(size, INTERESTING_U32)
    return rng.choice(pool)


def flip_bits(rng: random.Random, data: bytearray, start: int = 0) -> None:
    if len(data) > start:
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            i = rng.randrange(start, len(data))
            data[i] ^= 1 << rng.randrange(8)


def mutate_bytes(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    """One generic mutation past `start`: flips, a cut, a byte run inserted or deleted,
    a random byte overwritten with an interesting value, or a chunk duplicated."""
    b = bytearray(data)
    if len(b) <= start:
        return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    op = rng.randrange(6)
    i = rng.randrange(start, len(b))
    if op == 0:
        flip_bits(rng, b, start)
    elif op == 1:
        del b[i:]
    elif op == 2:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 13, 100))))
    elif op == 3:
        del b[i:i + rng.choice((1, 2, 4, 16, 100))]
    elif op == 4:
        size = rng.choice((1, 2, 4))
        set_uint(b, i, size, extreme(rng, size), big=rng.random() < 0.5)
    else:
        j = rng.randrange(start, len(b))
        chunk = b[min(i, j):max(i, j)][:4096]
        b[i:i] = chunk
    return bytes(b)


def mutate_text(rng: random.Random, text: str) -> str:
    """Byte mutations of a text, decoded back (a WebSocket text frame is valid UTF-8)."""
    raw = mutate_bytes(rng, text.encode("utf-8"))
    if rng.random() < 0.2:
        raw += rng.choice((b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\x00"))
    return raw.decode("utf-8", "replace")


# ---- JSON trees ---------------------------------------------------------------------------
_DEEP = "__fuzz_deep_{}__"


def weird_value(rng: random.Random):
    """A value of a random (usually wrong) JSON type, often at a type's edge."""
    return rng.choice((
        None, True, False, 0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
        -(2**63) - 1, 10**400, 0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"),
        "", "x", "\x00", "\u2028", "\U0001f600", "A" * rng.choice((100, 70_000)),
        "443/tcp", "99999999999999999999/tcp", "-1/udp", "/", "::1", "1.2.3.4",
        "AAAA", "====", "AA==" * 4, "not base64!", [], {}, [None], {"": None},
        {"@data-type": "vector", "data": None}, {"@data-type": None, "data": []},
        {"@data-type": rng.choice(("string", "count", "real", "vector", "boolean",
                                   "integer", "address", "port", "x")),
         "data": rng.choice((None, 1, -1, "s", [], 1.5, True, 2**64))},
    ))


def _slots(obj, out: list, depth: int = 0) -> list:
    """Every (container, key) pair in a JSON tree (breadth is what matters, not order)."""
    if depth > 64:
        return out
    if isinstance(obj, dict):
        for k in list(obj):
            out.append((obj, k))
            _slots(obj[k], out, depth + 1)
    elif isinstance(obj, list):
        for i in range(len(obj)):
            out.append((obj, i))
            _slots(obj[i], out, depth + 1)
    return out


def mutate_json(rng: random.Random, obj, rounds: int = 1):
    """A mutated deep copy of obj. Deep nesting is left as a placeholder that `dumps`
    expands textually (json.dumps itself would overflow the stack)."""
    obj = copy.deepcopy(obj)
    for _ in range(rounds):
        slots = _slots(obj, [])
        if not slots:
            return weird_value(rng)
        parent, key = rng.choice(slots)
        op = rng.randrange(8)
        if op <= 2:
            parent[key] = weird_value(rng)
        elif op == 3:  # drop a key or an element
            del parent[key]
        elif op == 4:  # an unknown key or an extra element
            if isinstance(parent, dict):
                parent[rng.choice(("extra", "@data-type", "data", "type", ""))] = \
                    weird_value(rng)
            else:
                parent.insert(key, copy.deepcopy(parent[key]))
        elif op == 5:  # a huge vector (of a copy of an element, or of numbers)
            v = parent[key]
            n = rng.choice((1000, 10_000, 100_000))
            if isinstance(v, list) and v:
                parent[key] = [copy.deepcopy(v[0]) for _ in range(min(n, 10_000))]
            else:
                parent[key] = [rng.choice((0, 1, "x"))] * n
        elif op == 6:  # deep nesting where a value was
            parent[key] = _DEEP.format(rng.choice((10, 100, 999, 1001, 5000, 100_000)))
        else:  # swap two values (right types, wrong places)
            p2, k2 = rng.choice(slots)
            try:
                parent[key], p2[k2] = p2[k2], parent[key]
            except (KeyError, IndexError):
                pass
    return obj


def dumps(obj) -> str:
    """json.dumps (NaN/Infinity as Python writes them) with deep-nesting placeholders
    expanded to that many nested arrays."""
    text = json.dumps(obj, separators=(",", ":"))
    while '"__fuzz_deep_' in text:
        head, _, rest = text.partition('"__fuzz_deep_')
        n, _, tail = rest.partition('__"')
        text = head + "[" * int(n) + "0" + "]" * int(n) + tail
    return text
