r"""Triton message-passing backend (CUDA): fused forward and backward kernels for dense blocks.

The math is that of :mod:`wgraph.kernels.fused` (and of the reference). For a dense block with edge
features ``x`` of shape ``(B, out, in, K)`` write ``a_o`` for the state of row ``o`` (the block's
output layer) and ``c_i`` for the state of column ``i`` (its input layer): with ``reverse=False``
the rows receive (``a = recv``, ``c = send``), with ``reverse=True`` they send (``a = send``,
``c = recv``). Then

.. math::

    z_{oi} = a_o + c_i + x_{oi} C \in \mathbb{R}^H, \qquad
    m_o = \sum_i \phi(z_{oi}) \;\;(\text{reverse=False}), \qquad
    m_i = \sum_o \phi(z_{oi}) \;\;(\text{reverse=True}),

and ``mean`` is the sum divided by the sender count (``in``, resp. ``out``). ``(B, out, in, H)``
never exists in memory: a kernel program owns one network ``b`` and a block of output nodes (rows
for ``reverse=False``, columns for ``reverse=True``) and loops over the other axis in tiles of
``(BO, BI, BH)``. Per tile it loads ``x`` once (``K`` strided loads of ``(BO, BI)``), forms ``z`` in
registers (``K`` broadcast multiply-adds with rows of ``C``), applies ``phi`` and adds the tile into a
tile-shaped accumulator, which is reduced to the program's output nodes once, after the loop (a
reduction across threads per tile would cost synchronization in the inner loop). Both directions
read the same ``x`` (no transpose); each output node is written by exactly one program, so the
result is deterministic (no atomics).

Backward (a custom :class:`torch.autograd.Function`; only the inputs are saved): with ``g`` the
incoming gradient of the receivers, ``G_{oi} = g_{recv(oi)} \odot \phi'(z_{oi})`` is recomputed tile by
tile and reduced to

* ``dL/da_o = \sum_i G_{oi}`` and ``dL/dc_i = \sum_o G_{oi}``,
* ``dL/dx_{oi} = G_{oi} C^T`` (only when ``x`` requires grad; edge-sized, like ``x``),
* ``dL/dC = \sum_{b,o,i} x_{oi}^T G_{oi}``.

Two launches, both deterministic: a row kernel (programs own row blocks, loop over columns) gives
``dL/da``, ``dL/dx`` and one ``(K, H)`` partial of ``dL/dC`` per program (summed by torch afterwards);
a column kernel (programs own column blocks, loop over rows) gives ``dL/dc``. ``z`` is thus
recomputed twice in the backward pass; in exchange nothing bigger than ``x`` is ever allocated.

Activations: :data:`ACTS` (``relu``, ``tanh``, ``silu``, ``gelu`` (exact erf GELU, as
:func:`torch.nn.functional.gelu`) and ``identity``), branched on by their codes in
:data:`wgraph.kernels.spec.ACTIVATION_TABLE`; ``phi'`` is the derivative torch uses
(``relu'(0) = 0``). NaN and Inf propagate as in torch: ReLU is ``where(z <= 0, 0, z)`` (a NaN stays
NaN; ``tl.maximum`` would drop it) and its derivative ``where(z <= 0, 0, 1)``. Dtypes: float32 and
float64 are computed in their own precision; float16 and bfloat16 are loaded, computed and
accumulated in float32 and the results cast back.

Grouped blocks fold their groups into the batch (a reshape of node states and edge, as the
reference does). :func:`supports` declines everything else, which the dispatcher hands to this
backend's fallback, ``fused`` (it computes aggregators ``max``, ``min`` and ``std`` tile by tile in
torch on the same device, half precision accumulated in float32, and passes identity and copy
blocks on to the reference): those aggregators; identity and copy blocks; other dtypes and
activations; inputs on different devices or of different dtypes; and tensors that are not on a
CUDA device, except under the Triton interpreter; and blocks with an empty tensor:

* **CPU tensors and** ``TRITON_INTERPRET=1``: Triton decides, when a kernel is *decorated* (that is,
  when this module is first imported), whether it is compiled or interpreted. If
  ``TRITON_INTERPRET=1`` is in the environment at that moment, the kernels here are interpreted
  (numpy, slow, for tests on machines without a GPU) and run on CPU tensors too. Otherwise CPU
  tensors are passed to the ``fused`` backend. :data:`INTERPRETED` says which case holds.

The backward is first-order only (``once_differentiable``), as in ``fused``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import fused
from .backend import Backend, Case, Support
from .blocks import dense_sum_aggregate
from .spec import act_code

#: The activations these kernels implement; each is branched on by its code (a compile-time constant).
ACTS = ("identity", "relu", "tanh", "silu", "gelu")
_IDENTITY = tl.constexpr(act_code("identity"))
_RELU = tl.constexpr(act_code("relu"))
_TANH = tl.constexpr(act_code("tanh"))
_SILU = tl.constexpr(act_code("silu"))
_GELU = tl.constexpr(act_code("gelu"))

_TRITON_AGGR = ("sum", "mean")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Elements of one ``(BO, BI, BH)`` tile (registers of one program). Module-level so tests can force
#: small tiles (many tiles per block, masked edges).
TILE_ELEMS = 4096
#: Warps per program (Triton's launch option).
NUM_WARPS = 4
#: Upper bound on the column block ``BI`` (``x`` is contiguous along columns: this is the width of a
#: coalesced load). Module-level for tests.
MAX_BI = 32


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _phi(z, ACT: tl.constexpr):
    """The nonlinearity of code ACT (one of :data:`ACTS`)."""
    if ACT == _RELU:  # not tl.maximum: a NaN stays NaN
        z = tl.where(z <= 0, 0.0, z).to(z.dtype)
    elif ACT == _TANH:  # tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2|z|) (no overflow)
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        z = tl.where(z >= 0, t, -t)
    elif ACT == _SILU:
        z = z * tl.sigmoid(z)
    elif ACT == _GELU:  # exact GELU: z Phi(z)
        z = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    else:
        tl.static_assert(ACT == _IDENTITY, "activation not implemented by the triton kernels")
    return z


@triton.jit
def _dphi(z, ACT: tl.constexpr):
    """The derivative of the nonlinearity at z (ReLU's passes a NaN's gradient on, as torch's)."""
    if ACT == _IDENTITY:
        d = tl.full(z.shape, 1.0, z.dtype)
    elif ACT == _RELU:
        d = tl.where(z <= 0, 0.0, 1.0).to(z.dtype)
    elif ACT == _TANH:
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        d = 1.0 - t * t
    elif ACT == _SILU:
        s = tl.sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    else:  # GELU: Phi(z) + z pdf(z)
        tl.static_assert(ACT == _GELU, "activation not implemented by the triton kernels")
        d = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    return d


@triton.jit
def _node_tile(ptr, n, m, h, hm, s_n, DT: tl.constexpr):
    """Node states ``ptr[n, h]`` (``(len(n), BH)``, zero where masked), in dtype DT."""
    v = tl.load(ptr + n[:, None] * s_n + h[None, :], mask=m[:, None] & hm[None, :], other=0.0)
    return v.to(DT)


@triton.jit
def _preact(a, c, x_ptr, w_ptr, o, i, om, im, h, hm, s_xo, s_xi, s_xk, s_wk, K: tl.constexpr):
    """``z = a_o + c_i + sum_k x_{oi k} C_k`` for one ``(BO, BI, BH)`` tile (``a``: ``(BO, BH)``,
    ``c``: ``(BI, BH)``; ``x_ptr`` already points at this network's block)."""
    z = a[:, None, :] + c[None, :, :]
    xm = om[:, None] & im[None, :]
    for k in tl.static_range(K):
        xk = tl.load(x_ptr + o[:, None] * s_xo + i[None, :] * s_xi + k * s_xk, mask=xm, other=0.0).to(z.dtype)
        wk = tl.load(w_ptr + k * s_wk + h, mask=hm, other=0.0).to(z.dtype)
        z += xk[:, :, None] * wk[None, None, :]
    return z


@triton.jit
def _fwd_kernel(
    a_ptr, c_ptr, x_ptr, w_ptr, out_ptr,
    O, I, H,
    s_ab, s_ao, s_cb, s_ci, s_xb, s_xo, s_xi, s_xk, s_wk, s_ob, s_on,
    K: tl.constexpr, ACT: tl.constexpr, FIX_ROWS: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr,
):
    """``out[b, n] = sum over the other axis of phi(z)``: n a row (FIX_ROWS) or a column.

    Grid: (B, blocks of the output axis). Each program loops over the other axis in tiles.
    """
    b = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1)
    DT = out_ptr.dtype.element_ty
    a_ptr += b * s_ab
    c_ptr += b * s_cb
    x_ptr += b * s_xb
    out_ptr += b * s_ob
    h = tl.arange(0, BH)
    hm = h < H
    if FIX_ROWS:
        o = f * BO + tl.arange(0, BO)
        om = o < O
        a = _node_tile(a_ptr, o, om, h, hm, s_ao, DT)
        acc = tl.zeros((BO, BI, BH), DT)  # reduced over columns once, after the loop
        for i0 in range(0, I, BI):
            i = i0 + tl.arange(0, BI)
            im = i < I
            c = _node_tile(c_ptr, i, im, h, hm, s_ci, DT)
            m = _phi(_preact(a, c, x_ptr, w_ptr, o, i, om, im, h, hm, s_xo, s_xi, s_xk, s_wk, K), ACT)
            acc += tl.where(im[None, :, None], m, 0.0)
        tl.store(out_ptr + o[:, None] * s_on + h[None, :], tl.sum(acc, 1), mask=om[:, None] & hm[None, :])
    else:
        i = f * BI + tl.arange(0, BI)
        im = i < I
        c = _node_tile(c_ptr, i, im, h, hm, s_ci, DT)
        acc = tl.zeros((BO, BI, BH), DT)  # reduced over rows once, after the loop
        for o0 in range(0, O, BO):
            o = o0 + tl.arange(0, BO)
            om = o < O
            a = _node_tile(a_ptr, o, om, h, hm, s_ao, DT)
            m = _phi(_preact(a, c, x_ptr, w_ptr, o, i, om, im, h, hm, s_xo, s_xi, s_xk, s_wk, K), ACT)
            acc += tl.where(om[:, None, None], m, 0.0)
        tl.store(out_ptr + i[:, None] * s_on + h[None, :], tl.sum(acc, 0), mask=im[:, None] & hm[None, :])


@triton.jit
def _bwd_rows_kernel(
    a_ptr, c_ptr, x_ptr, w_ptr, g_ptr, da_ptr, dx_ptr, dw_ptr,
    O, I, H,
    s_ab, s_ao, s_cb, s_ci, s_xb, s_xo, s_xi, s_xk, s_wk, s_gb, s_gn,
    s_dab, s_dao, s_dxb, s_dxo, s_dxi, s_dxk,
    K: tl.constexpr, ACT: tl.constexpr, G_ROWS: tl.constexpr,
    NEED_A: tl.constexpr, NEED_X: tl.constexpr, NEED_W: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
):
    """Programs own row blocks and loop over columns: ``dL/da`` (rows), ``dL/dx`` and ``(K, H)``
    partials of ``dL/dC`` (one per program, at ``dw_ptr[program]``).

    ``g`` is indexed by rows (G_ROWS) or by columns (the receivers).
    """
    b = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1)
    DT = da_ptr.dtype.element_ty
    a_ptr += b * s_ab
    c_ptr += b * s_cb
    x_ptr += b * s_xb
    g_ptr += b * s_gb
    h = tl.arange(0, BH)
    hm = h < H
    o = f * BO + tl.arange(0, BO)
    om = o < O
    a = _node_tile(a_ptr, o, om, h, hm, s_ao, DT)
    if G_ROWS:
        g_rows = _node_tile(g_ptr, o, om, h, hm, s_gn, DT)
    # Tile-shaped accumulators, reduced once after the loop (no cross-thread reduction per tile); dC
    # of a K > 1 block is reduced per tile (K tile-shaped accumulators would not fit in registers).
    da = tl.zeros((BO, BI, BH), DT)
    dw1 = tl.zeros((BO, BI, BH), DT)
    kk = tl.arange(0, BK)
    dw = tl.zeros((BK, BH), DT)
    for i0 in range(0, I, BI):
        i = i0 + tl.arange(0, BI)
        im = i < I
        c = _node_tile(c_ptr, i, im, h, hm, s_ci, DT)
        z = _preact(a, c, x_ptr, w_ptr, o, i, om, im, h, hm, s_xo, s_xi, s_xk, s_wk, K)
        if G_ROWS:
            G = g_rows[:, None, :] * _dphi(z, ACT)
        else:
            G = _node_tile(g_ptr, i, im, h, hm, s_gn, DT)[None, :, :] * _dphi(z, ACT)
        xm = om[:, None] & im[None, :]
        # masked channels too: their z is x * 0, NaN for an infinite x, and would reach dx's sums
        G = tl.where(xm[:, :, None] & hm[None, None, :], G, 0.0)
        if NEED_A:
            da += G
        if NEED_X or NEED_W:
            for k in tl.static_range(K):
                if NEED_X:
                    wk = tl.load(w_ptr + k * s_wk + h, mask=hm, other=0.0).to(DT)
                    dxk = tl.sum(G * wk[None, None, :], 2)
                    tl.store(
                        dx_ptr + b * s_dxb + o[:, None] * s_dxo + i[None, :] * s_dxi + k * s_dxk, dxk, mask=xm
                    )
                if NEED_W:
                    xk = tl.load(x_ptr + o[:, None] * s_xo + i[None, :] * s_xi + k * s_xk, mask=xm, other=0.0)
                    if K == 1:
                        dw1 += xk.to(DT)[:, :, None] * G
                    else:
                        dwk = tl.sum(tl.sum(xk.to(DT)[:, :, None] * G, 0), 0)
                        dw += tl.where(kk[:, None] == k, dwk[None, :], 0.0)
    if NEED_A:
        tl.store(da_ptr + b * s_dab + o[:, None] * s_dao + h[None, :], tl.sum(da, 1), mask=om[:, None] & hm[None, :])
    if NEED_W:
        if K == 1:
            dw = tl.sum(tl.sum(dw1, 0), 0)[None, :]
        prog = b * tl.num_programs(1) + f
        tl.store(dw_ptr + prog * K * H + kk[:, None] * H + h[None, :], dw, mask=(kk[:, None] < K) & hm[None, :])


@triton.jit
def _bwd_cols_kernel(
    a_ptr, c_ptr, x_ptr, w_ptr, g_ptr, dc_ptr,
    O, I, H,
    s_ab, s_ao, s_cb, s_ci, s_xb, s_xo, s_xi, s_xk, s_wk, s_gb, s_gn, s_dcb, s_dci,
    K: tl.constexpr, ACT: tl.constexpr, G_ROWS: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr,
):
    """Programs own column blocks and loop over rows: ``dL/dc_i = sum_o G_{oi}``."""
    b = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1)
    DT = dc_ptr.dtype.element_ty
    a_ptr += b * s_ab
    c_ptr += b * s_cb
    x_ptr += b * s_xb
    g_ptr += b * s_gb
    h = tl.arange(0, BH)
    hm = h < H
    i = f * BI + tl.arange(0, BI)
    im = i < I
    c = _node_tile(c_ptr, i, im, h, hm, s_ci, DT)
    if not G_ROWS:
        g_cols = _node_tile(g_ptr, i, im, h, hm, s_gn, DT)
    dc = tl.zeros((BO, BI, BH), DT)  # reduced over rows once, after the loop
    for o0 in range(0, O, BO):
        o = o0 + tl.arange(0, BO)
        om = o < O
        a = _node_tile(a_ptr, o, om, h, hm, s_ao, DT)
        z = _preact(a, c, x_ptr, w_ptr, o, i, om, im, h, hm, s_xo, s_xi, s_xk, s_wk, K)
        if G_ROWS:
            G = _node_tile(g_ptr, o, om, h, hm, s_gn, DT)[:, None, :] * _dphi(z, ACT)
        else:
            G = g_cols[None, :, :] * _dphi(z, ACT)
        dc += tl.where(om[:, None, None] & im[None, :, None], G, 0.0)
    tl.store(dc_ptr + b * s_dcb + i[:, None] * s_dci + h[None, :], tl.sum(dc, 0), mask=im[:, None] & hm[None, :])


#: True when the kernels above were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU).
INTERPRETED = not isinstance(_fwd_kernel, triton.runtime.JITFunction)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _tiles(out: int, inn: int, H: int) -> tuple[int, int, int]:
    """``(BO, BI, BH)``: all H channels at once, up to :data:`MAX_BI` columns (the contiguous axis of
    ``x``), as many rows as keep the tile within :data:`TILE_ELEMS` elements."""
    BH = _pow2(H)
    BI = max(1, min(_pow2(inn), MAX_BI, max(1, TILE_ELEMS // BH)))
    BO = max(1, min(_pow2(out), TILE_ELEMS // (BI * BH)))
    return BO, BI, BH


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _TritonDenseSum(torch.autograd.Function):
    """Sum over senders of ``phi(z)`` for one dense block (see the module docstring)."""

    @staticmethod
    def forward(ctx, send, recv, edge, weight, reverse: bool, act: str):
        send, recv, weight = _last_contiguous(send), _last_contiguous(recv), _last_contiguous(weight)
        B, out, inn, K = edge.shape
        H = weight.shape[1]
        a, c = (recv, send) if not reverse else (send, recv)
        BO, BI, BH = _tiles(out, inn, H)
        n_recv = inn if reverse else out
        acc = torch.empty(B, n_recv, H, dtype=_acc_dtype(send.dtype), device=send.device)
        grid = (B, triton.cdiv(n_recv, BI if reverse else BO))
        _fwd_kernel[grid](
            a, c, edge, weight, acc, out, inn, H,
            a.stride(0), a.stride(1), c.stride(0), c.stride(1), *edge.stride(), weight.stride(0),
            acc.stride(0), acc.stride(1),
            K=K, ACT=act_code(act), FIX_ROWS=not reverse, BO=BO, BI=BI, BH=BH, num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(send, recv, edge, weight)
        ctx.reverse, ctx.act = reverse, act
        return acc.to(send.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        send, recv, edge, weight = ctx.saved_tensors
        reverse, act = ctx.reverse, ctx.act
        need_s, need_r, need_e, need_w = ctx.needs_input_grad[:4]
        need_a, need_c = (need_r, need_s) if not reverse else (need_s, need_r)
        a, c = (recv, send) if not reverse else (send, recv)
        grad = _last_contiguous(grad)
        B, out, inn, K = edge.shape
        H = weight.shape[1]
        BO, BI, BH = _tiles(out, inn, H)
        acc = _acc_dtype(send.dtype)
        dev = send.device
        common = dict(K=K, ACT=act_code(act), G_ROWS=not reverse, BO=BO, BI=BI, BH=BH, num_warps=NUM_WARPS)
        da = dc = de = dw = None
        if need_a or need_e or need_w:
            n_prog = triton.cdiv(out, BO)
            dummy = torch.empty(1, 1, 1, 1, dtype=acc, device=dev)  # for outputs a launch does not write
            da = torch.empty(B, out, H, dtype=acc, device=dev) if need_a else dummy[0]
            de_buf = torch.empty(edge.shape, dtype=acc, device=dev) if need_e else dummy
            dw_part = torch.empty(B * n_prog, K, H, dtype=acc, device=dev) if need_w else da
            _bwd_rows_kernel[(B, n_prog)](
                a, c, edge, weight, grad, da, de_buf, dw_part, out, inn, H,
                a.stride(0), a.stride(1), c.stride(0), c.stride(1), *edge.stride(), weight.stride(0),
                grad.stride(0), grad.stride(1), da.stride(0), da.stride(1), *de_buf.stride(),
                NEED_A=need_a, NEED_X=need_e, NEED_W=need_w, BK=_pow2(K), **common,
            )
            da = da.to(a.dtype) if need_a else None
            de = de_buf.to(edge.dtype) if need_e else None
            dw = dw_part.sum(0).to(weight.dtype) if need_w else None
        if need_c:
            dc = torch.empty(B, inn, H, dtype=acc, device=dev)
            _bwd_cols_kernel[(B, triton.cdiv(inn, BI))](
                a, c, edge, weight, grad, dc, out, inn, H,
                a.stride(0), a.stride(1), c.stride(0), c.stride(1), *edge.stride(), weight.stride(0),
                grad.stride(0), grad.stride(1), dc.stride(0), dc.stride(1), **common,
            )
            dc = dc.to(c.dtype)
        gs, gr = (dc, da) if not reverse else (da, dc)
        return gs, gr, de, dw, None, None


def _where(case: Case) -> Support | None:
    """Why the kernels do not take tensors of ``case``'s dtype, device and sizes, or ``None``."""
    if case.dtype is None or case.device is None:
        return Support(False, "tensors of different dtypes or devices")
    if case.dtype not in _DTYPES:
        return Support(False, f"{case.dtype}: float32, float64, float16 and bfloat16 only")
    if case.device.type != "cuda" and not INTERPRETED:
        return Support(False, f"compiled kernels take CUDA tensors, not {case.device.type} (TRITON_INTERPRET=1 on CPU)")
    if case.empty:
        return Support(False, "an empty tensor (nothing to launch)")
    return None


def runs_here(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels take these tensors: one CUDA device (any device when
    :data:`INTERPRETED`), one supported dtype, nothing empty."""
    return _where(Case.of(tensors, "dense", ("sum",), "relu")) is None


_YES = {False: Support(True, "Triton kernels"), True: Support(True, "Triton kernels (interpreted, TRITON_INTERPRET=1)")}


def supports(case: Case) -> Support:
    """Dense and grouped blocks with sum / mean of :data:`ACTS` on CUDA tensors (any device when
    :data:`INTERPRETED`) of a dtype the kernels take (see the module docstring)."""
    if case.kind not in ("dense", "grouped"):
        return Support(False, f"{case.kind} blocks: not fused")
    if any(a not in _TRITON_AGGR for a in case.aggr):
        return Support(False, f"aggregators {[a for a in case.aggr if a not in _TRITON_AGGR]}: sum and mean only")
    if case.act not in ACTS:
        return Support(False, f"activation {case.act!r} is not implemented in Triton")
    no = _where(case)
    return _YES[INTERPRETED] if no is None else no


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
    """See :func:`wgraph.kernels.message_pass` (arguments already validated, a case :func:`supports`
    accepts) and the module docstring."""

    def dense_sum(s, r, e):
        return _TritonDenseSum.apply(s, r, e, edge_weight, reverse, act)

    return dense_sum_aggregate(dense_sum, send, recv, edge, groups=groups, reverse=reverse, aggr=aggr)


#: Dense and grouped blocks with sum / mean on CUDA here; the rest to ``fused``.
BACKEND = Backend("triton", message_pass, supports, fallback=fused.BACKEND)

__all__ = ["message_pass", "supports", "BACKEND", "INTERPRETED", "ACTS", "runs_here"]
