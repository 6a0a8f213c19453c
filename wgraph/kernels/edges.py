r"""Explicit edge lists of weight-graph blocks, for the backends that materialize per-edge messages.

``pyg`` and ``scatter`` are the ecosystem's way of doing message passing: gather the two end states
of every edge, form one message per edge and scatter-reduce them onto the receivers. They need what
a dense block never stores, an index per edge; this module builds it (cached per shape and device)
and holds the math those two backends share.

Every block is seen as edges from an *a* side to a *b* side, in the order of the block's edge
tensor, with the batch folded into the node axis (network ``n``'s node ``i`` is row ``n * size + i``):

* dense / grouped block ``(B, out, in // groups, K)``: edge ``(n, o, j)`` joins column
  ``a = g(o) * in_g + j`` (``g(o) = o // (out / groups)``, ``in_g = in / groups``) to row ``b = o``;
* identity / copy block: edge ``(n, t)`` joins source ``a = t // inner`` to target ``b = t``.

``reverse=False`` sends a -> b, ``reverse=True`` b -> a, over the same edges and edge features.
The message of an edge is :math:`\phi(s_{src} + r_{dst} + x_e C)` and aggregation reduces the
messages of each receiver; ``std`` is :math:`\sqrt{\max(E[m^2] - E[m]^2, 0) + \epsilon}`, as in
:mod:`wgraph.kernels.reference`.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .spec import ACTIVATIONS, std_eps


@lru_cache(maxsize=64)
def _edges(kind: str, B: int, n_a: int, n_b: int, groups: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device)
    if kind in ("dense", "grouped"):
        in_g = n_a // groups
        b = torch.arange(n_b, device=dev).repeat_interleave(in_g)
        a = (b // (n_b // groups)) * in_g + torch.arange(in_g, device=dev).repeat(n_b)
    else:  # identity / copy: one edge per target
        b = torch.arange(n_b, device=dev)
        a = b // (n_b // n_a)
    net = torch.arange(B, device=dev)[:, None]
    return (net * n_a + a).reshape(-1), (net * n_b + b).reshape(-1)


def block_edges(kind: str, B: int, n_a: int, n_b: int, groups: int, reverse: bool, device):
    """``(src, dst)`` node rows of every edge of a block (batch folded in), in edge-tensor order."""
    a, b = _edges(kind, B, n_a, n_b, groups, str(device))
    return (b, a) if reverse else (a, b)


def edge_list(send, recv, edge, edge_weight, kind, reverse, groups=1):
    """Everything a scatter-style backend needs: flattened node states, edge indices, lifted edges.

    Returns ``(send_flat, recv_flat, src, dst, lift)`` with ``send_flat`` ``(B * n_send, H)``,
    ``recv_flat`` ``(B * n_recv, H)``, ``src`` / ``dst`` ``(E,)`` rows into them and ``lift`` the
    lifted edge features ``x_e C`` as ``(E, H)`` (a broadcast view when the feature is the constant 1).
    """
    B, n_send, H = send.shape
    n_recv = recv.shape[1]
    n_a, n_b = (n_send, n_recv) if not reverse else (n_recv, n_send)
    src, dst = block_edges(kind, B, n_a, n_b, groups, reverse, send.device)
    if edge is None:
        lift = edge_weight[0].expand(src.numel(), H)
    else:
        lift = edge.reshape(-1, edge_weight.shape[0]) @ edge_weight
    return send.reshape(-1, H), recv.reshape(-1, H), src, dst, lift


def message(x_src: torch.Tensor, x_dst: torch.Tensor, lift: torch.Tensor, act: str) -> torch.Tensor:
    """Per-edge messages ``phi(s_src + r_dst + x C)``, ``(E, H)``."""
    return ACTIVATIONS[act](x_src + x_dst + lift)


def reduce(scatter, m: torch.Tensor, dst: torch.Tensor, n: int, aggr: tuple[str, ...]) -> torch.Tensor:
    """Reduce messages ``m`` onto ``n`` receivers with each aggregator, concatenated on the last axis.

    ``scatter(src, index, dim=0, dim_size=n, reduce=...)`` is the scatter function of the backend
    (``torch_geometric.utils.scatter`` or ``torch_scatter.scatter``).
    """
    outs = []
    for a in aggr:
        if a == "std":
            mean = scatter(m, dst, dim=0, dim_size=n, reduce="mean")
            var = scatter(m * m, dst, dim=0, dim_size=n, reduce="mean") - mean * mean
            outs.append(torch.sqrt(var.clamp_min(0) + std_eps))
        else:
            outs.append(scatter(m, dst, dim=0, dim_size=n, reduce=a))
    return torch.cat(outs, dim=-1)
