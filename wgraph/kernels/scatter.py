"""``scatter`` backend: gathers plus ``torch_scatter`` reductions (optional dependency).

Per edge, the message is formed from gathered end states (``E x H``) and reduced onto the receivers
with ``torch_scatter.scatter``. Without ``torch-scatter`` this module does not import and
:func:`wgraph.kernels.resolve_backend` falls back, with a warning, to the native ``fused`` backend.
"""

from __future__ import annotations

import torch
from torch_scatter import scatter

from . import edges


def message_pass(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated)."""
    B, n_recv = recv.shape[:2]
    s, r, src, dst, lift = edges.edge_list(send, recv, edge, edge_weight, kind, reverse, groups)
    m = edges.message(s[src], r[dst], lift, act)
    return edges.reduce(scatter, m, dst, B * n_recv, aggr).reshape(B, n_recv, -1)
