"""Reference message-passing backend: plain PyTorch, per-edge messages materialized.

This is the ground truth every other backend is compared with. It builds the pre-activation of
every edge of the block as one broadcast over ``(B, out, in, H)`` (no index tensors: a dense block's
edges are all pairs of its two layers), applies the nonlinearity and reduces over the sender axis.
Memory is ``O(B * out * in * H)`` per block; fused backends keep only node-sized accumulators.
"""

from __future__ import annotations

import torch

from .spec import ACTIVATIONS, std_eps


def _activation(name: str):
    return ACTIVATIONS[name]


def _reduce(m: torch.Tensor, dim: int, aggr: tuple[str, ...]) -> torch.Tensor:
    """Reduce messages ``m`` over ``dim`` with each aggregator; concatenate on the last axis."""
    outs = []
    for a in aggr:
        if a == "sum":
            outs.append(m.sum(dim))
        elif a == "mean":
            outs.append(m.mean(dim))
        elif a == "max":
            outs.append(m.amax(dim))
        elif a == "min":
            outs.append(m.amin(dim))
        elif a == "std":
            mean = m.mean(dim)
            var = (m * m).mean(dim) - mean * mean
            outs.append(torch.sqrt(var.clamp_min(0) + std_eps))
    return torch.cat(outs, dim=-1)


def message_pass(
    send: torch.Tensor,
    recv: torch.Tensor,
    edge: torch.Tensor | None,
    edge_weight: torch.Tensor,
    *,
    kind: str,
    reverse: bool,
    aggr: tuple[str, ...],
    act: str,
) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated)."""
    phi = _activation(act)
    if kind == "identity":
        # One edge per node (i -> i), so every aggregator sees exactly one message.
        lift = edge_weight[0] if edge is None else edge @ edge_weight
        m = phi(send + recv + lift)
        outs = []
        for a in aggr:
            outs.append(torch.sqrt(torch.zeros_like(m) + std_eps) if a == "std" else m)
        return torch.cat(outs, dim=-1)
    # Dense block: edge is (B, out, in, K). Forward: receivers are the block's rows (out),
    # senders its columns (in). Reverse: receivers are the columns, senders the rows.
    lift = edge @ edge_weight  # (B, out, in, H)
    if not reverse:
        z = recv[:, :, None, :] + send[:, None, :, :] + lift
        return _reduce(phi(z), 2, aggr)
    z = send[:, :, None, :] + recv[:, None, :, :] + lift
    return _reduce(phi(z), 1, aggr)
