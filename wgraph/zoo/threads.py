"""Torch's intra-op thread count for the duration of a generation."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), then restore.

    The generators default to one thread: their batched ops are small, and on two cores one
    thread was as fast as two for CNNs and three times faster for INRs, and much faster on a
    busy machine (benchmarks/results/zoo_generation.md). Results are reproducible for a given
    thread count; another count may change the last bits of the weights.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
