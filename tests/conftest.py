"""Shared fixtures: where the development corpus and the Zeek logs live (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _shared(name: str, env: str) -> Path:
    return Path(os.environ.get(env) or ROOT.parent / "shared" / name)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    p = _shared("corpus", "SEMIFLOW_CORPUS")
    if not (p / "manifest.csv").exists():
        pytest.skip(f"development corpus not found at {p} (set SEMIFLOW_CORPUS)")
    return p


@pytest.fixture(scope="session")
def zeek_logs_dir() -> Path:
    p = _shared("zeek-logs", "SEMIFLOW_ZEEK_LOGS")
    if not p.exists():
        pytest.skip(f"Zeek logs not found at {p} (set SEMIFLOW_ZEEK_LOGS)")
    return p
