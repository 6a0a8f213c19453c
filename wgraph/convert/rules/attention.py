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
from ..builder import Feat, Gram, LayoutBuilder, Param, Scores, SplitFeat
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
    mask, mask_meta = op.pair(3, "attn_mask")
    movable = mask is None or not isinstance(mask, torch.Tensor) or mask.dim() < 3 or mask.shape[-3] == 1
    if isinstance(mask_meta, Param) and mask_meta.name not in b.slots:  # a relative position bias (MaxViT)
        b.extra(mask_meta.name, mask_meta.shape, mask_meta.dtype, op.where)
    elif isinstance(mask_meta, Feat):  # a bias computed by a small network: its neurons and the heads pinned
        b.fix(mask_meta.layer, f"attention bias at {op.where}")
        movable = False
    elif isinstance(mask_meta, (SplitFeat, Scores, Gram)):
        raise UnsupportedOperation(f"{op.where}: an attention mask computed from head-split activations")
    if lq != lk:  # query dimension i of a head meets key dimension i: paired, as in attention_layers
        b.identity(f"attn:{b.layers[lq]['name']}", lk, lq)
        b.tie(lq, lk)
    b.heads([lq, lv], heads.pop(), movable, op.where)
    return metas[2]


def _operand(x: torch.Tensor, meta) -> tuple[int, int, int | None, int] | None:
    """``(layer, heads, head axis, neuron axis)`` of a hidden matmul operand: one head (a ``Feat``,
    head axis None) or ``(heads, head_dim)`` with the heads on a batch axis; None otherwise."""
    if isinstance(meta, Feat):
        return meta.layer, 1, None, meta.axis
    if isinstance(meta, SplitFeat) and len(meta.axes) == 2 and meta.axes[0] < x.dim() - 2:
        return meta.layer, meta.sizes[0], meta.axes[0], meta.axes[1]
    return None


def attention_matmul(b: LayoutBuilder, op: Op):
    """A product of two hidden tensors: attention written out.

    * ``q @ k.transpose(-2, -1)`` contracts query dimension i with key dimension i of each head:
      the query and key layers are tied and paired by an ``attn:`` identity block, as for
      :func:`sdpa`; the result is :class:`~wgraph.convert.builder.Scores` (tokens by tokens), and
      ``scores @ v`` (after scaling, bias, mask, softmax: :func:`on_scores`) has v's neurons.
    * ``a.transpose(-2, -1) @ c`` contracts the tokens: a :class:`~wgraph.convert.builder.Gram`
      (channels by channels, channel attention); ``gram @ v.transpose(-2, -1)`` or
      ``v @ gram`` pair the contracted channels with v's (tied) and keep the other side's.

    The final product sets the head structure of the layers (:meth:`LayoutBuilder.heads`), whole
    heads movable unless something pinned them on the way (a per-head bias or temperature,
    talking heads). Both products are bilinear: the layers commute with no scaling.
    """
    (x, xm), (y, ym) = (op.args[0], op.metas[0]), (op.args[1], op.metas[1])
    off_x, off_y = op.out.dim() - x.dim(), op.out.dim() - y.dim()
    if isinstance(xm, Scores):
        return _scores_times_values(b, op, xm, x, y, ym)
    if isinstance(ym, Scores):  # v @ scores^T with v's channels on axis -2 (EfficientViT-MSRA)
        return _scores_times_values(b, op, ym, y, x, xm, left=True)
    if isinstance(xm, Gram) or isinstance(ym, Gram):
        return _gram_product(b, op, x, xm, y, ym)
    a, c = _operand(x, xm), _operand(y, ym)
    aligned = a is not None and c is not None and a[1] == c[1]
    aligned = aligned and (a[2] is None or a[2] + off_x == c[2] + off_y)
    if aligned and a[3] == x.dim() - 1 and c[3] == y.dim() - 2:
        (lq, heads, axis, _), lk = a, c[0]
        _pair(b, lk, lq)
        return Scores(lq, lk, heads, None if axis is None else axis + off_x)
    if aligned and a[3] == x.dim() - 2 and c[3] == y.dim() - 1:
        for li in (a[0], c[0]):
            b.restrict_scaling(li, "none")
        axis = None if a[2] is None else a[2] + off_x
        return Gram(a[0], c[0], a[1], axis, op.out.dim() - 2, op.out.dim() - 1)
    raise UnsupportedOperation(
        f"{op.where}: multiplies two hidden tensors; supported are attention scores q @ k.transpose(-2, -1), "
        "scores @ v, channel attention k.transpose(-2, -1) @ v and its products (heads on a batch axis)"
    )


def _pair(b: LayoutBuilder, src: int, dst: int) -> None:
    """Dimension i of ``src`` meets dimension i of ``dst`` in a product: tied, an ``attn:`` block."""
    if src != dst:
        b.identity(f"attn:{b.layers[dst]['name']}", src, dst)
        b.tie(src, dst)
    b.restrict_scaling(dst, "none")  # a bilinear product: a scaling of the tied space scales it twice


def _with_heads(b: LayoutBuilder, op: Op, layers: list[int], heads: int, movable: bool, result):
    if len(set(layers)) < len(layers):  # values read from the query/key layer itself
        for li in layers:
            b.fix(li, f"attention with values from the query/key layer at {op.where}")
    elif heads > 1:
        b.heads(layers, heads, movable, op.where)
    return result


def _scores_times_values(
    b: LayoutBuilder, op: Op, s: Scores, x: torch.Tensor, v: torch.Tensor, vmeta, left: bool = False
):
    """``scores @ v`` (v's neurons on its last axis) or, ``left``, ``v @ scores`` (on axis -2)."""
    off_x = op.out.dim() - x.dim()
    val = _operand(v, vmeta)
    where = 2 if left else 1
    if val is None or val[3] != v.dim() - where or val[1] != s.heads:
        raise UnsupportedOperation(
            f"{op.where}: attention scores ({s.heads} heads) multiply a tensor whose neurons are not on the "
            "contracted side's other axis, or that has another number of heads"
        )
    lv, heads, axis, _ = val
    if axis is None:
        result = Feat(lv, op.out.dim() - where)
    else:
        axis += op.out.dim() - v.dim()
        result = SplitFeat(lv, (axis, op.out.dim() - where), vmeta.sizes)
    movable = s.axis is not None and axis is not None and s.axis + off_x == axis
    return _with_heads(b, op, [s.query, lv], s.heads, movable, result)


def _gram_product(b: LayoutBuilder, op: Op, x: torch.Tensor, xm, y: torch.Tensor, ym):
    """``gram @ v^T`` (v's channels on axis -2 meet the gram's last axis) or ``v @ gram``."""
    first = isinstance(xm, Gram)
    g, gt, (t, tm) = (xm, x, (y, ym)) if first else (ym, y, (x, xm))
    val = _operand(t, tm)
    inner, outer = (gt.dim() - 1, gt.dim() - 2) if first else (gt.dim() - 2, gt.dim() - 1)
    sides = {g.row_axis: g.rows, g.col_axis: g.cols}
    wanted = t.dim() - 2 if first else t.dim() - 1
    if isinstance(tm, Gram) or val is None or val[3] != wanted or set(sides) != {inner, outer} or val[1] != g.heads:
        raise UnsupportedOperation(
            f"{op.where}: a channel-attention matrix multiplies a tensor whose channels do not meet its own"
        )
    lt, heads, axis, _ = val
    _pair(b, lt, sides[inner])
    kept, out_axis = sides[outer], op.out.dim() - (2 if first else 1)
    if axis is None:
        result = Feat(kept, out_axis)
    else:
        axis += op.out.dim() - t.dim()
        result = SplitFeat(kept, (axis, out_axis), (heads, b.size(kept) // heads))
    movable = g.axis is not None and axis is not None and g.axis + op.out.dim() - gt.dim() == axis
    return _with_heads(b, op, [kept, lt], heads, movable, result)


def scores_output(b: LayoutBuilder, s: Scores | Gram, where: str) -> None:
    """Attention scores that are an output of the model: heads stay in place."""
    layers = [s.query] if isinstance(s, Scores) else [s.rows, s.cols]
    if s.heads > 1:
        b.heads(layers, s.heads, False, where)


def on_scores(b: LayoutBuilder, op: Op):
    """Any op on attention scores but their product with the values (:func:`attention_matmul`):
    scaling, a mask, a relative position bias, softmax, dropout, reshapes, talking heads.

    Scores hold no neurons, so such ops only decide whether whole heads may still move: elementwise
    ops and softmax act on every head alike and keep the head axis, reshapes and axis reorderings
    move it, and anything else (a ``Linear`` across heads), or an operand with one value per head (a
    relative position bias ``(H, N, N)``, a temperature ``(H, 1, 1)``), pins the heads. Parameters
    that enter the scores belong to no neuron: they are kept as extras. Hidden activations that enter
    (a bias from a small network, Swin V2) pin the heads and their own layer. A channel-attention
    :class:`~wgraph.convert.builder.Gram` takes elementwise ops and transposes only; an operand that
    differs along its channel axes fixes both channel layers.
    """
    from .pointwise import add, hardtanh, pointwise
    from .shape import reshape, transpose

    flat = [m for m in _flatten((op.metas, op.kwmetas)) if m is not None]
    scores = [m for m in flat if isinstance(m, (Scores, Gram))]
    s = scores[0]
    if any(isinstance(m, SplitFeat) for m in flat) or any(replace(m, axis=s.axis) != s for m in scores):
        raise UnsupportedOperation(
            f"{op.where}: combines attention scores with head-split activations or other scores; supported are "
            "scores @ v and ops on the scores alone (scaling, bias, mask, softmax)"
        )
    for m in flat:  # a bias computed by a small network (Swin V2's position MLP): its neurons pinned
        if isinstance(m, Feat):
            b.fix(m.layer, f"added to attention scores at {op.where}")
    for m in flat:
        if isinstance(m, Param) and m.name not in b.slots and m.name not in b.aliases:
            b.extra(m.name, m.shape, m.dtype, op.where)
    if op.module is not None:
        path = b.path(op.node.target)
        for name, t in op.module.state_dict().items():
            b.extra(b.qualify(path, name), tuple(t.shape), t.dtype, op.where)
    if not isinstance(op.out, torch.Tensor):
        return None
    x = next(v for v, m in op.tensors() if isinstance(m, (Scores, Gram)))
    rule = op.declared.rule if op.declared is not None else None
    gram = isinstance(s, Gram)
    if gram and rule not in (pointwise, add, hardtanh, transpose):
        raise UnsupportedOperation(
            f"{op.where}: only elementwise ops and transposes of channel attention are supported"
        )
    axis = None
    if rule in (pointwise, add, hardtanh):
        off = op.out.dim() - x.dim()
        axis = None if s.axis is None else s.axis + off
        for v, m in op.tensors():
            if isinstance(m, (Scores, Gram)):
                continue
            if isinstance(m, Feat) and axis is not None:
                axis = None  # computed per head by hidden neurons
            along = lambda a: 0 <= a - op.out.dim() + v.dim() and v.shape[a - op.out.dim() + v.dim()] != 1  # noqa: E731
            if axis is not None and along(axis):
                axis = None  # one value per head
            if gram and (along(s.row_axis + off) or along(s.col_axis + off)):
                b.fix(s.rows, f"channel attention with a per-channel operand at {op.where}")
                b.fix(s.cols, f"channel attention with a per-channel operand at {op.where}")
        if gram:
            return replace(s, axis=axis, row_axis=s.row_axis + off, col_axis=s.col_axis + off)
    elif rule is transpose:
        moved = [transpose(b, replace(op, metas=(Feat(-1, a), *op.metas[1:]))).axis if a is not None else None
                 for a in (s.axis, *((s.row_axis, s.col_axis) if gram else ()))]
        if gram:
            return replace(s, axis=moved[0], row_axis=moved[1], col_axis=moved[2])
        axis = moved[0]
    elif s.axis is not None and rule is reshape:
        before, after = math.prod(x.shape[: s.axis]), math.prod(x.shape[s.axis + 1 :])
        shape = tuple(op.out.shape)
        found = [j for j in range(len(shape)) if math.prod(shape[:j]) == before and math.prod(shape[j + 1 :]) == after]
        axis = found[0] if found and shape[found[0]] == s.heads else None
    return replace(s, axis=axis)


def _flatten(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x
