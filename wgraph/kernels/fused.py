r"""Fused message-passing backend (CPU and any device): tiles, node-sized accumulators, recomputation.

For a dense block with edge features ``x`` of shape ``(B, out, in, K)``, sender states
``s = A h_u`` and receiver states ``r = B h_v (+ b)`` this computes exactly what
:mod:`wgraph.kernels.reference` computes,

.. math::

    z_{vu} = s_u + r_v + x_{vu} C, \qquad
    m_v = \sum_{u \to v} \phi(z_{vu}) \quad\text{(sum)}, \qquad
    m_v = \frac{1}{|\{u \to v\}|} \sum_{u \to v} \phi(z_{vu}) \quad\text{(mean)},

without ever holding the ``(B, out, in, H)`` tensor of pre-activations or messages.

On CPU, for float32 / float64 blocks (:func:`wgraph.kernels.native.usable`), forward and backward
run the same math in native kernels (:mod:`wgraph.kernels.native`: one sweep over the block that
keeps each pre-activation in registers, no tiles). Everywhere else (other devices and dtypes, no C
compiler, ``WGRAPH_NATIVE=0``) the block is cut into tiles (the whole block of several networks
when one network's block fits the budget, otherwise a few rows of one network) such that one
tile's ``(b, rows, in, H)`` pre-activation takes at most :func:`tile_budget` bytes
(:data:`TILE_BYTES` per torch thread; at least one row of one network per tile). Dense blocks need
no index tensors: a tile is a slice of ``x`` and of the node states.

Forward (a custom :class:`torch.autograd.Function`): for each tile, ``z`` is formed, ``phi`` applied
in place and the tile reduced into a ``(B, n_recv, H)`` accumulator (the rows' own outputs for
``reverse=False``; a sum over the tile's rows for ``reverse=True``). Only the inputs (which the
caller holds anyway) are saved for backward.

Backward: each tile's ``z`` is recomputed and, with ``G = g \odot \phi'(z)`` (``g`` the incoming
gradient of the receivers, divided by the sender count for ``mean``),

* ``dL/dr_v = \sum_u G_{vu}``, ``dL/ds_u = \sum_v G_{vu}`` (sums over the tile's in / row axis),
* ``dL/dx_{vu} = G_{vu} C^T`` (edge-sized, like ``x`` itself; only when ``x`` requires grad),
* ``dL/dC = \sum x_{vu}^T G_{vu}`` (accumulated over tiles).

Peak extra memory is therefore a few tiles plus node-sized accumulators (and ``dL/dx`` when the edge
features require gradients).

Supported here: ``kind="dense"`` and ``kind="grouped"`` (grouped blocks fold their groups into the
batch, as the reference does: the fold is a reshape of node states, not of messages), both
directions, every aggregator:

* ``sum`` and ``mean`` (any combination of them: one pass computes the sum, the mean is the sum over
  the sender count) run as above, natively on CPU;
* a call that asks for ``max``, ``min`` or ``std`` runs all its aggregators from one tile-by-tile
  sweep (:class:`_DenseStats`, on any device) that keeps per receiver the sum of ``phi(z)``, the sum
  of its squares, its max and min and the senders that attain them (all node-sized):
  ``std = sqrt(max(S2 / n - (S / n)^2, 0) + eps)`` as in the reference, and the max's gradient goes
  to its sender.

``kind="identity"`` and ``"copy"`` blocks are not computed here (:func:`supports` says so, and the
dispatcher hands them to this backend's fallback, ``reference``): every target has exactly one
source, so their messages are node-sized already and there is nothing to fuse.

NaN and Inf propagate as in the reference, forward and backward (the kernels compute the same IEEE
operations; ReLU keeps a NaN and passes its gradient on, as ``torch.relu`` does; a NaN max or min
sends a NaN gradient to every sender of its receiver, as ``torch.amax`` does).

The backward is first-order only (``once_differentiable``): double backward through the fused
path raises an error; use the reference backend for higher-order gradients.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from . import native, reference
from .backend import Backend, Case, Support
from .blocks import dense_sum_aggregate, on_dense
from .spec import act_grad, apply_act_, std_eps

#: Upper bound, in bytes, of one tile's ``(b, rows, in, H)`` pre-activation per torch thread (the
#: budget is ``TILE_BYTES * torch.get_num_threads()``; at least one row of one network is processed
#: at a time, whatever the budget). Module-level so tests can force many tiles. Measured on a loaded
#: 2-core CPU (benchmarks/bench_message_pass.py): with 1 thread 4 MB tiles were as fast as 16 MB and
#: took less memory; with 2 threads larger tiles mean fewer parallel regions (fewer barrier waits).
TILE_BYTES = 4 << 20

_FUSED_AGGR = ("sum", "mean")


def tile_budget() -> int:
    """Bytes one tile's pre-activation may take: :data:`TILE_BYTES` per torch thread."""
    return TILE_BYTES * torch.get_num_threads()


def _tiles(B: int, out: int, row_bytes: int, budget: int):
    """``(batch slice, row slice)`` pairs covering ``B x out`` with at most ``budget`` bytes each
    (``row_bytes``: one row of one network)."""
    per_tile = max(1, budget // max(1, row_bytes))  # rows of one network per tile
    if per_tile >= out:
        nb = max(1, min(B, per_tile // max(1, out)))
        for b0 in range(0, B, nb):
            yield slice(b0, min(B, b0 + nb)), slice(0, out)
    else:
        for b0 in range(B):
            for r0 in range(0, out, per_tile):
                yield slice(b0, b0 + 1), slice(r0, min(out, r0 + per_tile))


def _preact(send, recv, edge, weight, reverse, bs, rs):
    """Pre-activation ``z`` of one tile: ``(b, rows, in, H)`` (rows: the block's out axis)."""
    if not reverse:  # receivers are the rows, senders the columns
        rows, cols = recv[bs, rs], send[bs]
    else:  # senders are the rows, receivers the columns
        rows, cols = send[bs, rs], recv[bs]
    z = rows[:, :, None, :] + cols[:, None, :, :]  # fresh and contiguous
    e = edge[bs, rs]
    K, H = weight.shape
    if K == 1:  # a Linear weight: the lift is an outer product
        z.addcmul_(e, weight[0])
    else:
        z.view(-1, H).addmm_(e.reshape(-1, K), weight)
    return z


class _DenseSum(torch.autograd.Function):
    """Sum over senders of ``phi(z)`` for one dense block, tile by tile (see the module docstring)."""

    @staticmethod
    def forward(ctx, send, recv, edge, weight, reverse: bool, act: str, budget: int, scale: float):
        ctx.save_for_backward(send, recv, edge, weight)
        ctx.reverse, ctx.act, ctx.budget, ctx.scale = reverse, act, budget, scale
        if native.usable(edge, act):
            return native.forward(send, recv, edge, weight, reverse, act, scale)
        B, out, inn, _ = edge.shape
        H = weight.shape[1]
        n_recv = inn if reverse else out
        acc = send.new_zeros(B, n_recv, H, dtype=_accumulator_dtype(send.dtype))
        row_bytes = inn * H * edge.element_size()
        for bs, rs in _tiles(B, out, row_bytes, budget):
            m = apply_act_(_preact(send, recv, edge, weight, reverse, bs, rs), act)
            if not reverse:
                acc[bs, rs] = m.sum(2)
            else:
                acc[bs] += m.sum(1)
        return (acc.mul_(scale) if scale != 1 else acc).to(send.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        send, recv, edge, weight = ctx.saved_tensors
        reverse, act, need = ctx.reverse, ctx.act, ctx.needs_input_grad[:4]
        if native.usable(edge, act):
            grads = native.backward(send, recv, edge, weight, grad, reverse, act, need, ctx.scale)
            return (*grads, None, None, None, None)
        if ctx.scale != 1:
            grad = grad * ctx.scale

        def tile_grad(z, bs, rs):
            return act_grad(z, _over_senders(grad, bs, rs, reverse), act)

        grads = _tile_backward(tile_grad, send, recv, edge, weight, reverse, ctx.budget, need)
        return (*grads, None, None, None, None)


def _over_senders(t: torch.Tensor, bs: slice, rs: slice, reverse: bool) -> torch.Tensor:
    """The tile ``(bs, rs)``'s receivers of a receiver-sized ``t`` ``(B, n_recv, H)``, as a view that
    broadcasts over the tile's senders (against its ``(b, rows, in, H)`` pre-activation)."""
    return t[bs, rs, None, :] if not reverse else t[bs, None, :, :]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of half-precision messages are accumulated in float32; other dtypes in their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tile_backward(tile_grad, send, recv, edge, weight, reverse: bool, budget: int, need):
    """Gradients ``(send, recv, edge, weight)`` (``None`` where ``need`` says not needed) from
    ``tile_grad(z, bs, rs)``, the loss's gradient ``G`` with respect to a tile's pre-activation ``z``
    (``(b, rows, in, H)``): its row sums, column sums, ``G C^T`` and ``x^T G``, tile by tile."""
    need_s, need_r, need_e, need_w = need
    B, out, inn, K = edge.shape
    H = weight.shape[1]
    gs = torch.zeros_like(send) if need_s else None
    gr = torch.zeros_like(recv) if need_r else None
    ge = torch.empty_like(edge) if need_e else None
    gw = torch.zeros_like(weight) if need_w else None
    for bs, rs in _tiles(B, out, inn * H * edge.element_size(), budget):
        G = tile_grad(_preact(send, recv, edge, weight, reverse, bs, rs), bs, rs)  # (b, rows, in, H)
        row_sum = G.sum(2) if (need_s or need_r) else None  # per row: (b, rows, H)
        col_sum = G.sum(1) if (need_s or need_r) else None  # per column: (b, in, H)
        if not reverse:
            if need_r:
                gr[bs, rs] += row_sum
            if need_s:
                gs[bs] += col_sum
        else:
            if need_s:
                gs[bs, rs] += row_sum
            if need_r:
                gr[bs] += col_sum
        if need_e:
            ge[bs, rs] = G @ weight.t()
        if need_w:
            gw += edge[bs, rs].reshape(-1, K).t() @ G.reshape(-1, H)
    return gs, gr, ge, gw


#: The statistics of ``phi(z)`` per receiver that :class:`_DenseStats` computes, and the aggregators
#: built from them: the sum (``sum``, ``mean``, ``std``), the sum of squares (``std``), the max, the min.
_STATS = {"sum": ("sum",), "mean": ("sum",), "std": ("sum", "sq"), "max": ("max",), "min": ("min",)}


class _DenseStats(torch.autograd.Function):
    """Per-receiver statistics of ``phi(z)`` over one dense block, tile by tile (any device): those of
    ``which`` among ``sum`` (of ``phi(z)``), ``sq`` (sum of ``phi(z)^2``), ``max`` and ``min``.

    ``max`` / ``min`` also keep, per receiver and channel, the index of the sender that attains them
    (node-sized, saved for backward, which sends the gradient to that sender alone). Backward
    recomputes each tile's ``z`` and forms ``dL/dphi = g_sum + 2 g_sq phi(z) + g_max [u = argmax] +
    g_min [u = argmin]``. Ties: ``torch.amax`` (the reference) splits the gradient evenly between
    senders of equal ``phi(z)``, this sends it to the first (both are subgradients). They differ only
    on exact ties: ReLU's zeros carry no gradient either way (``phi'(z) = 0`` there), but identical
    senders (equal states and edges, e.g. pruned weights, or an infinite receiver state) do, and
    there the gradients of the tied senders are not permuted with them. A NaN is the max and the
    min, as in the reference, and its gradient is NaN for every sender of the receiver (its saved
    sender index is -1).

    Half-precision inputs (float16, bfloat16) accumulate their statistics in float32, and the
    outputs stay float32 (the caller casts its result).
    """

    @staticmethod
    def forward(ctx, send, recv, edge, weight, reverse: bool, act: str, budget: int, which: tuple):
        ctx.set_materialize_grads(False)
        B, out, inn, _ = edge.shape
        H = weight.shape[1]
        n_recv, axis = (inn, 1) if reverse else (out, 2)  # axis: the senders' axis of a tile
        fill = {"sum": 0.0, "sq": 0.0, "max": -math.inf, "min": math.inf}
        acc = _accumulator_dtype(send.dtype)
        stats = {w: send.new_full((B, n_recv, H), fill[w], dtype=acc) for w in which}
        extremes = [w for w in which if w in ("max", "min")]
        index = {w: torch.zeros(B, n_recv, H, dtype=torch.long, device=send.device) for w in extremes}
        for bs, rs in _tiles(B, out, inn * H * edge.element_size(), budget):
            m = apply_act_(_preact(send, recv, edge, weight, reverse, bs, rs), act)
            at = (bs, rs) if not reverse else (bs,)  # the receivers this tile reaches
            for w in which:
                if w == "sum":
                    stats[w][at] += m.sum(axis, dtype=acc)
                elif w == "sq":
                    stats[w][at] += m.to(acc).square().sum(axis)
                else:
                    v, i = m.max(axis) if w == "max" else m.min(axis)
                    if reverse:  # rows of one network come in several tiles: keep the first extreme
                        i += rs.start
                        cur = stats[w][at]
                        better = (v > cur if w == "max" else v < cur) | (v.isnan() & ~cur.isnan())
                        v, i = torch.where(better, v, cur), torch.where(better, i, index[w][at])
                    stats[w][at], index[w][at] = v, i
        for w, i in index.items():  # -1: the extreme is NaN (its gradient is NaN for every sender)
            i.masked_fill_(stats[w].isnan(), -1)
        ctx.save_for_backward(send, recv, edge, weight, *index.values())
        ctx.reverse, ctx.act, ctx.budget, ctx.which = reverse, act, budget, which
        return tuple(stats[w] for w in which)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        send, recv, edge, weight, *indices = ctx.saved_tensors
        reverse, act, which = ctx.reverse, ctx.act, ctx.which
        g = dict(zip(which, grads))
        index = dict(zip([w for w in which if w in ("max", "min")], indices))

        axis = 1 if reverse else 2  # the senders' axis of a tile

        def tile_grad(z, bs, rs):
            def at(t):
                return _over_senders(t, bs, rs, reverse)

            acc = _accumulator_dtype(z.dtype)
            if g.get("sum") is not None:
                dphi = at(g["sum"]).to(acc).expand_as(z).clone()
            else:
                dphi = torch.zeros_like(z, dtype=acc)
            if g.get("sq") is not None:
                dphi.addcmul_(at(g["sq"]).to(acc), apply_act_(z.to(acc, copy=True), act), value=2)
            for w, idx in index.items():
                if g[w] is None:
                    continue
                gw, iw = at(g[w]), at(idx)
                nan = iw < 0
                if reverse:  # sender indices count the network's rows: keep those of this tile's rows
                    iw = iw - rs.start
                    mine = (iw >= 0) & (iw < rs.stop - rs.start)
                    gw, iw = torch.where(mine, gw, 0), iw.clamp(0, rs.stop - rs.start - 1)
                else:
                    gw, iw = torch.where(nan, 0, gw), iw.clamp_min(0)
                dphi.scatter_add_(axis, iw, gw.to(dphi.dtype))  # node-sized: each receiver's gradient to its sender
                dphi.masked_fill_(nan, math.nan)  # a NaN extreme: NaN for all its senders, as torch.amax's backward
            return act_grad(z, dphi.to(z.dtype), act)

        grads = _tile_backward(tile_grad, send, recv, edge, weight, reverse, ctx.budget, ctx.needs_input_grad[:4])
        return (*grads, None, None, None, None)


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
    tile_bytes: int | None = None,
) -> torch.Tensor:
    """See :func:`wgraph.kernels.message_pass` (arguments already validated, a case :func:`supports`
    accepts: dense and grouped blocks) and the module docstring.

    ``tile_bytes`` overrides :func:`tile_budget` for this call.
    """
    budget = tile_budget() if tile_bytes is None else tile_bytes
    if any(a not in _FUSED_AGGR for a in aggr):
        kw = dict(groups=groups, reverse=reverse, aggr=aggr, act=act, budget=budget)
        return _stats_aggregate(send, recv, edge, edge_weight, **kw)

    def dense_sum(s, r, e, scale=1.0):
        return _DenseSum.apply(s, r, e, edge_weight, reverse, act, budget, scale)

    return dense_sum_aggregate(dense_sum, send, recv, edge, groups=groups, reverse=reverse, aggr=aggr, scales=True)


def _stats_aggregate(send, recv, edge, edge_weight, *, groups, reverse, aggr, act, budget) -> torch.Tensor:
    """Any aggregators of a dense or grouped block (see :func:`~wgraph.kernels.blocks.on_dense`) from
    one :class:`_DenseStats` sweep; with ``n`` senders, ``mean = S / n`` and ``std = sqrt(max(S2 / n
    - mean^2, 0) + eps)`` (``S``, ``S2``: the sum and the sum of squares of ``phi(z)``), as the
    reference computes them."""
    which = tuple(dict.fromkeys(w for a in aggr for w in _STATS[a]))

    def aggregate(send, recv, edge, n):
        stats = dict(zip(which, _DenseStats.apply(send, recv, edge, edge_weight, reverse, act, budget, which)))
        outs = []
        for a in aggr:
            if a in ("sum", "max", "min"):
                outs.append(stats[a])
            elif a == "mean":
                outs.append(stats["sum"] / n)
            else:  # std
                mean = stats["sum"] / n
                outs.append(torch.sqrt((stats["sq"] / n - mean * mean).clamp_min(0) + std_eps))
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)).to(send.dtype)

    return on_dense(aggregate, send, recv, edge, groups=groups, reverse=reverse)


def supports(case: Case) -> Support:
    """Dense and grouped blocks, every aggregator, activation, dtype and device; the answer says
    which path computes the case (native C kernels, tiles, or the statistics sweep)."""
    if case.kind not in ("dense", "grouped"):
        return Support(False, f"{case.kind} blocks: one message per target, node-sized already (nothing to fuse)")
    if any(a not in _FUSED_AGGR for a in case.aggr):
        return Support(True, "one tile-by-tile statistics sweep (max / min / std) in torch")
    why_not = native.unusable(case.dtype, case.device, case.act)
    if why_not is None:
        return Support(True, "native C kernels (sum / mean)")
    return Support(True, f"tiles in torch (sum / mean; not native: {why_not})")


#: Dense and grouped blocks here; identity and copy blocks to the reference.
BACKEND = Backend("fused", message_pass, supports, fallback=reference.BACKEND)

__all__ = ["message_pass", "supports", "BACKEND", "TILE_BYTES", "tile_budget"]
