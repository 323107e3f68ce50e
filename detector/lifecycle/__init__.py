"""A model in service: hot swap and shadow scoring (slot), drift statistics (drift), two models'
verdicts side by side (compare).

Imported as semiflow.detector.lifecycle: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
