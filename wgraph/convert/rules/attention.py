"""Attention: query, key, value and output layers with head structure.

``softmax(Q_h K_h^T / sqrt(d)) V_h`` is unchanged when the query and key dimensions of head ``h``
share a permutation, when the value dimensions of a head are permuted together with the output
projection's inputs, and when whole heads move, the same way for Q/K and V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, SplitFeat
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
