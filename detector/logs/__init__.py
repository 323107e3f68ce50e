"""The conn.log detector: tokens of dyad-hour sequences, language models over them, their
baselines and threshold.

Imported as semiflow.detector.logs: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
