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
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Callable

import torch

from ..errors import WgraphError
from . import fused, reference
from .blocks import pair_sum
from .spec import ACTIVATIONS, AGGREGATORS, BLOCK_KINDS


class KernelError(WgraphError):
    """Bad arguments to :func:`message_pass`, or an unknown backend."""


_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {"reference": reference.message_pass}

#: Backends whose module is imported on first use, with the optional package each needs. Each
#: module defines ``message_pass`` with the backend signature.
_LAZY: dict[str, tuple[str, str]] = {
    "pyg": ("wgraph.kernels.pyg", "torch_geometric"),
    "scatter": ("wgraph.kernels.scatter", "torch_scatter"),
    "triton": ("wgraph.kernels.triton_fused", "triton"),
}

#: Used when a lazy backend's optional dependency is missing (with a warning naming it).
FALLBACK = "fused"


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Make ``fn`` selectable as ``message_pass(..., backend=name)``.

    ``fn`` receives the arguments of :func:`message_pass` after validation (``aggr`` as a tuple,
    without ``backend``; ``groups`` only when it is not 1) and must return what the reference
    backend returns.
    """
    _BACKENDS[name] = fn


# ``fused``: dense and grouped blocks with node-sized results and recomputation in the backward pass
# (sum / mean: native kernels on CPU, tile by tile elsewhere; max / min / std: tile by tile); identity /
# copy blocks use the reference.
register_backend("fused", fused.message_pass)


def available_backends() -> tuple[str, ...]:
    """Every backend name :func:`message_pass` accepts, ``"auto"`` included."""
    return (*_BACKENDS, *(n for n in _LAZY if n not in _BACKENDS), "auto")


def missing_package(name: str) -> str | None:
    """The optional package backend ``name`` needs and this environment lacks, or ``None``."""
    package = _LAZY[name][1] if name in _LAZY else None
    return package if package and importlib.util.find_spec(package) is None else None


def resolve_backend(name: str, device: torch.device | str | None = None) -> str:
    """The backend that ``name`` runs on ``device``.

    ``"auto"`` is ``"triton"`` on CUDA devices (when Triton imports) and ``"fused"`` elsewhere. A
    lazy backend whose optional dependency does not import resolves to :data:`FALLBACK`, with a
    warning that names the missing package.
    """
    if name == "auto":
        name = "triton" if torch.device(device or "cpu").type == "cuda" else "fused"
    if name in _BACKENDS:
        return name
    if name not in _LAZY:
        raise KernelError(f"unknown message-passing backend {name!r}; available: {list(available_backends())}")
    try:
        module = importlib.import_module(_LAZY[name][0])
    except ImportError as e:
        warnings.warn(
            f"message-passing backend {name!r} is unavailable ({e}); using {FALLBACK!r} instead. "
            f"Install the missing package to use it.",
            stacklevel=3,
        )
        _BACKENDS[name] = _BACKENDS[FALLBACK]
        return name
    register_backend(name, module.message_pass)
    return name


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
    backend: str = "reference",
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
        backend: a name from :func:`available_backends` (``"auto"``: see :func:`resolve_backend`).

    Returns:
        ``(B, n_recv, H * len(aggr))``, aggregators concatenated in the given order.
    """
    aggr = (aggr,) if isinstance(aggr, str) else tuple(aggr)
    backend = resolve_backend(backend, send.device)
    if kind not in BLOCK_KINDS:
        raise KernelError(f"unknown block kind {kind!r}; expected one of {list(BLOCK_KINDS)}")
    if not aggr or any(a not in AGGREGATORS for a in aggr):
        raise KernelError(f"aggr must be a non-empty list of {list(AGGREGATORS)}, got {list(aggr)}")
    if act not in ACTIVATIONS:
        raise KernelError(f"unknown activation {act!r}; expected one of {list(ACTIVATIONS)}")
    if send.dim() != 3 or recv.dim() != 3 or send.shape[0] != recv.shape[0] or send.shape[2] != recv.shape[2]:
        raise KernelError(f"send and recv must be (B, n, H) with equal B and H, got {tuple(send.shape)}, {tuple(recv.shape)}")
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
            raise KernelError(f"{kind} block without edge state: edge_weight must be (1, H), got {tuple(edge_weight.shape)}")
        if edge is not None and tuple(edge.shape) != (B, n_tgt, K):
            raise KernelError(f"{kind} block: edge must be (B, targets, K) = {(B, n_tgt, K)}, got {tuple(edge.shape)}")
    extra = {"groups": groups} if groups != 1 else {}
    return _BACKENDS[backend](send, recv, edge, edge_weight, kind=kind, reverse=reverse, aggr=aggr, act=act, **extra)


__all__ = [
    "message_pass", "register_backend", "available_backends", "resolve_backend", "missing_package", "KernelError", "AGGREGATORS", "ACTIVATIONS",
    "pair_sum",
]  # fmt: skip
