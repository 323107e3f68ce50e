"""What makes a training step fast on a GPU and correct across GPUs, shared by the stages.

Speed (measured in benchmarks/train_speed.py): large batches with the learning rate scaled by
sqrt(batch / base batch) up to MAX_LR_FACTOR, warmed up and cosine-decayed so a large batch
trains as well as the base one; bf16 autocast; fused Adam; no host sync inside an epoch
(losses summed on the device).
Scale: a DistContext (torch.distributed, started by torchrun) gives every rank its slice of
each shuffled epoch; the global batch, the learning rate and so the result do not depend on
the world size beyond floating-point order.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

AMP = ("bf16", "fp16", "off")


@dataclass(frozen=True)
class FitOptions:
    """How to train (not what: the model's own config holds its sizes and base batch).

    batch_size: the global batch (all ranks together); None = the config's base batch.
    amp: autocast dtype on CUDA ("off" on CPU always). compile: torch.compile the trained
    modules. cuda_graphs: replay each training step as one captured CUDA graph
    (GraphedStep; CUDA training without compile, else ignored). warmup:
    share of each stage's steps spent warming the learning rate up (only when the batch is
    larger than the base batch; then the rate decays as a cosine to 10%). norm_group:
    training-mode BatchNorm takes its statistics over groups of this many flows (0: each
    rank's whole batch), so the result does not depend on the number of GPUs as long as each
    rank's batch is a multiple of it.
    """

    batch_size: int | None = None
    amp: str = "bf16"
    compile: bool = False
    cuda_graphs: bool = True     # one CUDA graph per step (CUDA, not compiled)
    warmup: float = 0.05
    lr_scaling: str = "sqrt"     # or "linear": the rate grows as the batch, not its root
    norm_group: int = 512        # flows per BatchNorm statistics group; 0 = the whole batch
    lr: float | None = None      # peak learning rate; None: the config's, scaled for the batch

    def __post_init__(self) -> None:
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError("batch size must be >= 2")
        if self.norm_group < 0 or self.norm_group == 1:
            raise ValueError("norm group must be 0 (whole batch) or >= 2 flows")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")


class DistContext:
    """One process of a torch.distributed job (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK);
    a single process is rank 0 of 1 and needs no process group."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0,
                 owns_group: bool = False):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.owns_group = owns_group

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Leave the job: the process group this context started is destroyed."""
        if self.owns_group:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    @classmethod
    def from_env(cls, device: str | None) -> DistContext:
        """Join the job torchrun started: NCCL on CUDA, gloo on CPU."""
        import torch.distributed as dist

        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError("--ddp runs under torchrun (e.g. torchrun --nproc-per-node 2 -m "
                             "semiflow train ... --ddp): RANK/WORLD_SIZE are not set")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                    **({"device_id": torch.device("cuda", local)} if cuda
                                       else {}))
        return cls(rank, world, local, owns)

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, device: str | None) -> str | None:
        """A rank's own GPU when the job runs on CUDA."""
        if device is not None and device.startswith("cuda") and self.active:
            return f"cuda:{self.local_rank}"
        return device

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            import torch.distributed as dist
            dist.all_reduce(t)
        return t

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """One set of buffers on every rank (validation and early stopping must see one
        model): each rank updates BatchNorm's running statistics from its own share of the
        batches during an epoch, so the floating ones are averaged over the ranks (what one
        process gathers from all of the batches), the counters taken from rank 0."""
        if self.active:
            import torch.distributed as dist
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b.div_(self.world)
                else:
                    dist.broadcast(b, 0)

    def wrap(self, module: torch.nn.Module, stream: torch.cuda.Stream | None = None
             ) -> torch.nn.Module:
        """DDP around a module whose parameters this stage trains (a no-op for one rank).
        stream: the side stream whose steps a CUDA graph will capture (GraphedStep's): DDP
        is built on it, as capturing its all-reduce requires; eager steps: None."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(module.parameters()).device
        # No buffer broadcast before every forward (a collective no step can overlap):
        # training-mode BatchNorm normalises with batch statistics, so gradients do not
        # depend on the running ones, and sync_buffers makes them one set (averaged over the
        # ranks) at each epoch's end.
        params = inspect.signature(DDP.__init__).parameters   # (renamed in torch 2.13)
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                   else {"broadcast_buffers": False})
        ids = [dev.index] if dev.type == "cuda" else None
        if stream is None:
            return DDP(module, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            ddp = DDP(module, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
        torch.cuda.current_stream(dev).wait_stream(stream)
        return ddp


def autocast(device: torch.device, amp: str, cache: bool = True):
    """bf16/fp16 autocast on CUDA; nothing elsewhere (CPU autocast is slower here).
    cache=False inside CUDA graphs (a cached cast would be captured once, stale after)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                          cache_enabled=cache)


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Only cuDNN algorithms that give the same bits on every run, while a model trains.
    Without it two H200s trained a different model from the same seed each time (val rec
    0.018 and 0.031 in one process); with it every repeat was bit-identical, at 0-3% of
    the speed (docs/scale.md). One GPU had repeated itself either way."""
    b = torch.backends.cudnn
    old = b.deterministic, b.benchmark
    b.deterministic, b.benchmark = True, False
    try:
        yield
    finally:
        b.deterministic, b.benchmark = old


def adam(params, lr: float, device: torch.device, capturable: bool = False
         ) -> torch.optim.Adam:
    """The method's Adam (beta1 0.5); fused into one kernel per step on CUDA; capturable
    (state and rate on the device) when its step is replayed as a CUDA graph."""
    cuda = device.type == "cuda"
    return torch.optim.Adam(list(params), torch.tensor(lr, device=device) if capturable else lr,
                            betas=(0.5, 0.999), fused=cuda, capturable=capturable and cuda)


class GraphedStep:
    """A whole training step (forward, backward, clipping, optimizer) replayed as one
    captured CUDA graph.

    At the base batch a step is launch-bound: on an H200 batch 64 took ~11 ms a step and
    batch 512 about as long (docs/scale.md), so a graph makes the method's own recipe fast
    instead of a larger batch that trains differently. `step(xb)` computes the loss and
    runs backward and the optimizer (gradients start from None). The first `warmup` batches
    are ordinary steps on a side stream, as PyTorch's whole-network capture recipe asks;
    the next batch of the same shape is captured and replayed; a batch of another shape
    (an epoch's last) runs eagerly, accumulating into the graph's gradient tensors after
    zeroing them. The returned loss tensor is overwritten by the next replay. Under
    DistributedDataParallel the gradient all-reduce is captured too (NCCL); DDP asks for 11
    eager steps before the capture (warmup_steps)."""

    @staticmethod
    def warmup_steps(ddp: bool) -> int:
        return 11 if ddp else 3

    def __init__(self, step, zero_grad, warmup: int = 3,
                 stream: torch.cuda.Stream | None = None):
        """zero_grad(set_to_none: bool): the optimizer's. stream: the side stream the eager
        steps before the capture run on (the one DDP was built on)."""
        self.step, self.zero_grad, self.warmup = step, zero_grad, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.stream = stream if stream is not None else torch.cuda.Stream()
        self.eager_steps = 0

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        if self.graph is not None and xb.shape == self.x.shape:
            self.x.copy_(xb)
            self.graph.replay()
            return self.loss
        if self.graph is None and self.eager_steps >= self.warmup:
            return self._capture(xb)
        self.eager_steps += 1
        self.zero_grad(self.graph is None)     # set to None until captured, zeroed after
        if self.graph is not None:
            return self.step(xb)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            loss = self.step(xb)
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _capture(self, xb: torch.Tensor) -> torch.Tensor:
        self.x = xb.clone()
        self.zero_grad(True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.step(self.x)
        self.graph.replay()               # capturing ran nothing: this is the batch's step
        return self.loss


# The rate stops growing at 4x the base rate (sqrt scaling's batch of 1,024 when the base
# batch is 64). At batch 8192 sqrt scaling's 11.3x made the fit chaotic (the same seed's
# result moved 3x with rounding alone, one seed diverged); at 4x every seed trained, with
# a better test AUROC than at 5.7x, and one and two GPUs agreed seed by seed (docs/scale.md).
MAX_LR_FACTOR = 4.0


def scaled_lr(base_lr: float, batch: int, base_batch: int, how: str = "sqrt") -> float:
    """sqrt scaling (Adam): 16x the batch, 4x the rate; "linear": 16x; never above
    MAX_LR_FACTOR x the base rate."""
    ratio = max(batch, 1) / max(base_batch, 1)
    return base_lr * min(ratio if how == "linear" else math.sqrt(ratio), MAX_LR_FACTOR)


class LrSchedule:
    """Linear warm-up then cosine to 10% over a stage's steps. The rate is written in place
    (a device tensor for a capturable optimizer: a graph replays with the new value, and no
    step reads it back to the host)."""

    def __init__(self, opt: torch.optim.Optimizer, base_lr: float, total_steps: int,
                 warmup: float):
        self.opt, self.base, self.total = opt, base_lr, total_steps
        self.warm = max(1, int(round(warmup * total_steps)))
        self.t = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        p = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p))

    def _apply(self) -> None:
        lr = self.base * self.factor(self.t)
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def step(self) -> None:
        self.t += 1
        self._apply()


def lr_schedule(opt: torch.optim.Optimizer, base_lr: float, total_steps: int, warmup: float,
                large: bool) -> LrSchedule | None:
    """The schedule for batches above the base batch; None (constant rate, as the method)
    at the base batch."""
    if not large or total_steps < 2:
        return None
    return LrSchedule(opt, base_lr, total_steps, warmup)


def world_size_caveat(batch: int, world: int, norm_group: int) -> str | None:
    """Why this DDP job's model will depend on its number of GPUs, if it will: a rank's
    batch that is not whole BatchNorm groups normalises other flows together than one
    process would (docs/scale.md)."""
    per_rank = batch // max(world, 1)
    if world <= 1 or (norm_group and per_rank % norm_group == 0):
        return None
    if not norm_group:
        return (f"each of the {world} ranks normalises its own {per_rank} flows, not the "
                f"whole batch of {batch}: the model will depend on the number of GPUs "
                "(BatchNorm groups, FitOptions.norm_group, make it independent)")
    return (f"each of the {world} ranks normalises its own {per_rank} flows of the batch of "
            f"{batch}, not whole BatchNorm groups of {norm_group}: the model will depend on "
            f"the number of GPUs (make --batch-size a multiple of {world} x {norm_group})")


def rank_share(order, per_rank: int, rank: int = 0, world: int = 1):
    """Rank r's flows of one epoch's permutation `order` (numpy array or tensor): of every
    global batch (world x per_rank consecutive flows) its r-th block of per_rank, so each
    rank's BatchNorm groups are the groups one GPU would form from the same global batch;
    of the last, shorter global batch an equal contiguous block each (the remainder of the
    division, under `world` flows, sits this epoch out), so every rank takes as many steps.
    """
    if world <= 1:
        return order
    g = per_rank * world
    full = len(order) // g * g
    head = order[:full].reshape(-1, world, per_rank)[:, rank].reshape(-1)
    share = (len(order) - full) // world
    tail = order[full + rank * share: full + (rank + 1) * share] if share > 1 else order[:0]
    cat = torch.cat if isinstance(order, torch.Tensor) else np.concatenate
    return cat([head, tail])


class InMemoryFlows:
    """Flow samples already in one tensor (on the training device): an epoch is a seeded
    permutation; each rank takes its share of it (rank_share)."""

    def __init__(self, X: torch.Tensor):
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    def chunks(self, seed: int, rank: int = 0, world: int = 1, device=None,
               per_rank: int = 1) -> Iterator[torch.Tensor]:
        g = torch.Generator(device=self.X.device).manual_seed(seed)
        order = torch.randperm(len(self.X), generator=g, device=self.X.device)
        yield self.X[rank_share(order, per_rank, rank, world)]

    def passes(self, device=None) -> Iterator[torch.Tensor]:
        """Every flow once, in order (statistics over the training set)."""
        for i in range(0, len(self.X), 65536):
            yield self.X[i:i + 65536]


def batches(chunk: torch.Tensor, per_rank: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of a shuffled chunk; a last batch of one flow is dropped
    (BatchNorm needs two)."""
    for i in range(0, len(chunk), per_rank):
        b = chunk[i:i + per_rank]
        if len(b) > 1:
            yield b


def steps_per_epoch(n: int, per_rank: int, world: int) -> int:
    """Batches a rank takes in one epoch of n flows (rank_share, then batches)."""
    world = max(world, 1)
    full, share = divmod(n, per_rank * world)
    return max(1, full + (share // world > 1))


def seed_for(seed: int, *salt: int) -> int:
    for v in salt:
        seed = (seed * 1_000_003 + int(v)) % (2 ** 63)
    return seed


def numpy_rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(seed_for(seed, *salt))
