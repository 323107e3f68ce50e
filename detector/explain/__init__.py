"""Why a flow was flagged: byte and header-field attributions for packet-level (packet_level)
and flow-level (flow_level) models.

Imported as semiflow.detector.explain: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
