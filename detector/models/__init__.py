"""SemiFlow: the packet-level estimator and networks, the flow-level model, their training loop
(train_loop: batches, CUDA graphs, DDP) and GPU inference.

Imported as semiflow.detector.models: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
