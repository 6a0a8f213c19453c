"""Parametric layers: ops whose weight writes a new layer of neurons.

``nn.Linear``, convolutions (transposed too), ``F.linear`` / ``F.conv*``, ``x @ self.W``, ATen's
``addmm`` (GPT-2's ``Conv1D``), embedding tables, and PReLU (a learned slope per neuron).
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, Gram, LayoutBuilder, Param, Params, Raw, Scores, SplitFeat
from .attention import attention_matmul
from .registry import Op, register


def _weight_layer(
    b: LayoutBuilder,
    op: Op,
    x: torch.Tensor,
    meta,
    axis: int,
    name: str,
    weight: str,
    shape: tuple[int, ...],
    bias: tuple[str, tuple[int, ...]] | None = None,
    *,
    groups: int = 1,
    transposed: bool = False,
) -> Feat:
    """A new layer written by a weight read along ``axis`` of ``x`` (and a bias): the shape shared
    by linear layers, convolutions and their functional forms.

    ``shape`` is the weight's own shape: ``(out, in // groups, *kernel)``, or ``(in, out, *kernel)``
    when ``transposed`` (``x @ W``, transposed convolutions). The result's neuron axis has as
    many axes after it as ``axis`` has in ``x``.
    """
    n_out, n_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1] * groups)
    if meta is None and isinstance(x, torch.Tensor) and isinstance(op.node.args[0], torch.fx.Node):
        meta = Raw(op.node.args[0].name)  # a constant (EdgeNeXt's Fourier positions): an input of its own
    if isinstance(meta, Feat) and meta.axis > axis and n_in == n_out == 1 and not transposed:
        return _across_neurons(b, op, x, meta, weight, shape, bias)
    if isinstance(meta, Feat) and meta.axis != axis and (len(shape) == 2 or meta.axis < axis or max(shape[2:]) == 1):
        return _along_tokens(b, op, x, meta, weight, shape, bias)
    src = b.as_layer(meta, axis, n_in, op.where)
    dst = b.new_layer(name, n_out, b.depth(src) + 1)
    if groups == 1:
        b.dense(weight, src, dst, weight, shape, op.where, transposed=transposed, kernel=tuple(shape[2:]))
    else:
        b.grouped(weight, src, dst, weight, shape, groups, op.where)
    if bias is not None:
        b.node_param(dst, "bias", bias[0], bias[1], op.where)
    return Feat(dst, op.out.dim() - (x.dim() - axis))


def _across_neurons(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: Feat, weight: str, shape, bias) -> Feat:
    """A one-channel convolution that slides along the neuron axis (ECA attention: ``conv1d`` over
    the pooled channels). Each output mixes neighbouring neurons, so no permutation of them is a
    symmetry: their space is fixed, and the kernel (and bias) belong to no neuron (extras)."""
    if op.out.shape[meta.axis] != x.shape[meta.axis]:
        raise UnsupportedOperation(f"{op.where}: a convolution along the neuron axis changes its size")
    b.fix(meta.layer, f"convolution across the neurons (ECA) at {op.where}")
    b.restrict_scaling(meta.layer, "none")
    b.extra(weight, tuple(shape), x.dtype, op.where)
    if bias is not None:
        b.extra(bias[0], tuple(bias[1]), x.dtype, op.where)
    return Feat(meta.layer, meta.axis)


def _along_tokens(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: Feat, weight: str, shape, bias) -> Feat:
    """A weight applied along an axis that is not the neuron axis (MLP-Mixer's and gMLP's token
    mixing: a ``Linear`` over the tokens; a convolution whose channels are tokens, the neurons on a
    batch axis or, with a 1x1 kernel, on a spatial one: CoaT's aggregation): every neuron is
    transformed alike, ``y[c] = W x[c] + b``, so any permutation of the neurons commutes with it and
    their space stays permutable. The weight's own units (tokens) are not neurons of the graph: it
    and its bias are kept as extras, never permuted (their symmetries are left out). A bias added to
    every neuron commutes with no scaling."""
    moved = op.out.dim() - x.dim() + meta.axis
    if not 0 <= moved < op.out.dim() or op.out.shape[moved] != x.shape[meta.axis]:
        raise UnsupportedOperation(f"{op.where}: a weight along a token axis changes the neuron axis")
    b.extra(weight, tuple(shape), x.dtype, op.where)
    if bias is not None:
        b.extra(bias[0], tuple(bias[1]), x.dtype, op.where)
    b.restrict_scaling(meta.layer, "none")
    return Feat(meta.layer, moved)


def _module_layer(b: LayoutBuilder, op: Op, n_spatial: int, **kwargs) -> Feat:
    """:func:`_weight_layer` of a module with ``weight`` and optional ``bias`` (Linear, Conv, ...)
    whose input has ``n_spatial`` axes after its channel axis."""
    m, path = op.module, b.path(op.node.target)
    x = op.args[0]
    bias = None if m.bias is None else (b.qualify(path, "bias"), tuple(m.bias.shape))
    axis = x.dim() - 1 - n_spatial
    name, weight = path or type(m).__name__, b.qualify(path, "weight")
    return _weight_layer(b, op, x, op.metas[0], axis, name, weight, tuple(m.weight.shape), bias, **kwargs)


@register(modules=(nn.Linear,))
def linear(b: LayoutBuilder, op: Op):
    """``y = x W^T + b``: a new layer of ``out_features`` neurons, W is a dense (out, in) block."""
    return _module_layer(b, op, 0)


@register(modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
def conv(b: LayoutBuilder, op: Op):
    """Convolution: a dense (out, in, *kernel) block; the kernel is each edge's feature vector.
    Grouped and depthwise convolutions give block-diagonal ``grouped`` blocks."""
    return _module_layer(b, op, len(op.module.kernel_size), groups=op.module.groups)


@register(modules=(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
def conv_transpose(b: LayoutBuilder, op: Op):
    """Transposed convolution: weight ``(in, out, *kernel)``, held as a dense ``(out, in, *kernel)``
    block with the first two axes swapped."""
    m = op.module
    if m.groups != 1:
        raise UnsupportedOperation(
            f"{op.where}: grouped transposed convolution (groups={m.groups}) is not supported yet"
        )
    return _module_layer(b, op, len(m.kernel_size), transposed=True)


def _functional_weights(op: Op) -> tuple[Param, tuple[str, tuple[int, ...]] | None]:
    """The weight (argument 1) and bias (argument 2) parameters of ``F.linear`` / ``F.conv*``."""
    _, w = op.param(1, "weight")
    bias_v, bias = op.param(2, "bias")
    return w, None if bias is None else (bias.name, bias.shape)


@register(functions=(F.linear,), aten=("linear.default",))
def linear_functional(b: LayoutBuilder, op: Op):
    """``F.linear(x, self.weight, self.bias)``: the same block as ``nn.Linear``. A bias made of
    several parameters (Swin V2's and EVA's ``cat((q_bias, k_bias, v_bias))``) is kept as extras,
    the layer fixed (a permutation would have to move the pieces of those parameters)."""
    x = op.args[0]
    weight = op.meta(1, "weight")
    if isinstance(op.metas[0], Raw) and isinstance(weight, Param) and weight.buffer and op.arg(2, "bias") is None:
        # A constant transform of the input (CSATv2's DCT stem, a buffer): more input, the matrix an extra
        b.extra(weight.name, weight.shape, weight.dtype, op.where)
        return op.metas[0]
    made = op.meta(2, "bias")
    if isinstance(made, Params):
        op = replace(op, args=op.args[:2], kwargs={k: v for k, v in op.kwargs.items() if k != "bias"})
    w, bias = _functional_weights(op)
    meta = _weight_layer(b, op, x, op.metas[0], x.dim() - 1, w.name.rsplit(".", 1)[0] or w.name, w.name, w.shape, bias)
    if isinstance(made, Params):
        for p in made.parts:
            b.extra(p.name, p.shape, p.dtype, op.where)
        names = ", ".join(p.name.rsplit(".", 1)[-1] for p in made.parts)
        b.fix(meta.layer, f"bias made of parameters ({names}) at {op.where}")
    return meta


@register(functions=(F.conv1d, F.conv2d, F.conv3d), aten=("conv1d.default", "conv2d.default", "conv3d.default"))
def conv_functional(b: LayoutBuilder, op: Op):
    """``F.conv2d(x, self.weight, self.bias, stride, padding, dilation, groups)``: as ``nn.Conv2d``.
    A depthwise convolution with a constant filter (TResNet's blur pool, a non-persistent buffer)
    filters each channel on its own: the neurons stay, fixed (the filters may differ per channel)."""
    x = op.args[0]
    weight, wmeta = op.pair(1, "weight")
    constant = wmeta is None and isinstance(weight, torch.Tensor) and op.arg(2, "bias") is None
    if constant and isinstance(op.metas[0], Feat):
        groups, axis = op.arg(6, "groups", 1), x.dim() - 1 - (weight.dim() - 2)
        if groups == x.shape[axis] == weight.shape[0] and op.metas[0].axis == axis:
            b.fix(op.metas[0].layer, f"a depthwise filter held as a constant at {op.where}")
            b.restrict_scaling(op.metas[0].layer, "none")
            return Feat(op.metas[0].layer, axis)
    w, bias = _functional_weights(op)
    axis = x.dim() - 1 - (len(w.shape) - 2)
    name = w.name.rsplit(".", 1)[0] or w.name
    return _weight_layer(b, op, x, op.metas[0], axis, name, w.name, w.shape, bias, groups=op.arg(6, "groups", 1))


@register(functions=(operator.matmul, torch.matmul), methods=("matmul", "__matmul__"), aten=("matmul.default",))
def matmul(b: LayoutBuilder, op: Op):
    """``x @ self.W`` with ``W`` of shape ``(in, out)``: a dense block held transposed. A product of
    two hidden tensors is attention (:func:`~wgraph.convert.rules.attention.attention_matmul`)."""
    (x, meta), (w, wm) = (op.args[0], op.metas[0]), (op.args[1], op.metas[1])
    if isinstance(meta, (Feat, SplitFeat, Scores, Gram)) and isinstance(wm, (Feat, SplitFeat, Scores, Gram)):
        return attention_matmul(b, op)  # q @ k.transpose(-2, -1), attn @ v
    if not isinstance(wm, Param) or wm.derived or w.dim() != 2 or isinstance(meta, Param):
        raise UnsupportedOperation(f"{op.where}: only activation @ parameter (a 2-D weight) is supported")
    return _weight_layer(b, op, x, meta, x.dim() - 1, wm.name, wm.name, wm.shape, transposed=True)


@register(aten=("addmm.default",))
def addmm(b: LayoutBuilder, op: Op):
    """``addmm(bias, x, W)`` = ``x @ W + bias`` with ``W`` of shape ``(in, out)`` (GPT-2's Conv1D)."""
    (bias, bm), (x, meta), (w, wm) = zip(op.args[:3], op.metas[:3])
    if not isinstance(wm, Param) or not isinstance(bm, Param):
        raise UnsupportedOperation(f"{op.where}: addmm with computed weights is not supported")
    name, bias = wm.name.rsplit(".", 1)[0], (bm.name, tuple(bias.shape))
    return _weight_layer(b, op, x, meta, x.dim() - 1, name, wm.name, wm.shape, bias, transposed=True)


def _embedding_table(b: LayoutBuilder, op: Op, name: str, key: str, shape: tuple[int, ...]) -> Feat:
    """Token ids are input nodes (never permuted), the ``(tokens, C)`` table the edges from each
    token to the C neurons of a new layer."""
    tokens = b.new_layer(name, shape[0], 0, kind="input")
    out = b.new_layer(f"{name}:out", shape[1], 1)
    b.dense(key, tokens, out, key, shape, op.where, transposed=True)
    return Feat(out, op.out.dim() - 1)


@register(modules=(nn.Embedding,))
def embedding(b: LayoutBuilder, op: Op):
    """A lookup table ``(tokens, C)``: one input node per token, the table a dense block."""
    m, path = op.module, b.path(op.node.target)
    if m.max_norm is not None:
        raise UnsupportedOperation(f"{op.where}: Embedding(max_norm=...) rewrites its weights in forward")
    return _embedding_table(b, op, path or "embedding", b.qualify(path, "weight"), tuple(m.weight.shape))


@register(aten=("embedding.default",))
def embedding_functional(b: LayoutBuilder, op: Op):
    """``embedding(W, ids)``: as :func:`embedding`, the table a parameter argument."""
    w, wm = op.args[0], op.metas[0]
    if not isinstance(wm, Param):
        raise UnsupportedOperation(f"{op.where}: embedding of a computed table")
    return _embedding_table(b, op, wm.name, wm.name, tuple(w.shape))


@register(modules=(nn.PReLU,))
def prelu(b: LayoutBuilder, op: Op):
    """PReLU: one learned slope per channel (axis 1) is a node feature ``prelu``; a single shared
    slope is kept as an extra. Positive scalings commute with it."""
    m, path = op.module, b.path(op.node.target)
    x, meta = op.args[0], op.metas[0]
    axis = 1 if x.dim() > 1 else 0
    li = b.as_layer(meta, axis, x.shape[axis], op.where)
    key = b.qualify(path, "weight")
    if m.num_parameters == 1:
        b.extra(key, tuple(m.weight.shape), m.weight.dtype, op.where)
    else:
        li = b.free_layer(li, ["prelu"], path)
        b.node_param(li, "prelu", key, tuple(m.weight.shape), op.where)
    b.restrict_scaling(li, "positive")
    return Feat(li, axis)
