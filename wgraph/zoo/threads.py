"""Torch's intra-op thread count for the duration of a generation."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), then restore.

    The generators default to one thread: their batched ops are small, and OpenMP threads that
    wait for each other lose badly when other jobs share the cores. Measured on the shared
    two-core machine (benchmarks/results/zoo_generation.md and development runs): 1,797 INRs in
    85 s with one thread, 296 s with two; 1,000 CNNs in 166 s with one thread and 150 s with two
    on a quiet machine, but 264 s with one and over 20 minutes with two on a busy one. Results are
    reproducible for a given thread count; another count may change the last bits of the weights.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
