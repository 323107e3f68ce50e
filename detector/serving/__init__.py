"""The serving loop: micro-batches of flow requests scored off the event loop (core), the
requests connectors decode into it (requests), its counters (stats), and the multi-process
scorer over pyzmq (zmq_scorer).

Imported as semiflow.detector.serving: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
