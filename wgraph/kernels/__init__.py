r"""Message passing over weight-graph edge blocks, behind one function with swappable backends.

For one edge block, with sender states already projected (``send = A h_u``), receiver states
already projected (``recv = B h_v + b``) and raw edge features ``x_uv`` lifted by ``C``:

.. math::

    m_v = \bigoplus_{u \to v} \phi\big(A h_u + B h_v + C x_{uv}\big)

where :math:`\bigoplus` is one or more aggregators (sum, mean, max, min, std; their results are
concatenated) and :math:`\phi` a pointwise nonlinearity. The linear map that usually follows the
aggregation is left to the caller (it commutes with sum and mean, so a fused backend never needs it).

The block structure stays explicit, so a backend can exploit it:

* ``kind="dense"``: every ``(out, in)`` pair of the block's two layers is an edge; ``edge`` is
  ``(B, out, in, K)`` (the parameter in its native shape with the kernel flattened into ``K``).
  ``reverse=False`` sends from the block's input layer (columns) to its output layer (rows);
  ``reverse=True`` sends from rows to columns, from the same edge tensor (no transpose is made).
* ``kind="grouped"``: a grouped convolution, block diagonal with ``groups`` groups: ``edge`` is
  ``(B, out, in // groups, K)`` and row ``o`` reads the ``in // groups`` columns of its group
  ``o // (out // groups)``.
* ``kind="identity"`` / ``"copy"``: edges of value 1 from source ``i`` to targets
  ``i * inner + s`` for ``s < inner`` (``inner = 1``: a residual connection ``i -> i``; a copy block
  of a flatten has one target per spatial position). The caller passes the sources and targets
  the block covers (``send``/``recv`` sliced to them); ``inner`` follows from their sizes.
  ``edge`` is ``None`` (the edge feature is the constant 1, so ``C x`` is ``edge_weight[0]``) or a
  ``(B, n_targets, K)`` edge state in target order. ``reverse=True`` sends targets -> sources.

Because ``C`` acts on the raw ``K``-dimensional edge features inside the kernel, a backend can
re-lift the weights at every layer and never hold an ``E x H`` edge state.

Backends (:mod:`wgraph.kernels.backend`, :mod:`wgraph.kernels.registry`) declare which cases they
compute themselves; the rest go down an explicit fallback chain (``triton -> fused -> reference``)
that :func:`explain` prints. Resolve a backend once per layer and device with :func:`get_backend`
and pass the :class:`Backend` as ``backend=``; a name is resolved on every call.
"""

from __future__ import annotations

import torch

from .backend import Backend, Case, KernelError, Support
from .blocks import pair_sum
from .registry import (
    FALLBACK,
    Explanation,
    available_backends,
    explain,
    get_backend,
    missing_package,
    register_backend,
    resolve_backend,
)
from .spec import ACTIVATION_TABLE, ACTIVATIONS, AGGREGATORS, BLOCK_KINDS


def message_pass(
    send: torch.Tensor,
    recv: torch.Tensor,
    edge: torch.Tensor | None,
    edge_weight: torch.Tensor,
    *,
    kind: str = "dense",
    reverse: bool = False,
    aggr: str | tuple[str, ...] | list[str] = "sum",
    act: str = "relu",
    groups: int = 1,
    backend: str | Backend = "reference",
) -> torch.Tensor:
    """Aggregated messages of one edge block, one row per receiving node.

    Args:
        send: ``(B, n_send, H)`` projected sender states ``A h_u``.
        recv: ``(B, n_recv, H)`` projected receiver states ``B h_v`` (plus any bias).
        edge: dense: ``(B, out, in, K)``; identity: ``None`` or ``(B, n, K)``.
        edge_weight: ``(K, H)``, the map ``C`` applied to edge features (``x @ edge_weight``).
        kind: ``"dense"``, ``"grouped"``, ``"identity"`` or ``"copy"``.
        reverse: dense / grouped blocks: ``False`` sends columns -> rows (``n_send = in``, ``n_recv = out``),
            ``True`` rows -> columns (``n_send = out``, ``n_recv = in``); identity / copy blocks:
            ``False`` sends sources -> targets, ``True`` targets -> sources.
        aggr: one aggregator name or a sequence of them (see :data:`AGGREGATORS`).
        groups: grouped blocks: the number of groups (1 for every other kind).
        act: the nonlinearity ``phi`` (a key of :data:`ACTIVATIONS`).
        backend: a name from :func:`available_backends` (``"auto"``: see :func:`get_backend`) or a
            :class:`Backend` resolved by :func:`get_backend`.

    Returns:
        ``(B, n_recv, H * len(aggr))``, aggregators concatenated in the given order.
    """
    aggr = (aggr,) if isinstance(aggr, str) else tuple(aggr)
    backend = get_backend(backend, send.device)
    if kind not in BLOCK_KINDS:
        raise KernelError(f"unknown block kind {kind!r}; expected one of {list(BLOCK_KINDS)}")
    if not aggr or any(a not in AGGREGATORS for a in aggr):
        raise KernelError(f"aggr must be a non-empty list of {list(AGGREGATORS)}, got {list(aggr)}")
    if act not in ACTIVATIONS:
        raise KernelError(f"unknown activation {act!r}; expected one of {list(ACTIVATIONS)}")
    if send.dim() != 3 or recv.dim() != 3 or send.shape[0] != recv.shape[0] or send.shape[2] != recv.shape[2]:
        shapes = f"{tuple(send.shape)}, {tuple(recv.shape)}"
        raise KernelError(f"send and recv must be (B, n, H) with equal B and H, got {shapes}")
    B, H = send.shape[0], send.shape[2]
    if edge_weight.dim() != 2 or edge_weight.shape[1] != H:
        raise KernelError(f"edge_weight must be (K, {H}), got {tuple(edge_weight.shape)}")
    K = edge_weight.shape[0]
    if groups < 1 or (groups > 1 and kind != "grouped"):
        raise KernelError(f"groups = {groups} is only valid (and > 1) for grouped blocks, not {kind!r}")
    if kind in ("dense", "grouped"):
        out, inn = (recv.shape[1], send.shape[1]) if not reverse else (send.shape[1], recv.shape[1])
        if out % groups or inn % groups:
            raise KernelError(f"grouped block: {out} rows and {inn} columns do not split into {groups} groups")
        want = (B, out, inn // groups, K)
        if edge is None or tuple(edge.shape) != want:
            got = None if edge is None else tuple(edge.shape)
            raise KernelError(f"{kind} block: edge must be (B, out, in // groups, K) = {want}, got {got}")
    else:
        n_src, n_tgt = (send.shape[1], recv.shape[1]) if not reverse else (recv.shape[1], send.shape[1])
        if n_src == 0 or n_tgt % n_src or (kind == "identity" and n_tgt != n_src):
            raise KernelError(
                f"{kind} block: targets must be a multiple of sources (equal for identity), got {n_src} sources "
                f"and {n_tgt} targets"
            )
        if edge is None and K != 1:
            got = tuple(edge_weight.shape)
            raise KernelError(f"{kind} block without edge state: edge_weight must be (1, H), got {got}")
        if edge is not None and tuple(edge.shape) != (B, n_tgt, K):
            raise KernelError(f"{kind} block: edge must be (B, targets, K) = {(B, n_tgt, K)}, got {tuple(edge.shape)}")
    return backend(send, recv, edge, edge_weight, kind=kind, reverse=reverse, aggr=aggr, act=act, groups=groups)


__all__ = [
    "message_pass",
    "Backend",
    "Case",
    "Support",
    "get_backend",
    "explain",
    "Explanation",
    "register_backend",
    "available_backends",
    "resolve_backend",
    "missing_package",
    "FALLBACK",
    "KernelError",
    "AGGREGATORS",
    "ACTIVATIONS",
    "ACTIVATION_TABLE",
    "BLOCK_KINDS",
    "pair_sum",
]
