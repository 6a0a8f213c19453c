"""``pyg`` backend: one block's messages through ``torch_geometric``'s :class:`MessagePassing`.

The ecosystem baseline: explicit ``edge_index`` (built by :mod:`wgraph.kernels.edges`), one
message per edge materialized by ``message`` (``E x H``), reduced by ``aggregate``. The math is
that of :func:`wgraph.kernels.message_pass`; memory is ``O(E * H)`` per block and direction.
"""

from __future__ import annotations

import torch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from . import edges
from .backend import Backend


class BlockMessages(MessagePassing):
    r"""Bipartite message passing ``m_v = \bigoplus_u \phi(s_u + r_v + x_{uv} C)`` (no parameters:
    the maps ``A``, ``B``, ``C`` are applied by the caller or passed in as ``lift``)."""

    def __init__(self, aggr: tuple[str, ...], act: str):
        super().__init__(aggr="sum", flow="source_to_target")
        self.aggrs, self.act = aggr, act

    def forward(self, send, recv, edge_index, lift):
        return self.propagate(edge_index, x=(send, recv), lift=lift, size=(send.shape[0], recv.shape[0]))

    def message(self, x_j, x_i, lift):
        return edges.message(x_j, x_i, lift, self.act)

    def aggregate(self, inputs, index, ptr=None, dim_size=None):
        return edges.reduce(scatter, inputs, index, dim_size, self.aggrs)


def message_pass(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated)."""
    B, n_recv = recv.shape[:2]
    s, r, src, dst, lift = edges.edge_list(send, recv, edge, edge_weight, kind, reverse, groups)
    out = BlockMessages(aggr, act)(s, r, torch.stack([src, dst]), lift)
    return out.reshape(B, n_recv, -1)


#: Every case.
BACKEND = Backend("pyg", message_pass)

__all__ = ["message_pass", "BlockMessages", "BACKEND"]
