"""Block structure shared by the message-passing backends: pairwise sums and per-receiver reductions
over a (possibly grouped) dense block without index tensors. (Which nodes a block connects is a
question for the layout: :meth:`wgraph.layout.Layout.block_nodes`.)"""

from __future__ import annotations

import torch


def pair_sum(src: torch.Tensor, dst: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``(B, in, H)`` and ``(B, out, H)`` -> ``(B, out, in // groups, H)``: ``dst[o] + src[u]`` for
    every edge ``(o, j)`` of a dense block with ``groups`` groups (source ``u = g(o) * in_g + j``)."""
    B, n_in, H = src.shape
    out = dst.shape[1]
    s = src.reshape(B, groups, 1, n_in // groups, H)
    d = dst.reshape(B, groups, out // groups, 1, H)
    return (s + d).reshape(B, out, n_in // groups, H)


def on_dense(fn, send, recv, edge, *, groups: int, reverse: bool) -> torch.Tensor:
    """``fn(send, recv, edge, n_send)`` (``n_send``: senders per receiver) of a dense or grouped
    block, with its ``(B, n_recv, ...)`` result.

    A grouped block folds its groups into the batch (reshapes of node states and edges: group ``g``
    of network ``n`` becomes network ``n * groups + g`` of a dense block), and ``fn``'s result is
    unfolded the same way.
    """
    B = send.shape[0]
    if groups > 1:

        def fold(t):
            return t.reshape(B * groups, t.shape[1] // groups, *t.shape[2:])

        send, recv, edge = fold(send), fold(recv), fold(edge)
    out = fn(send, recv, edge, edge.shape[1] if reverse else edge.shape[2])
    return out.reshape(B, -1, out.shape[-1]) if groups > 1 else out


def dense_sum_aggregate(
    dense_sum, send, recv, edge, *, groups: int, reverse: bool, aggr: tuple[str, ...], scales: bool = False
) -> torch.Tensor:
    """Sum / mean aggregation of a dense or grouped block (see :func:`on_dense`) from
    ``dense_sum(send, recv, edge)``, a backend's per-receiver sum of messages over a dense block.

    ``mean`` is the sum over the sender count. A backend whose ``dense_sum`` takes a fourth argument,
    a factor on its result (``scales=True``), computes a lone ``mean`` in the kernel itself.
    Aggregators are concatenated in the given order.
    """

    def aggregate(send, recv, edge, n_send):
        if scales and aggr == ("mean",) and n_send:
            return dense_sum(send, recv, edge, 1.0 / n_send)
        total = dense_sum(send, recv, edge)
        outs = [total if a == "sum" else total / n_send for a in aggr]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    return on_dense(aggregate, send, recv, edge, groups=groups, reverse=reverse)
