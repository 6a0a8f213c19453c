"""``scatter`` backend: gathers plus ``torch_scatter`` reductions (optional dependency).

Per edge, the message is formed from gathered end states (``E x H``) and reduced onto the receivers
with ``torch_scatter.scatter``. Without ``torch-scatter`` this module does not import and
:func:`wgraph.kernels.get_backend` resolves ``"scatter"`` to the native ``fused`` backend, with a
warning.

``torch_scatter``'s max and min skip NaN messages and report a receiver whose messages are all
``-inf`` (``+inf`` for min) as 0; this backend reduces max and min with torch's ``scatter_reduce``
(``amax`` / ``amin``) instead, which propagates NaN and Inf (and splits the gradient between tied
senders) as ``torch.amax``, the reference, does. Sum, mean and std are ``torch_scatter``'s.
"""

from __future__ import annotations

import torch
from torch_scatter import scatter

from . import edges
from .backend import Backend


def ieee_scatter(src, index, dim=0, dim_size=None, reduce="sum"):
    """``torch_scatter.scatter`` over ``dim=0``, with ``max`` and ``min`` as ``torch.amax`` / ``amin``
    compute them (see the module docstring)."""
    if reduce not in ("max", "min"):
        return scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
    where = index.view(-1, *[1] * (src.dim() - 1)).expand_as(src)
    out = src.new_zeros(dim_size, *src.shape[1:])
    return out.scatter_reduce(0, where, src, "a" + reduce, include_self=False)


def message_pass(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated)."""
    B, n_recv = recv.shape[:2]
    s, r, src, dst, lift = edges.edge_list(send, recv, edge, edge_weight, kind, reverse, groups)
    m = edges.message(s[src], r[dst], lift, act)
    return edges.reduce(ieee_scatter, m, dst, B * n_recv, aggr).reshape(B, n_recv, -1)


#: Every case.
BACKEND = Backend("scatter", message_pass)

__all__ = ["message_pass", "ieee_scatter", "BACKEND"]
