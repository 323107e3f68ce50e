"""`--threads N`: one option for every command that fits or scores models on CPU.

On a busy or small machine torch's default (one thread per core) oversubscribes: one fit took
more than 23 minutes on a shared 2-core machine against 142 s with one thread. This caps
torch's intra-op threads and the BLAS/OpenMP pools scikit-learn and numpy use.
"""

from __future__ import annotations

import argparse


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch and the BLAS/OpenMP pools (default: one per "
                        "core; 1 on a busy machine)")


def apply_threads(n: int | None) -> None:
    """Cap the thread pools at n (None: leave the libraries' defaults)."""
    if n is None:
        return
    if n < 1:
        raise ValueError("--threads must be >= 1")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
