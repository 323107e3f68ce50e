"""Every fuzz target of benchmarks/fuzz.py, by name: each parser of input semiflow does not
control, driven through the code the product runs (not a private copy of it)."""

from __future__ import annotations

from fuzz_artifacts import ARTIFACT, FLOW_ARTIFACT
from fuzz_base import ROOT, Target, Uncounted
from fuzz_capture import CAPTURE, PCAP_LOG
from fuzz_messages import ALLOWLIST, EVE, WS

TARGETS = {t.name: t for t in (CAPTURE, PCAP_LOG, WS, EVE, ALLOWLIST, ARTIFACT,
                                FLOW_ARTIFACT)}
__all__ = ["ROOT", "TARGETS", "Target", "Uncounted"]
