"""Checking a conversion on a real model: no vacuous checks, an exact round trip, a symmetry that
preserves the function. Used by the real-model tests and the conversion benchmarks."""

from __future__ import annotations

import copy

import torch
from torch import nn


def calibrated(model: nn.Module, x: torch.Tensor, noise: float = 0.02) -> nn.Module:
    """``model`` in eval mode with small noise on every parameter (zero-initialized heads would make
    a symmetry check vacuous) and BatchNorm statistics of the batch ``x``."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # running statistics = the statistics of the calibration batch
        model.train()
        model(x)
    return model.eval()


def symmetric_outputs(model: nn.Module, graph, x, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs on ``x`` of ``model`` and of its copy with the weights of a random symmetry of
    ``graph`` (the first output where a model returns several)."""
    from ..symmetry import random_symmetry
    from . import load_into

    permuted = load_into(copy.deepcopy(model), graph.permute(random_symmetry(graph, seed=seed)))
    with torch.no_grad():
        a, b = model(x), permuted(x)
    return (a if torch.is_tensor(a) else a[0]), (b if torch.is_tensor(b) else b[0])
