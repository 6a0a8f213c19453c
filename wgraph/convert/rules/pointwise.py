"""Neuron-wise ops: activations, dropout, arithmetic, casts; and two layers combined neuron by
neuron (residual additions, gates).

Each registration declares the scaling group its ops commute with (``f(s x) = s f(x)``):
linear ops any real ``s``, positively homogeneous ones (ReLU) ``s > 0``, odd ones (tanh)
``s = ±1``, all others none.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Param, Params, Raw, SplitFeat, Stat
from .registry import REGISTRY, Op, register


def _scaling_of(op: Op, n_feats: int) -> str:
    """The scaling group an op with ``n_feats`` neuron operands commutes with (its declaration)."""
    scaling = op.declared.scaling
    if scaling == "dividend":  # x / c is linear, c / x is not
        return "real" if isinstance(op.metas[0], Feat) and n_feats == 1 else "none"
    return "none" if n_feats > 1 else scaling  # x * x, x * sigmoid(x), ...


def pointwise(b: LayoutBuilder, op: Op):
    """An op applied to each neuron separately (or softmax across neurons): neurons unchanged.

    Permuting neurons commutes with it, so the result carries the argument's meta. Any other
    tensor argument must be a scalar (a per-channel constant would pin the neurons in place), a
    per-position statistic broadcast over the neurons (``x * rsqrt(mean(x^2) + eps)``), a parameter
    with one value per neuron, or the neurons of another layer, which :func:`merge` ties to this one.
    """
    feats = op.feats()
    splits = [m for _, m in op.tensors() if isinstance(m, SplitFeat)]
    if splits:
        (v, _), *more = op.tensors()
        if more or tuple(op.out.shape) != tuple(v.shape):
            return _pinned(b, op, "an elementwise op on a split neuron axis and other tensors")
        b.restrict_scaling(splits[0].layer, _scaling_of(op, 1))
        dim = _softmax_dim(op)
        if dim is not None and dim % v.dim() in splits[0].axes[:-1]:  # across heads or groups
            b.fix(splits[0].layer, f"softmax across the parts of a split neuron axis at {op.where}")
        return splits[0]
    stats = [m for _, m in op.tensors() if isinstance(m, Stat)]
    if not feats:
        if stats:
            return Stat(tuple(sorted({li for s in stats for li in s.layers})))
        return op.raw() or _derived_param(op)
    (x, meta), *others = feats
    if any(m.layer != meta.layer for _, m in others):
        return merge(b, op)
    result = meta
    for v, m in op.tensors():
        if isinstance(m, Param):
            result = Feat(_per_neuron_param(b, op, v, m, x, meta), meta.axis)
        elif isinstance(m, Stat):
            axis = meta.axis - (x.dim() - v.dim())
            if 0 <= axis < v.dim() and v.shape[axis] != 1:
                raise UnsupportedOperation(f"{op.where}: a statistic over the neurons is not broadcast over them")
        elif m != meta and v.numel() != 1:
            axis = meta.axis - (x.dim() - v.dim())
            if 0 <= axis < v.dim() and v.shape[axis] != 1:  # differs from neuron to neuron
                return _pinned(b, op, f"an elementwise op with a tensor of shape {tuple(v.shape)}")
            b.restrict_scaling(meta.layer, "none")  # the same for every neuron (a spatial mask)
    if tuple(op.out.shape) != tuple(x.shape):
        raise UnsupportedOperation(f"{op.where}: changes the shape {tuple(x.shape)} -> {tuple(op.out.shape)}")
    b.restrict_scaling(result.layer, _scaling_of(op, len(feats)))
    return result


def _pinned(b: LayoutBuilder, op: Op, what: str):
    """An elementwise op whose operands do not line up neuron by neuron (a split neuron axis times
    a tensor of another structure, a constant that differs from neuron to neuron): every layer it
    reads is fixed and its parameters kept as extras, which is exact (nothing it reads moves).
    The result has the neurons of the operand of the result's shape."""
    result = None
    for v, m in op.tensors():
        if isinstance(m, (Feat, SplitFeat)):
            b.fix(m.layer, f"{what} at {op.where}")
            b.restrict_scaling(m.layer, "none")
            if result is None and tuple(v.shape) == tuple(op.out.shape):
                result = m
        elif isinstance(m, Param) and m.name not in b.slots:
            b.extra(m.name, m.shape, m.dtype, op.where)
        elif isinstance(m, Params):
            for p in m.parts:
                if p.name not in b.slots:
                    b.extra(p.name, p.shape, p.dtype, op.where)
    if result is None:
        raise UnsupportedOperation(f"{op.where}: {what} broadcasts the hidden neurons to a new shape")
    return result


def _softmax_dim(op: Op) -> int | None:
    """The axis of a softmax-like op (softmax, log_softmax, softmin), None for other ops."""
    target = op.node.target
    name = type(op.module).__name__ if op.module is not None else getattr(target, "__name__", str(target))
    if "softm" not in name.lower():
        return None
    return op.module.dim if op.module is not None else op.arg(1, "dim")


def _derived_param(op: Op) -> Param | None:
    """``self.logit_scale.exp()``, ``p.clamp(max=m)``: an elementwise function of one parameter,
    marked derived (:class:`~wgraph.convert.builder.Param`); of several, their
    :class:`~wgraph.convert.builder.Params`; None where other tensors take part."""
    pairs = [(v, m) for v, m in op.tensors() if v.numel() != 1 or m is not None]
    if len(pairs) == 1 and isinstance(pairs[0][1], Param) and tuple(op.out.shape) == tuple(pairs[0][0].shape):
        return replace(pairs[0][1], derived=True)
    if pairs and all(isinstance(m, (Param, Params)) for _, m in pairs):  # pos_embed + window.tile(...) (SAM2)
        return Params(tuple(p for _, m in pairs for p in (m.parts if isinstance(m, Params) else (m,))))
    return None


def _per_neuron_param(b: LayoutBuilder, op: Op, v: torch.Tensor, m: Param, x: torch.Tensor, meta: Feat) -> int:
    """``x * self.gamma`` / ``x + self.beta`` with one value per neuron (ConvNeXt's layer scale, a
    learned shift): the node feature the op declares (``scale`` / ``shift``), in the parameter's own
    shape whatever view of it the op reads (ConvFormer's ``(C,)`` scale used as ``(C, 1, 1)``). A
    scalar parameter is kept as an extra. A layer that has such a parameter already (the residual
    stream meets several hand-written RMSNorms) gets a tied copy (:meth:`LayoutBuilder.free_layer`).
    Returns the layer of the result."""
    if math.prod(m.shape) != v.numel():  # alpha[0] of a (4, C) parameter: kept aside, the neurons pinned
        b.extra(m.name, m.shape, v.dtype, op.where)
        b.fix(meta.layer, f"per-neuron values from a part of parameter {m.name!r} at {op.where}")
        b.restrict_scaling(meta.layer, "none")
        return meta.layer
    if v.numel() == 1:
        b.extra(m.name, m.shape, v.dtype, op.where)
        return meta.layer
    feature = op.declared.param_feature
    axis = meta.axis - (x.dim() - v.dim())
    C = x.shape[meta.axis]
    per_neuron = 0 <= axis < v.dim() and v.shape[axis] == C and v.numel() == C
    channels_first = 0 <= axis < v.dim() and v.shape[axis] == C and math.prod(v.shape[:axis]) == 1
    if feature == "shift" and not per_neuron and not m.derived and (meta.axis == x.dim() - 1 and v.shape[-1] == C
                                                                    or channels_first):
        # A learned positional embedding (1, tokens, C), or (1, C, H, W) on a feature map (PiT):
        # one input node per position, its values the edges from that position to the C neurons.
        pos = b.new_layer(m.name, v.numel() // C, 0, kind="input")
        b.dense(m.name, pos, meta.layer, m.name, m.shape, op.where, transposed=not channels_first, kernel=())
        b.restrict_scaling(meta.layer, "none")
        return meta.layer
    prev = b.slots.get(m.name)
    if per_neuron and prev is not None and prev.where == "extra":  # also read elsewhere as state kept aside
        b.fix(meta.layer, f"per-neuron values of parameter {m.name!r}, kept aside, at {op.where}")
        b.restrict_scaling(meta.layer, "none")
        return meta.layer
    if feature is None or not per_neuron:
        raise UnsupportedOperation(
            f"{op.where}: parameter {m.name!r} of shape {tuple(v.shape)} enters hidden activations of shape "
            f"{tuple(x.shape)}; only per-neuron scales (x * p) and shifts (x + p) are supported"
        )
    li = b.free_layer(meta.layer, [feature], m.name)
    b.node_param(li, feature, m.name, m.shape, op.where)  # as stored: (C,) used as (C, 1, 1)
    if m.derived:  # exp(p): permuted with the neurons, but it does not scale like p
        b.restrict_scaling(li, "none")
    return li


def merge(b: LayoutBuilder, op: Op):
    """Two layers combined neuron by neuron: ``a + f(a)`` (residual), ``x * gate(x)`` (squeeze-
    excitation), ... Neuron ``c`` of one meets neuron ``c`` of the other, so both layers must be
    permuted alike: they are tied into one space, and an identity block (labelled as the op
    declares) joins them. The result keeps the later layer's nodes. Broadcasting is allowed along
    the other axes (``(B, C, H, W) * (B, C, 1, 1)``), not along the neuron axis.
    """
    tensors = [(v, m) for v, m in op.tensors() if isinstance(m, Feat) or (isinstance(m, Raw) and v.numel() != 1)]
    if len(tensors) != 2 or any((m is None or isinstance(m, Stat)) and v.numel() != 1 for v, m in op.tensors()):
        raise UnsupportedOperation(
            f"{op.where}: combines {len(op.tensors())} tensors elementwise; only two layers can be joined"
        )
    (va, ma), (vb, mb) = tensors
    ref, ref_v = (ma, va) if isinstance(ma, Feat) else (mb, vb)
    out_axis = op.out.dim() - ref_v.dim() + ref.axis
    single = _broadcast_single(b, op, tensors, out_axis)
    if single is not None:
        return single

    def layer_of(v, m):
        axis = out_axis - (op.out.dim() - v.dim())
        if not 0 <= axis < v.dim() or v.shape[axis] != op.out.shape[out_axis]:
            raise UnsupportedOperation(
                f"{op.where}: combines tensors of shapes {tuple(va.shape)} and {tuple(vb.shape)} whose neuron "
                "axes do not line up (broadcasting along the neuron axis)"
            )
        return b.as_layer(m, axis, v.shape[axis], op.where)

    la, lb = layer_of(va, ma), layer_of(vb, mb)
    if la == lb:
        b.restrict_scaling(la, "none")
        return Feat(la, out_axis)
    src, dst = sorted((la, lb))
    b.restrict_scaling(src, "none")
    b.restrict_scaling(dst, "none")
    b.identity(f"{op.declared.merge_label}:{b.layers[src]['name']}->{b.layers[dst]['name']}", src, dst)
    b.tie(src, dst)
    return Feat(dst, out_axis)


def _broadcast_single(b: LayoutBuilder, op: Op, tensors, out_axis: int) -> Feat | None:
    """``ctx * gate`` where the gate is one hidden neuron broadcast over the neurons of ``ctx``
    (FocalNet's focal gates ``gates[:, l:l+1]``): every neuron of ``ctx`` gets the same factor, so
    its permutations commute; the result keeps ``ctx``'s layer. None where it does not apply."""
    along = [(v, m, v.shape[a] if 0 <= (a := out_axis - op.out.dim() + v.dim()) < v.dim() else 1) for v, m in tensors]
    ones = [(v, m) for v, m, n in along if n == 1]
    wides = [(v, m) for v, m, n in along if n != 1]
    if len(ones) != 1 or len(wides) != 1 or not all(isinstance(m, Feat) for _, m in tensors):
        return None
    (v, wide), (_, one) = wides[0], ones[0]
    if b.size(one.layer) != 1 or wide.axis != out_axis - (op.out.dim() - v.dim()):
        return None
    for m in (wide, one):
        b.restrict_scaling(m.layer, "none")
    return Feat(wide.layer, out_axis)


# Linear: any real scaling commutes.
register(
    modules=(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d),
    functions=(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, operator.neg, operator.pos, torch.neg),
    methods=("neg", "float", "double", "half", "to", "type", "contiguous", "clone", "detach"),
    aten=(
        "mul.Scalar", "neg.default", "dropout.default", "clone.default", "alias.default", "detach.default",
        "_to_copy.default", "to.dtype", "to.dtype_layout", "to.device", "lift_fresh_copy.default", "contiguous.default",
    ),
    scaling="real",
)(pointwise)
register(
    functions=(operator.mul, torch.mul),
    methods=("mul", "__mul__"),
    aten=("mul.Tensor",),
    scaling="real",
    param_feature="scale",
    merge_label="gate",
)(pointwise)
register(functions=(operator.truediv, torch.div), methods=("div", "__truediv__"), scaling="dividend")(pointwise)
# Positively homogeneous: f(s x) = s f(x) for s > 0.
register(
    modules=(nn.ReLU, nn.LeakyReLU),
    functions=(F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu, torch.abs),
    methods=("relu", "relu_", "abs"),
    aten=("relu.default", "relu_.default", "leaky_relu.default", "leaky_relu_.default", "abs.default"),
    scaling="positive",
)(pointwise)
# Odd: f(-x) = -f(x).
register(
    modules=(nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink),
    functions=(torch.tanh, F.tanh, torch.sin, F.softsign, F.tanhshrink, F.hardshrink, F.softshrink),
    methods=("tanh", "sin"),
    aten=("tanh.default", "tanh_.default", "sin.default"),
    scaling="sign",
)(pointwise)


@register(
    modules=(nn.Hardtanh,), functions=(F.hardtanh,), aten=("hardtanh.default", "hardtanh_.default"), scaling="sign"
)
def hardtanh(b: LayoutBuilder, op: Op):
    """``clamp(x, min_val, max_val)``: odd only when ``min_val == -max_val`` (``nn.Hardtanh()``);
    ``nn.ReLU6`` (which ``torch.export`` writes as ``hardtanh(x, 0, 6)``) and other asymmetric bounds
    commute with no scaling."""
    meta = pointwise(b, op)
    if op.module is not None:
        low, high = op.module.min_val, op.module.max_val
    else:
        low, high = op.arg(1, "min_val", -1.0), op.arg(2, "max_val", 1.0)
    if low != -high and meta is not None and hasattr(meta, "layer"):
        b.restrict_scaling(meta.layer, "none")
    return meta
# No scaling commutes.
register(
    modules=(
        nn.ReLU6, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid,
        nn.Softplus, nn.LogSigmoid, nn.Threshold, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Softmax,
        nn.LogSoftmax, nn.Softmin,
    ),
    functions=(
        F.relu6, F.elu, F.celu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.softplus,
        F.logsigmoid, F.threshold, torch.sigmoid, F.sigmoid, torch.cos, torch.exp, torch.sqrt, torch.rsqrt,
        torch.square, torch.clamp, torch.clip, F.alpha_dropout, F.softmax, F.log_softmax, F.softmin, torch.softmax,
        torch.log_softmax, operator.pow, operator.sub, torch.sub,
    ),
    methods=(
        "sigmoid", "cos", "exp", "sqrt", "rsqrt", "square", "clamp", "clip", "clamp_min", "clamp_max", "softmax",
        "log_softmax", "pow", "sub", "rsub", "__sub__", "__rsub__",
    ),
    aten=(
        "gelu.default", "silu.default", "sigmoid.default", "div.Tensor", "div.Scalar", "sub.Tensor", "sub.Scalar",
        "rsub.Scalar", "pow.Tensor_Scalar", "softmax.int", "_softmax.default", "elu.default", "cos.default",
        "exp.default", "sqrt.default", "rsqrt.default", "clamp.default", "hardswish.default",
        "hardsigmoid.default", "mish.default", "erf.default", "relu6.default",
        # in-place forms (``inplace=True`` activations under torch.export)
        "silu_.default", "gelu_.default", "hardswish_.default", "hardsigmoid_.default", "mish_.default",
        "elu_.default", "sigmoid_.default",
        # where(cond, x, y): an elementwise choice; a condition that differs between neurons pins them
        "where.self", "where.ScalarOther", "where.ScalarSelf",
    ),
)(pointwise)


@register(
    functions=(operator.add, torch.add),
    methods=("add", "__add__"),
    aten=("add.Tensor",),
    param_feature="shift",
    merge_label="skip",
)
@register(functions=(operator.iadd,), methods=("add_", "__iadd__"), aten=("add_.Tensor",), merge_label="skip")
@register(aten=("add.Scalar",))
def add(b: LayoutBuilder, op: Op):
    """``a + b``. A scalar is pointwise; two layers (or a layer and the raw input) form a
    residual connection (:func:`merge`): ``y = a + f(a)`` keeps ``f(a)``'s nodes for ``y``, adds
    an identity block from ``a`` and ties both layers into one neuron space."""
    carriers = [m for v, m in op.tensors() if isinstance(m, Feat) or (isinstance(m, Raw) and v.numel() != 1)]
    raw = any(isinstance(m, Raw) for m in carriers) and not any(isinstance(m, Feat) for m in carriers)
    if raw and any(isinstance(m, (Param, Params)) for _, m in op.tensors()):
        raise UnsupportedOperation(f"{op.where}: a parameter is added to the raw input; this is not supported yet")
    if any(isinstance(m, Feat) for m in carriers) and len(carriers) == 2:
        return merge(b, op)
    return pointwise(b, op)


@register(functions=(torch.addcmul,), methods=("addcmul",), aten=("addcmul.default",))
def addcmul(b: LayoutBuilder, op: Op):
    """``addcmul(c, a, x, value=v) = c + v * a * x`` (timm's GRN: a per-channel shift plus a
    per-channel scale of the neurons): converted as the product, then the sum, by their own rules."""
    c, a, x = (op.pair(i, n) for i, n in enumerate(("input", "tensor1", "tensor2")))
    value = op.arg(3, "value", 1)
    product = a[0] * x[0] * value
    mul_op = _as_op(op, operator.mul, (a[0], x[0]), (a[1], x[1]), product)
    return add(b, _as_op(op, operator.add, (c[0], product), (c[1], pointwise(b, mul_op)), op.out))


def _as_op(op: Op, fn, args: tuple, metas: tuple, out) -> Op:
    """``op`` seen as a call of ``fn`` (a Python operator) on ``args`` with ``metas``."""
    return Op(op.node, op.where, None, args, {}, metas, {}, out, REGISTRY.find("call_function", fn))


@register(methods=("type_as",), aten=("type_as.default",), scaling="real")
def type_as(b: LayoutBuilder, op: Op):
    """``x.type_as(y)``: a cast of ``x`` (``y`` only gives the dtype)."""
    return op.metas[0]
