r"""Compiled math of the ``fused`` backend on CPU: one loop nest per reduction, nothing edge-sized.

For a dense block with edge features ``x`` of shape ``(B, out, in, K)``, row states ``p``
``(B, out, H)`` and column states ``q`` ``(B, in, H)`` (receivers and senders for ``reverse=False``,
senders and receivers for ``reverse=True``):

.. math::

    z_{vu} = p_v + q_u + \sum_{k < K} x_{vuk} C_k \qquad (K \text{ unrolled: one pointwise expression})

* forward: :math:`\sum_u \phi(z_{vu})` (rows receive) or :math:`\sum_v \phi(z_{vu})` (columns receive);
* backward, with :math:`G_{vu} = g \odot \phi'(z_{vu})` (``g`` the gradient of the receiver):

  - :math:`R_v = \sum_u G_{vu}` and :math:`Q_u = \sum_v G_{vu}` (the node gradients);
  - :math:`P_{kv} = \sum_u x_{vuk} G_{vu}`, then :math:`\partial L / \partial C_k = \sum_{b, v} P_{kv}`;
  - :math:`\partial L / \partial x_{vuk} = \sum_h G_{vuh} C_{kh}` (only when ``x`` requires grad);

  each only when needed.

The forward and the backward each go through :func:`torch.compile` (inductor's C++ code
generation), which turns them into loops that recompute ``z`` from the node states and ``x`` in
registers and write only the outputs: no ``(B, out, in, H)`` tensor is ever allocated, so no tiling
is needed and no pass over tile-sized temporaries is made. Reductions along one axis share one loop
nest (``R`` and the ``K`` sums ``P``); each other axis gets its own loop nest, which recomputes
``G``: :data:`OPTIONS` forbid inductor to store ``G``, shared by several reductions, in an
edge-sized buffer.

Used for float32 / float64 CPU tensors with ``K <=`` :data:`MAX_K` (a Linear weight: ``K = 1``;
3x3 convolutions: 9) and at least :data:`MIN_ELEMENTS` pre-activations. The first call of each variant (``K``, activation, direction, dtype) compiles
it, a few seconds each; inductor's on-disk cache makes later processes fast. Set the environment
variable ``WGRAPH_COMPILE=0`` (or :data:`ENABLED` to ``False``) for the eager tiles of
:mod:`wgraph.kernels.fused`; if compiling fails (no C++ compiler, an unsupported platform) a
warning names the reason once and the eager tiles take over.
"""

from __future__ import annotations

import functools
import os
import types
import warnings

import torch

from .spec import ACTIVATIONS, act_grad

#: Largest kernel size ``K`` that is unrolled into the compiled expression (7x7 kernels and
#: Fourier edge features take the eager tiles, where the lift is a matrix product).
MAX_K = 16

#: Smallest block, in pre-activations ``B * out * in * H``, that runs compiled: smaller blocks (unit
#: tests, a few small networks) take the eager tiles rather than wait for a compile that gains little
#: there (benchmarks/bench_compile.py: 64 small CNNs at width 32, 2^19 pre-activations per conv
#: block, saved about 20 ms per step after a first step of 30 s with a warm cache, 108 s cold).
MIN_ELEMENTS = 1 << 20

#: Compile the fused math (``WGRAPH_COMPILE=0`` in the environment turns it off at import).
ENABLED = os.environ.get("WGRAPH_COMPILE", "1") != "0"

#: Inductor settings: never store a shared intermediate (``G``, read by several reductions) in an
#: edge-sized buffer; fused reductions recompute it in registers instead.
OPTIONS = {"realize_reads_threshold": 1 << 30, "realize_opcount_threshold": 1 << 30, "realize_acc_reads_threshold": 1 << 30}

_DTYPES = (torch.float32, torch.float64)
_failed: list[str] = []  # the reason compiling failed, once it has


def usable(edge: torch.Tensor, hidden: int) -> bool:
    """Whether a dense block with these edge features ``(B, out, in, K)`` and ``hidden`` channels runs compiled."""
    return (
        ENABLED
        and not _failed
        and edge.device.type == "cpu"
        and edge.dtype in _DTYPES
        and edge.shape[-1] <= MAX_K
        and edge[..., 0].numel() * hidden >= MIN_ELEMENTS
    )


def _preact(p, q, x, c, K: int):
    z = p[:, :, None, :] + q[:, None, :, :]
    for k in range(K):
        z = z + x[..., k, None] * c[k]
    return z


@functools.lru_cache(maxsize=None)
def _compiled(K: int, act: str, reverse: bool, need: tuple[bool, ...] | None):
    """The compiled forward (``need is None``) or backward of one variant; the backward returns the
    row sums, column sums, lift sums and edge gradients that ``need`` asks for, in that order."""
    phi = ACTIVATIONS[act]

    def forward(p, q, x, c):
        return phi(_preact(p, q, x, c, K)).sum(1 if reverse else 2)

    def backward(p, q, x, c, g):
        G = act_grad(_preact(p, q, x, c, K), g[:, None] if reverse else g[:, :, None], act)
        rows, cols, lift, edges = need
        out = []
        if rows:
            out.append(G.sum(2))
        if cols:
            out.append(G.sum(1))
        if lift:
            out.append(torch.stack([(x[..., k, None] * G).sum(2) for k in range(K)]))
        if edges:
            out.append(torch.stack([(G * c[k]).sum(-1) for k in range(K)], dim=-1))
        return out

    fn = forward if need is None else backward
    # Dynamo keeps compiled entries (and checks their guards on every call) per code object: a code
    # object of its own per variant keeps that list to the variant's few shape specializations.
    name = f"wgraph_{fn.__name__}_k{K}_{act}" + ("_reverse" if reverse else "") + "".join(str(int(n)) for n in need or ())
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    fn = types.FunctionType(code, fn.__globals__, name, None, fn.__closure__)
    return torch.compile(fn, dynamic=True, fullgraph=True, options=OPTIONS)


def _run(variant: tuple, *args):
    """Call one compiled function; ``None`` (and compiling switched off, with a warning) if it fails."""
    config = torch._dynamo.config
    saved = config.recompile_limit, config.fail_on_recompile_limit_hit
    # A variant recompiles for new size-0/1 specializations: allow them, and fail rather than run the
    # expression eagerly (which would allocate the edge-sized tensor). Plain attributes: cheaper than
    # config.patch on every call.
    config.recompile_limit, config.fail_on_recompile_limit_hit = max(saved[0], 64), True
    try:
        return _compiled(*variant)(*args)
    except Exception as err:  # no C++ compiler, an unsupported platform or torch build, ...
        _failed.append(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        warnings.warn(
            f"wgraph: compiling the fused message-passing kernels failed ({_failed[0]}); the fused backend "
            "uses its eager tiles from now on (slower, same results). Set WGRAPH_COMPILE=0 to skip compiling.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    finally:
        config.recompile_limit, config.fail_on_recompile_limit_hit = saved


def forward(send, recv, edge, weight, reverse: bool, act: str) -> torch.Tensor | None:
    """Per-receiver sum of ``phi(z)`` over a dense block (``None`` if compiling failed)."""
    p, q = (recv, send) if not reverse else (send, recv)
    return _run((weight.shape[0], act, reverse, None), p, q, edge, weight)


def backward(send, recv, edge, weight, grad, reverse: bool, act: str, need: tuple[bool, bool, bool, bool]):
    """Gradients ``(send, recv, edge, weight)`` (``None`` where not needed), or ``None`` if compiling failed."""
    need_s, need_r, need_e, need_w = need
    p, q = (recv, send) if not reverse else (send, recv)
    # rows receive forward (their gradient is the row sum), columns receive in reverse
    need_rows, need_cols = (need_r, need_s) if not reverse else (need_s, need_r)
    flags = (need_rows, need_cols, need_w, need_e)
    out = _run((weight.shape[0], act, reverse, flags), p, q, edge, weight, grad)
    if out is None:
        return None
    out = iter(out)
    g_rows, g_cols, lift, g_edge = (next(out) if f else None for f in flags)
    g_send, g_recv = (g_cols, g_rows) if not reverse else (g_rows, g_cols)
    return g_send, g_recv, g_edge, (lift.sum((1, 2)) if need_w else None)


__all__ = ["ENABLED", "MAX_K", "MIN_ELEMENTS", "usable", "forward", "backward"]
