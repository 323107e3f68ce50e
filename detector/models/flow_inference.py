"""Flow-level scores on a GPU at line rate (issue: inference ≥ 5M packet rows/s on one H200).

What the plain path (FlowSemiFlowDetector._parts: 2048 flows a batch, fp32, a pageable copy
and a sync per batch) leaves on the table, measured in benchmarks/score_speed.py:
- large batches of a few fixed shapes (powers of two, the tail padded);
- uint8 samples staged in pinned host memory and copied on a side stream while the previous
  batch computes (double-buffered: the copy of batch i+1 overlaps the model on batch i);
- bf16 autocast for the byte encoder/decoder (the flow's NLL stays fp32);
- optionally torch.compile, "reduce-overhead" = CUDA graphs (one launch per batch).
Scores are the detector's own nll and rec parts; scores["nll+rec"] is combined by the caller.
"""

from __future__ import annotations

import numpy as np
import torch

# The GPU path's batch in flows (docs/scale.md: bf16 5.3M rows/s at 16,384, 5.7M at 65,536
# with four times the pinned and device buffers).
GPU_BATCH = 16384


def bucket(m: int, limit: int) -> int:
    """The batch shape for m flows: the next power of two (at least 64, at most limit), so
    a live service's small batches are not padded to the full batch and compiled graphs
    come in a handful of shapes."""
    return min(limit, max(64, 1 << max(0, m - 1).bit_length()))


class GpuFlowScorer:
    """Scores for flow samples uint8[n, K, >= length] with a fitted FlowSemiFlowDetector."""

    def __init__(self, det, batch_size: int = GPU_BATCH, amp: str = "bf16",
                 compile: bool = False):
        if det.device_.type != "cuda":
            raise ValueError("GpuFlowScorer needs a detector on a CUDA device")
        self.det, self.batch_size, self.amp = det, int(batch_size), amp
        cfg = det.config_
        self.shape = (self.batch_size, cfg.k, cfg.length)
        dev = det.device_
        self.pinned = [torch.empty(self.shape, dtype=torch.uint8).pin_memory() for _ in (0, 1)]
        self.staged = [torch.empty(self.shape, dtype=torch.uint8, device=dev) for _ in (0, 1)]
        self.copy_stream = torch.cuda.Stream(dev)
        self.copied = [torch.cuda.Event() for _ in (0, 1)]
        self.used = [torch.cuda.Event() for _ in (0, 1)]
        self.core = torch.compile(self._core, mode="reduce-overhead") if compile else self._core
        if not compile:
            self.warm_up()

    def warm_up(self) -> None:
        """Run every batch shape once at load: a shape's first batch pays for kernel choice
        and lazy module loading, which a live service would otherwise pay mid-stream (one
        suspect of run D's 0.5 s tail, README; compiled graphs are captured on first use
        instead: minutes for all shapes)."""
        k, length = self.shape[1:]
        size = 64
        while True:
            self.parts(np.zeros((min(size, self.batch_size), k, length), np.uint8))
            if size >= self.batch_size:
                break
            size *= 2

    def _core(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.det.latent_nll_rec(x, self.amp)[1:]

    @torch.inference_mode()
    def parts(self, X: np.ndarray) -> dict[str, np.ndarray]:
        n, B = len(X), self.batch_size
        length = self.shape[2]
        main = torch.cuda.current_stream(self.det.device_)
        nll, rec = [], []
        for j, i in enumerate(range(0, n, B)):
            slot = j % 2
            m = min(B, n - i)
            self.copied[slot].synchronize()           # the pinned buffer's last copy is done
            size = bucket(m, B)
            host = self.pinned[slot].numpy()
            host[:m] = X[i:i + m, :, :length]
            host[m:size] = 0
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.used[slot])   # the model is done reading it
                self.staged[slot][:size].copy_(self.pinned[slot][:size], non_blocking=True)
                self.copied[slot].record(self.copy_stream)
            main.wait_event(self.copied[slot])
            a, b = self.core(self.staged[slot][:size])
            self.used[slot].record(main)
            nll.append(a[:m].clone())
            rec.append(b[:m].clone())
        if not nll:
            return {"nll": np.zeros(0), "rec": np.zeros(0)}
        return {"nll": torch.cat(nll).cpu().numpy(), "rec": torch.cat(rec).cpu().numpy()}
