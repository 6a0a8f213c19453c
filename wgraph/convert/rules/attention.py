"""Attention: query, key, value and output layers with head structure.

``softmax(Q_h K_h^T / sqrt(d)) V_h`` is unchanged when the query and key dimensions of head ``h``
share a permutation, when the value dimensions of a head are permuted together with the output
projection's inputs, and when whole heads move, the same way for Q/K and V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Param, Scores, SplitFeat
from .registry import Op, register


@dataclass(frozen=True)
class Weight:
    """A state-dict entry: its name and shape."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AttentionSpec:
    """The parameters of an attention block with a packed ``(3E, E)`` input projection.

    ``path``: the module path its layers are named after. ``heads_movable``: whether whole heads
    may move (not when per-head parameters outside the graph, such as a relative position bias,
    pin them in place).
    """

    path: str
    embed_dim: int
    num_heads: int
    in_proj: Weight
    in_bias: Weight | None
    out_proj: Weight
    out_bias: Weight | None
    heads_movable: bool


def attention_layers(b: LayoutBuilder, op: Op, srcs: list[int], spec: AttentionSpec) -> int:
    """Q, K, V and O layers of an attention block reading query, key and value from layers ``srcs``;
    returns O.

    Q and K are tied (an ``attn:`` identity block pairs them), V feeds O, and Q and V form one head
    group (:meth:`~wgraph.convert.builder.LayoutBuilder.heads`).
    """
    path, E = spec.path, spec.embed_dim
    depth = max(b.depth(s) for s in srcs) + 1
    q, k, v = (b.new_layer(f"{path}.{n}", E, depth) for n in ("q", "k", "v"))
    b.dense_parts(spec.in_proj.name, spec.in_proj.shape, list(zip(srcs, (q, k, v))), op.where)
    if spec.in_bias is not None:
        b.node_param_parts([q, k, v], "bias", spec.in_bias.name, spec.in_bias.shape, op.where)
    b.identity(f"attn:{path}", k, q)
    b.tie(q, k)
    b.heads([q, v], spec.num_heads, spec.heads_movable, op.where)
    o = b.new_layer(f"{path}.out", E, depth + 1)
    b.dense(spec.out_proj.name, v, o, spec.out_proj.name, spec.out_proj.shape, op.where)
    if spec.out_bias is not None:
        b.node_param(o, "bias", spec.out_bias.name, spec.out_bias.shape, op.where)
    return o


@register(modules=(nn.MultiheadAttention,))
def attention(b: LayoutBuilder, op: Op):
    """Multi-head attention: layers Q, K, V (from the packed ``in_proj``) and O (``out_proj``),
    with head structure (:func:`attention_layers`)."""
    m, path = op.module, b.path(op.node.target)
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedOperation(f"{op.where}: MultiheadAttention with kdim/vdim, bias_k/bias_v or add_zero_attn")
    E = m.embed_dim
    srcs = []
    for i, name in enumerate(("query", "key", "value")):
        t, meta = op.arg(i, name), op.meta(i, name)
        srcs.append(b.as_layer(meta, t.dim() - 1, E, op.where))
    spec = AttentionSpec(
        path=path,
        embed_dim=E,
        num_heads=m.num_heads,
        in_proj=Weight(b.qualify(path, "in_proj_weight"), tuple(m.in_proj_weight.shape)),
        in_bias=None if m.in_proj_bias is None else Weight(b.qualify(path, "in_proj_bias"), (3 * E,)),
        out_proj=Weight(b.qualify(path, "out_proj.weight"), tuple(m.out_proj.weight.shape)),
        out_bias=None if m.out_proj.bias is None else Weight(b.qualify(path, "out_proj.bias"), (E,)),
        heads_movable=True,
    )
    o = attention_layers(b, op, srcs, spec)
    out = op.out[0] if isinstance(op.out, tuple) else op.out
    result = Feat(o, out.dim() - 1)
    return (result, None) if isinstance(op.out, tuple) else result


@register(functions=(F.scaled_dot_product_attention,), aten=("scaled_dot_product_attention.default",))
def sdpa(b: LayoutBuilder, op: Op):
    """``scaled_dot_product_attention(q, k, v, attn_mask)``: the output has v's neurons. Query and
    key layers are tied and paired dimension by dimension (an ``attn:`` identity block from key to
    query, so that a graph NFN sees which key dimension each query dimension meets); a neuron axis
    split into (heads, head_dim) gives the head structure of :func:`attention_layers`, whole heads
    movable unless the mask differs between heads."""
    metas = [op.meta(i, n) for i, n in enumerate(("query", "key", "value"))]
    if not all(isinstance(m, (Feat, SplitFeat)) for m in metas):
        raise UnsupportedOperation(f"{op.where}: attention over inputs that are not hidden activations")
    lq, lk, lv = (m.layer for m in metas)
    heads = {m.sizes[0] if isinstance(m, SplitFeat) else 1 for m in metas}
    if len(heads) != 1 or lq in (lv,) or lk == lv:
        for li in (lq, lk, lv):
            b.fix(li, f"attention at {op.where}")
        return metas[2]
    mask = op.arg(3, "attn_mask")
    movable = mask is None or not isinstance(mask, torch.Tensor) or mask.dim() < 3 or mask.shape[-3] == 1
    if lq != lk:  # query dimension i of a head meets key dimension i: paired, as in attention_layers
        b.identity(f"attn:{b.layers[lq]['name']}", lk, lq)
        b.tie(lq, lk)
    b.heads([lq, lv], heads.pop(), movable, op.where)
    return metas[2]


def _query_side(x: torch.Tensor, meta, contracted: int) -> tuple[int, int, int | None] | None:
    """``(layer, heads, head axis)`` of a matmul operand whose neurons are the contracted axis: one
    head (a ``Feat``; head axis None) or ``(heads, head_dim)`` with the heads on a batch axis."""
    if isinstance(meta, Feat) and meta.axis == contracted:
        return meta.layer, 1, None
    if isinstance(meta, SplitFeat) and len(meta.axes) == 2 and meta.axes[1] == contracted:
        if meta.axes[0] < x.dim() - 2:
            return meta.layer, meta.sizes[0], meta.axes[0]
    return None


def attention_matmul(b: LayoutBuilder, op: Op):
    """Attention written out: ``scores = q @ k.transpose(-2, -1)``, then (scaled, biased, masked,
    softmaxed: :func:`on_scores`) ``scores @ v``.

    ``q @ k^T`` contracts query dimension i with key dimension i of each head: the query and key
    layers are tied and paired by an ``attn:`` identity block, as for
    :func:`scaled_dot_product_attention`; the result is :class:`~wgraph.convert.builder.Scores`.
    ``scores @ v`` gives v's neurons, split in heads as v was; it sets the head structure of the
    query/key and value layers (:meth:`LayoutBuilder.heads`), whole heads movable unless something
    pinned them on the way (a per-head bias or temperature, talking heads).
    """
    (x, meta), (y, ymeta) = (op.args[0], op.metas[0]), (op.args[1], op.metas[1])
    off_x, off_y = op.out.dim() - x.dim(), op.out.dim() - y.dim()
    if isinstance(meta, Scores):
        return _scores_times_values(b, op, meta, x, y, ymeta)
    q, k = _query_side(x, meta, x.dim() - 1), _query_side(y, ymeta, y.dim() - 2)
    if q is None or k is None or q[1] != k[1] or (q[2] is not None and q[2] + off_x != k[2] + off_y):
        raise UnsupportedOperation(
            f"{op.where}: multiplies two hidden tensors; supported are attention scores q @ k.transpose(-2, -1) "
            "(head dimensions contracted, heads on a batch axis) and scores @ v"
        )
    (lq, heads, axis), lk = q, k[0]
    if lq != lk:
        b.identity(f"attn:{b.layers[lq]['name']}", lk, lq)
        b.tie(lq, lk)
    b.restrict_scaling(lq, "none")  # q.k is bilinear: a scaling of the tied space scales it twice
    return Scores(lq, lk, heads, None if axis is None else axis + off_x)


def _scores_times_values(b: LayoutBuilder, op: Op, s: Scores, x: torch.Tensor, v: torch.Tensor, vmeta):
    off_x, off_v = op.out.dim() - x.dim(), op.out.dim() - v.dim()
    last = v.dim() - 1
    if isinstance(vmeta, Feat) and vmeta.axis == last and s.heads == 1:
        lv, result, axis = vmeta.layer, Feat(vmeta.layer, op.out.dim() - 1), None
    elif isinstance(vmeta, SplitFeat) and len(vmeta.axes) == 2 and vmeta.axes[1] == last and vmeta.axes[0] < last - 1:
        lv, axis = vmeta.layer, vmeta.axes[0] + off_v
        result = SplitFeat(lv, (axis, op.out.dim() - 1), vmeta.sizes)
        if vmeta.sizes[0] != s.heads:
            raise UnsupportedOperation(f"{op.where}: {s.heads} heads of scores meet values in {vmeta.sizes[0]} heads")
    else:
        raise UnsupportedOperation(
            f"{op.where}: attention scores multiply a tensor whose neurons are not its last axis (values split "
            "in heads on a batch axis are supported)"
        )
    if lv in (s.query, s.key):
        for li in (s.query, lv):
            b.fix(li, f"attention with values from the query/key layer at {op.where}")
        return result
    if s.heads > 1:
        movable = s.axis is not None and s.axis + off_x == axis
        b.heads([s.query, lv], s.heads, movable, op.where)
    return result


def scores_output(b: LayoutBuilder, s: Scores, where: str) -> None:
    """Attention scores that are an output of the model: heads stay in place."""
    if s.heads > 1:
        b.heads([s.query], s.heads, False, where)


def on_scores(b: LayoutBuilder, op: Op):
    """Any op on attention scores but ``scores @ v`` (:func:`attention_matmul`): scaling, a mask, a
    relative position bias, softmax, dropout, reshapes, talking heads.

    Scores hold no neurons, so such ops only decide whether whole heads may still move: elementwise
    ops and softmax act on every head alike and keep the head axis, reshapes and axis reorderings
    move it, and anything else (a ``Linear`` across heads), or an operand with one value per head (a
    relative position bias ``(H, N, N)``, a temperature ``(H, 1, 1)``), pins the heads. Parameters
    that enter the scores belong to no neuron: they are kept as extras. Hidden activations may not
    enter.
    """
    from .pointwise import add, hardtanh, pointwise
    from .shape import reshape, transpose

    flat = [m for m in _flatten((op.metas, op.kwmetas)) if m is not None]
    scores = [m for m in flat if isinstance(m, Scores)]
    s = scores[0]
    if any(isinstance(m, (Feat, SplitFeat)) for m in flat) or any((m.query, m.key) != (s.query, s.key) for m in scores):
        raise UnsupportedOperation(
            f"{op.where}: combines attention scores with hidden activations or other scores; supported are "
            "scores @ v and ops on the scores alone (scaling, bias, mask, softmax)"
        )
    for m in flat:
        if isinstance(m, Param) and m.name not in b.slots and m.name not in b.aliases:
            b.extra(m.name, m.shape, m.dtype, op.where)
    if op.module is not None:
        path = b.path(op.node.target)
        for name, t in op.module.state_dict().items():
            if b.qualify(path, name) not in b.slots:
                b.extra(b.qualify(path, name), tuple(t.shape), t.dtype, op.where)
    if not isinstance(op.out, torch.Tensor):
        return None
    x = next(v for v, m in op.tensors() if isinstance(m, Scores))
    rule = op.declared.rule if op.declared is not None else None
    axis = None
    if s.axis is not None and rule in (pointwise, add, hardtanh):
        axis = s.axis + op.out.dim() - x.dim()
        for v, m in op.tensors():
            a = axis - op.out.dim() + v.dim()
            if not isinstance(m, Scores) and 0 <= a and v.shape[a] != 1:
                axis = None  # one value per head
                break
    elif s.axis is not None and rule is transpose:
        axis = transpose(b, replace(op, metas=(Feat(-1, s.axis), *op.metas[1:]))).axis
    elif s.axis is not None and rule is reshape:
        before, after = math.prod(x.shape[: s.axis]), math.prod(x.shape[s.axis + 1 :])
        shape = tuple(op.out.shape)
        found = [j for j in range(len(shape)) if math.prod(shape[:j]) == before and math.prod(shape[j + 1 :]) == after]
        axis = found[0] if found and shape[found[0]] == s.heads else None
    return Scores(s.query, s.key, s.heads, axis)


def _flatten(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x
