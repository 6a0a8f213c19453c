"""Reference message-passing backend: plain PyTorch, per-edge messages materialized.

This is the ground truth every other backend is compared with, and the end of every fallback chain
(it computes every case). It builds the pre-activation of every edge of the block as one broadcast
over ``(B, out, in, H)`` (no index tensors: a dense block's edges are all pairs of its two layers),
applies the nonlinearity and reduces over the sender axis; a grouped block folds its groups into the
batch first (:func:`~wgraph.kernels.blocks.on_dense`). Memory is ``O(B * out * in * H)`` per block;
fused backends keep only node-sized accumulators.
"""

from __future__ import annotations

import torch

from .backend import Backend, Support
from .blocks import on_dense
from .spec import ACTIVATIONS, std_eps


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
    groups: int = 1,
) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated)."""
    phi = ACTIVATIONS[act]
    if kind in ("identity", "copy"):
        return _fanout(phi, send, recv, edge, edge_weight, reverse, aggr)

    def dense(send, recv, edge, n_send):
        # edge is (B, out, in, K). Forward: receivers are the block's rows (out), senders its
        # columns (in). Reverse: receivers are the columns, senders the rows.
        lift = edge @ edge_weight  # (B, out, in, H)
        if not reverse:
            return _reduce(phi(recv[:, :, None, :] + send[:, None, :, :] + lift), 2, aggr)
        return _reduce(phi(send[:, :, None, :] + recv[:, None, :, :] + lift), 1, aggr)

    return on_dense(dense, send, recv, edge, groups=groups, reverse=reverse)


def _fanout(phi, send, recv, edge, edge_weight, reverse, aggr):
    """Identity / copy blocks: source ``i`` feeds targets ``i * inner + s`` (``s < inner``).

    Forward, every target receives exactly one message; reverse, every source aggregates ``inner``.
    """
    B, H = send.shape[0], send.shape[2]
    c = send.shape[1] if not reverse else recv.shape[1]
    inner = (recv.shape[1] if not reverse else send.shape[1]) // c
    lift = edge_weight[0] if edge is None else (edge @ edge_weight).reshape(B, c, inner, H)
    if not reverse:
        z = send[:, :, None, :] + recv.reshape(B, c, inner, H) + lift
        return _reduce(phi(z).reshape(B, c * inner, 1, H), 2, aggr)
    z = send.reshape(B, c, inner, H) + recv[:, :, None, :] + lift
    return _reduce(phi(z), 2, aggr)


_EVERY = Support(True, "plain PyTorch, every case")

#: Computes every case: the end of every fallback chain.
BACKEND = Backend("reference", message_pass, lambda case: _EVERY)

__all__ = ["message_pass", "BACKEND"]
