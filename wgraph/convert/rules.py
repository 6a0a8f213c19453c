"""Per-op conversion rules: one small function per op family.

A rule receives the :class:`~wgraph.convert.builder.LayoutBuilder` and an :class:`Op` (the fx
node, its concrete argument values from the example input, the metas of its arguments) and returns
the meta of the op's result: a :class:`Feat` (which layer's neurons lie on which axis), a
:class:`Raw` (input-only data) or ``None`` (not a tensor, or a constant).

Rules are registered by module type (``call_module``), by function (``call_function``) or by method
name (``call_method``). An op with no rule raises :class:`~wgraph.errors.UnsupportedOperation`; a
rule raises it too whenever the op would move, mix or single out hidden neurons in a way the
graph cannot represent exactly. Permitting such an op silently would produce a wrong symmetry.
"""

from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedOperation
from .builder import Feat, LayoutBuilder, Param, Raw, SplitFeat

Rule = Callable[[LayoutBuilder, "Op"], Any]


@dataclass
class Op:
    """One fx node being converted, with concrete values from the example input."""

    node: torch.fx.Node
    where: str
    module: nn.Module | None
    args: tuple
    kwargs: dict
    metas: tuple
    kwmetas: dict
    out: Any

    def tensors(self) -> list[tuple[torch.Tensor, Any]]:
        """``(value, meta)`` of every tensor argument, positional then keyword."""
        pairs = list(zip(self.args, self.metas)) + [(v, self.kwmetas[k]) for k, v in self.kwargs.items()]
        return [(v, m) for v, m in pairs if isinstance(v, torch.Tensor)]

    def arg(self, i: int, name: str, default=None):
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def meta(self, i: int, name: str):
        if len(self.args) > i:
            return self.metas[i]
        return self.kwmetas.get(name)


MODULE_RULES: list[tuple[tuple[type, ...], Rule]] = []
FUNCTION_RULES: dict[Callable, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def module_rule(*types: type):
    def deco(fn: Rule) -> Rule:
        MODULE_RULES.append((types, fn))
        return fn

    return deco


def function_rule(*fns: Callable):
    def deco(fn: Rule) -> Rule:
        for f in fns:
            FUNCTION_RULES[f] = fn
        return fn

    return deco


def method_rule(*names: str):
    def deco(fn: Rule) -> Rule:
        for n in names:
            METHOD_RULES[n] = fn
        return fn

    return deco


def find_module_rule(module: nn.Module) -> Rule | None:
    for types, fn in MODULE_RULES:
        if type(module) in types:
            return fn
    return None


def supported_ops() -> str:
    """A readable list of everything the converter has a rule for."""
    mods = sorted({t.__name__ for types, _ in MODULE_RULES for t in types})
    funcs = sorted({getattr(f, "__name__", str(f)) for f in FUNCTION_RULES if not isinstance(f, torch._ops.OpOverload)})
    n_aten = sum(isinstance(f, torch._ops.OpOverload) for f in FUNCTION_RULES)
    funcs.append(f"and {n_aten} ATen ops (torch.export graphs)")
    meths = sorted(METHOD_RULES)
    return (
        f"modules: {', '.join(mods)}\n  functions: {', '.join(funcs)}\n  tensor methods: {', '.join(meths)}"
    )


def _feats(op: Op) -> list[tuple[torch.Tensor, Feat]]:
    return [(v, m) for v, m in op.tensors() if isinstance(m, Feat)]


def _raw_or_none(op: Op):
    for _, m in op.tensors():
        if isinstance(m, Raw):
            return m
    return None


# ---------------------------------------------------------------- parametric
def _weight_layer(
    b: LayoutBuilder, op: Op, x: torch.Tensor, meta, axis: int, name: str, weight: str, shape: tuple[int, ...],
    bias: tuple[str, tuple[int, ...]] | None = None, *, groups: int = 1, transposed: bool = False,
) -> Feat:  # fmt: skip
    """A new layer written by a weight read along ``axis`` of ``x`` (and a bias): the shape shared
    by linear layers, convolutions and their functional forms.

    ``shape`` is the weight's own shape: ``(out, in // groups, *kernel)``, or ``(in, out, *kernel)``
    when ``transposed`` (``x @ W``, transposed convolutions). The result's neuron axis has as
    many axes after it as ``axis`` has in ``x``.
    """
    n_out, n_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1] * groups)
    src = b.as_layer(meta, axis, n_in, op.where)
    dst = b.new_layer(name, n_out, b.depth(src) + 1)
    if groups == 1:
        b.dense(weight, src, dst, weight, shape, op.where, transposed=transposed, kernel=tuple(shape[2:]))
    else:
        b.grouped(weight, src, dst, weight, shape, groups, op.where)
    if bias is not None:
        b.node_param(dst, "bias", bias[0], bias[1], op.where)
    return Feat(dst, op.out.dim() - (x.dim() - axis))


def _module_bias(b: LayoutBuilder, path: str, m: nn.Module) -> tuple[str, tuple[int, ...]] | None:
    return None if m.bias is None else (b.qualify(path, "bias"), tuple(m.bias.shape))


@module_rule(nn.Linear)
def linear(b: LayoutBuilder, op: Op):
    """``y = x W^T + b``: a new layer of ``out_features`` neurons, W is a dense (out, in) block."""
    m, path = op.module, b.path(op.node.target)
    x = op.args[0]
    return _weight_layer(
        b, op, x, op.metas[0], x.dim() - 1, path or type(m).__name__, b.qualify(path, "weight"),
        tuple(m.weight.shape), _module_bias(b, path, m),
    )  # fmt: skip


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(b: LayoutBuilder, op: Op):
    """Convolution: a dense (out, in, *kernel) block; the kernel is each edge's feature vector.
    Grouped and depthwise convolutions give block-diagonal ``grouped`` blocks."""
    m, path = op.module, b.path(op.node.target)
    x = op.args[0]
    return _weight_layer(
        b, op, x, op.metas[0], x.dim() - 1 - len(m.kernel_size), path or type(m).__name__,
        b.qualify(path, "weight"), tuple(m.weight.shape), _module_bias(b, path, m), groups=m.groups,
    )  # fmt: skip


_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@module_rule(*_CONV_TRANSPOSE)
def conv_transpose(b: LayoutBuilder, op: Op):
    """Transposed convolution: weight ``(in, out, *kernel)``, held as a dense ``(out, in, *kernel)``
    block with the first two axes swapped."""
    m, path = op.module, b.path(op.node.target)
    if m.groups != 1:
        raise UnsupportedOperation(f"{op.where}: grouped transposed convolution (groups={m.groups}) is not supported yet")
    x = op.args[0]
    return _weight_layer(
        b, op, x, op.metas[0], x.dim() - 1 - len(m.kernel_size), path or type(m).__name__,
        b.qualify(path, "weight"), tuple(m.weight.shape), _module_bias(b, path, m), transposed=True,
    )  # fmt: skip


@module_rule(nn.PReLU)
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


# ------------------------------------------------------------- normalization
_NORM_PREFIX = {
    nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.BatchNorm3d: "bn", nn.SyncBatchNorm: "bn",
    nn.InstanceNorm1d: "in", nn.InstanceNorm2d: "in", nn.InstanceNorm3d: "in",
    nn.GroupNorm: "gn", nn.LayerNorm: "ln", nn.RMSNorm: "rms",
}  # fmt: skip


@module_rule(*_NORM_PREFIX)
def norm(b: LayoutBuilder, op: Op):
    """Normalization keeps the neurons; its per-channel state becomes node features.

    BatchNorm / InstanceNorm normalize each channel separately (axis 1): the affine ``weight``,
    ``bias`` and the running statistics (which change the function in eval mode) are node features
    ``bn_weight, bn_bias, bn_mean, bn_var``. LayerNorm / RMSNorm normalize over the last axis: all
    neurons of the layer enter one statistic, which is permutation invariant, so the space stays
    permutable as one. GroupNorm couples the channels of each contiguous group: unless it has one
    group or one channel per group, a permutation could mix groups, so its space is fixed.
    ``num_batches_tracked`` belongs to no neuron and is kept as an extra.
    """
    m, path = op.module, b.path(op.node.target)
    x, meta = op.args[0], op.metas[0]
    prefix = _NORM_PREFIX[type(m)]
    if prefix in ("ln", "rms"):
        if len(m.normalized_shape) != 1:
            raise UnsupportedOperation(
                f"{op.where}: normalizes over {len(m.normalized_shape)} axes {tuple(m.normalized_shape)}; "
                "only normalization over the neuron axis alone is supported"
            )
        axis, size = x.dim() - 1, m.normalized_shape[0]
    else:
        axis, size = 1, x.shape[1]
    li = b.as_layer(meta, axis, size, op.where)
    names = {"weight": "weight", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    features = [f"{prefix}_{names[a]}" for a in m.state_dict() if a in names]
    li = b.free_layer(li, features, path)
    if prefix == "gn" and m.num_groups not in (1, m.num_channels):
        b.fix(li, f"GroupNorm with {m.num_groups} groups at {path!r}")
    for attr, value in m.state_dict().items():
        key = b.qualify(path, attr)
        if attr in names:
            b.node_param(li, f"{prefix}_{names[attr]}", key, tuple(value.shape), op.where)
        elif value.dim() == 0:
            b.extra(key, (), value.dtype, op.where)
        else:
            raise UnsupportedOperation(f"{op.where}: no place for state {key!r} of shape {tuple(value.shape)}")
    b.restrict_scaling(li, "none")
    return Feat(li, axis)


# -------------------------------------------------------- neuron-wise ops
POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Softmax, nn.LogSoftmax, nn.Softmin,
)  # fmt: skip


# Scaling groups (wgraph.graph.SCALING_GROUPS) that neuron-wise ops commute with; default "none".
_LINEAR = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, operator.neg, operator.pos, torch.neg, operator.mul, torch.mul, "neg", "mul", "__mul__",
    "float", "double", "half", "to", "type", "contiguous", "clone", "detach",
)  # fmt: skip
_POSITIVE = (nn.ReLU, F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_", nn.LeakyReLU, F.leaky_relu, torch.abs, "abs")
_ODD = (
    nn.Tanh, torch.tanh, F.tanh, "tanh", torch.sin, "sin", nn.Softsign, F.softsign, nn.Hardtanh, F.hardtanh,
    nn.Tanhshrink, F.tanhshrink, nn.Hardshrink, F.hardshrink, nn.Softshrink, F.softshrink,
)  # fmt: skip
SCALING = {**dict.fromkeys(_LINEAR, "real"), **dict.fromkeys(_POSITIVE, "positive"), **dict.fromkeys(_ODD, "sign")}


def _scaling_of(op: Op, n_feats: int) -> str:
    key = type(op.module) if op.module is not None else op.node.target
    if key in (operator.truediv, torch.div, "div", "__truediv__"):  # x / c is linear, c / x is not
        return "real" if isinstance(op.metas[0], Feat) and n_feats == 1 else "none"
    if n_feats > 1:  # x * x, x * sigmoid(x), ...
        return "none"
    return SCALING.get(key, "none")


def _pointwise(b: LayoutBuilder, op: Op):
    """An op applied to each neuron separately (or softmax across neurons): neurons unchanged.

    Permuting neurons commutes with it, so the result carries the argument's meta. Any other
    tensor argument must be a scalar (a per-channel constant would pin the neurons in place) or the
    neurons of another layer, which :func:`_merge` ties to this one.
    """
    feats = _feats(op)
    splits = [m for _, m in op.tensors() if isinstance(m, SplitFeat)]
    if splits:
        if len(op.tensors()) != 1 or tuple(op.out.shape) != tuple(op.args[0].shape):
            raise UnsupportedOperation(f"{op.where}: combines a tensor whose neuron axis is split with other tensors")
        b.restrict_scaling(splits[0].layer, _scaling_of(op, 1))
        return splits[0]
    if not feats:
        return _raw_or_none(op)
    (x, meta), *others = feats
    if any(m.layer != meta.layer for _, m in others):
        return _merge(b, op)
    for v, m in op.tensors():
        if isinstance(m, Param):
            _per_neuron_param(b, op, v, m, x, meta)
        elif m != meta and v.numel() != 1:
            raise UnsupportedOperation(
                f"{op.where}: combines hidden neurons with a non-scalar tensor of shape {tuple(v.shape)}; "
                "only scalars may be mixed into hidden activations"
            )
    if tuple(op.out.shape) != tuple(x.shape):
        raise UnsupportedOperation(f"{op.where}: changes the shape {tuple(x.shape)} -> {tuple(op.out.shape)}")
    b.restrict_scaling(meta.layer, _scaling_of(op, len(feats)))
    return meta


_PARAM_FEATURE = {operator.mul: "scale", torch.mul: "scale", "mul": "scale", "__mul__": "scale",
                  operator.add: "shift", torch.add: "shift", "add": "shift", "__add__": "shift"}  # fmt: skip


def _per_neuron_param(b: LayoutBuilder, op: Op, v: torch.Tensor, m: Param, x: torch.Tensor, meta: Feat) -> None:
    """``x * self.gamma`` / ``x + self.beta`` with one value per neuron (ConvNeXt's layer scale, a
    learned shift): a node feature ``scale`` / ``shift``. A scalar parameter is kept as an extra."""
    if v.numel() == 1:
        b.extra(m.name, tuple(v.shape), v.dtype, op.where)
        return
    feature = _PARAM_FEATURE.get(op.node.target)
    axis = meta.axis - (x.dim() - v.dim())
    C = x.shape[meta.axis]
    per_neuron = 0 <= axis < v.dim() and v.shape[axis] == C and v.numel() == C
    if feature == "shift" and not per_neuron and meta.axis == x.dim() - 1 and v.shape[-1] == C:
        # A learned positional embedding (1, tokens, C): one input node per position, its
        # values the edges from that position to the C neurons.
        pos = b.new_layer(m.name, v.numel() // C, 0, kind="input")
        b.dense(m.name, pos, meta.layer, m.name, m.shape, op.where, transposed=True)
        b.restrict_scaling(meta.layer, "none")
        return
    if feature is None or not per_neuron:
        raise UnsupportedOperation(
            f"{op.where}: parameter {m.name!r} of shape {tuple(v.shape)} enters hidden activations of shape "
            f"{tuple(x.shape)}; only per-neuron scales (x * p) and shifts (x + p) are supported"
        )
    b.node_param(meta.layer, feature, m.name, tuple(v.shape), op.where)


_MERGE_LABEL = {operator.add: "skip", operator.iadd: "skip", torch.add: "skip", "add": "skip", "add_": "skip",
                "__add__": "skip", "__iadd__": "skip", operator.mul: "gate", torch.mul: "gate", "mul": "gate",
                "__mul__": "gate"}  # fmt: skip


def _merge(b: LayoutBuilder, op: Op):
    """Two layers combined neuron by neuron: ``a + f(a)`` (residual), ``x * gate(x)`` (squeeze-
    excitation), ... Neuron ``c`` of one meets neuron ``c`` of the other, so both layers must be
    permuted alike: they are tied into one space, and an identity block joins them. The result
    keeps the later layer's nodes. Broadcasting is allowed along the other axes (``(B, C, H, W) *
    (B, C, 1, 1)``), not along the neuron axis.
    """
    tensors = [(v, m) for v, m in op.tensors() if isinstance(m, Feat) or (isinstance(m, Raw) and v.numel() != 1)]
    if len(tensors) != 2 or any(m is None and v.numel() != 1 for v, m in op.tensors()):
        raise UnsupportedOperation(f"{op.where}: combines {len(op.tensors())} tensors elementwise; only two layers can be joined")
    (va, ma), (vb, mb) = tensors
    ref, ref_v = (ma, va) if isinstance(ma, Feat) else (mb, vb)
    out_axis = op.out.dim() - ref_v.dim() + ref.axis

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
    label = _MERGE_LABEL.get(op.node.target, "merge")
    b.restrict_scaling(src, "none")
    b.restrict_scaling(dst, "none")
    b.identity(f"{label}:{b.layers[src]['name']}->{b.layers[dst]['name']}", src, dst)
    b.tie(src, dst)
    return Feat(dst, out_axis)


module_rule(*POINTWISE_MODULES)(_pointwise)
function_rule(
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.celu, F.selu, F.gelu,
    F.silu, F.mish, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink,
    F.logsigmoid, F.hardshrink, F.softshrink, F.threshold, torch.tanh, F.tanh, torch.sigmoid,
    F.sigmoid, torch.sin, torch.cos, torch.exp, torch.abs, torch.sqrt, torch.square, torch.clamp,
    torch.clip, torch.neg, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax, operator.neg, operator.pos,
    operator.mul, operator.truediv, operator.pow, operator.sub, torch.mul, torch.div, torch.sub,
)(_pointwise)  # fmt: skip
method_rule(
    "relu", "relu_", "tanh", "sigmoid", "sin", "cos", "exp", "abs", "sqrt", "square", "clamp", "clip",
    "clamp_min", "clamp_max", "neg", "softmax", "log_softmax", "float", "double", "half", "to",
    "type", "contiguous", "clone", "detach", "mul", "div", "pow", "sub", "rsub", "__mul__",
    "__truediv__", "__sub__", "__rsub__",
)(_pointwise)  # fmt: skip


@function_rule(operator.add, operator.iadd, torch.add)
@method_rule("add", "add_", "__add__", "__iadd__")
def add(b: LayoutBuilder, op: Op):
    """``a + b``. A scalar is pointwise; two layers (or a layer and the raw input) form a
    residual connection (:func:`_merge`): ``y = a + f(a)`` keeps ``f(a)``'s nodes for ``y``, adds
    an identity block from ``a`` and ties both layers into one neuron space."""
    carriers = [m for v, m in op.tensors() if isinstance(m, Feat) or (isinstance(m, Raw) and v.numel() != 1)]
    if any(isinstance(m, Param) for _, m in op.tensors()) and not any(isinstance(m, Feat) for m in carriers):
        raise UnsupportedOperation(f"{op.where}: a parameter is added to the raw input; this is not supported yet")
    if any(isinstance(m, Feat) for m in carriers) and len(carriers) == 2:
        return _merge(b, op)
    return _pointwise(b, op)


# ------------------------------------------------------------------- pooling
POOL_MODULES = {
    **dict.fromkeys((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d), 1),
    **dict.fromkeys((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d), 2),
    **dict.fromkeys((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d), 3),
}
POOL_FUNCTIONS = {
    **dict.fromkeys((F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d), 1),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d), 2),
    **dict.fromkeys((F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, F.lp_pool3d), 3),
}


def _pool(b: LayoutBuilder, op: Op):
    """Spatial pooling acts on each channel separately: the channel axis keeps its neurons."""
    spatial = POOL_MODULES[type(op.module)] if op.module is not None else POOL_FUNCTIONS[op.node.target]
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    if not isinstance(op.out, torch.Tensor):
        raise UnsupportedOperation(f"{op.where}: pooling that returns indices is not supported")
    if meta.axis != x.dim() - 1 - spatial:
        raise UnsupportedOperation(f"{op.where}: pools over the neuron axis {meta.axis}")
    kind = type(op.module).__name__ if op.module is not None else op.node.target.__name__
    b.restrict_scaling(meta.layer, "real" if "avg" in kind.lower() else "positive")
    return Feat(meta.layer, op.out.dim() - 1 - spatial)


module_rule(*POOL_MODULES)(_pool)
function_rule(*POOL_FUNCTIONS)(_pool)


# ------------------------------------------------------- shape manipulation
def _reshaped(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: Feat, out_shape: tuple[int, ...]):
    """Where the neuron axis of ``x`` lands in a reshape to ``out_shape``, if it stays intact.

    In row-major order the neuron axis ``a`` of size C survives as output axis ``j`` exactly when
    ``out[j] == C`` and the products of the sizes before and after it are unchanged (for C > 1 at
    most one ``j`` qualifies). Otherwise the reshape merges or splits neurons.
    """
    C = x.shape[meta.axis]
    prefix, suffix = math.prod(x.shape[: meta.axis]), math.prod(x.shape[meta.axis + 1 :])
    found = [
        j for j, s in enumerate(out_shape)
        if s == C and math.prod(out_shape[:j]) == prefix and math.prod(out_shape[j + 1 :]) == suffix
    ]  # fmt: skip
    if found:  # unique when C > 1; with C == 1 any size-1 axis holds the single neuron
        return Feat(meta.layer, min(found, key=lambda j: abs(j - meta.axis)))
    # The neuron axis split in two consecutive axes (the first half of a channel shuffle).
    for j in range(len(out_shape) - 1):
        if (
            out_shape[j] * out_shape[j + 1] == C and min(out_shape[j], out_shape[j + 1]) > 1
            and math.prod(out_shape[:j]) == prefix and math.prod(out_shape[j + 2 :]) == suffix
        ):  # fmt: skip
            return SplitFeat(meta.layer, (j, j + 1), (out_shape[j], out_shape[j + 1]))
    # Flatten of the neuron axis with the axes after it: one node per (neuron, position).
    for t in range(1, x.dim() - meta.axis):
        inner = math.prod(x.shape[meta.axis + 1 : meta.axis + 1 + t])
        rest = math.prod(x.shape[meta.axis + 1 + t :])
        for j, s in enumerate(out_shape):
            if s == C * inner and math.prod(out_shape[:j]) == prefix and math.prod(out_shape[j + 1 :]) == rest:
                name = f"{b.layers[meta.layer]['name']}:flat"
                return Feat(b.spread(name, meta.layer, inner), j)
    raise UnsupportedOperation(
        f"{op.where}: reshapes {tuple(x.shape)} -> {tuple(out_shape)}, splitting or reordering the {C} "
        f"neurons on axis {meta.axis} (e.g. a channel shuffle); this is not supported yet"
    )


@module_rule(nn.Flatten, nn.Unflatten)
@function_rule(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
@method_rule("flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as")
def reshape(b: LayoutBuilder, op: Op):
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        return _merge_split(b, op, x, meta, tuple(op.out.shape))
    if not isinstance(meta, Feat):
        return meta
    return _reshaped(b, op, x, meta, tuple(op.out.shape))


@function_rule(torch.transpose, torch.permute, torch.movedim, torch.swapaxes, torch.t)
@method_rule("transpose", "permute", "t", "movedim", "swapaxes")
def transpose(b: LayoutBuilder, op: Op):
    """Axis reorderings move the neuron axis; find it by applying the same op to axis labels."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, (Feat, SplitFeat)):
        return meta
    # Apply the same op to an empty tensor whose axis sizes are distinct primes (no memory on "meta").
    primes = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)[: x.dim()]
    probe = torch.empty(primes, device="meta")
    name = op.node.target
    fn = getattr(probe, name) if isinstance(name, str) else (lambda *a, **k: name(probe, *a, **k))
    moved = list(fn(*op.args[1:], **op.kwargs).shape)
    if isinstance(meta, SplitFeat):
        return SplitFeat(meta.layer, tuple(moved.index(primes[a]) for a in meta.axes), meta.sizes)
    return Feat(meta.layer, moved.index(primes[meta.axis]))


REDUCTIONS = (torch.mean, torch.sum, torch.amax, torch.amin)


@function_rule(*REDUCTIONS)
@method_rule("mean", "sum", "amax", "amin")
def reduce(b: LayoutBuilder, op: Op):
    """Reductions over spatial/sequence axes keep neurons; reducing the neuron axis is unsupported."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    dim = op.arg(1, "dim")
    keepdim = op.arg(2, "keepdim", False)
    if dim is None:
        dims = set(range(x.dim()))
    else:
        dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
    if meta.axis in dims:
        raise UnsupportedOperation(f"{op.where}: reduces over the neuron axis {meta.axis}")
    name = op.node.target if isinstance(op.node.target, str) else op.node.target.__name__
    b.restrict_scaling(meta.layer, "real" if name in ("mean", "sum") else "positive")
    return Feat(meta.layer, meta.axis if keepdim else meta.axis - sum(d < meta.axis for d in dims))


@method_rule("size", "dim", "numel")
@function_rule(getattr, len)
def shape_query(b: LayoutBuilder, op: Op):
    return None


@function_rule(operator.getitem)
def getitem(b: LayoutBuilder, op: Op):
    """Indexing shapes and tuples is fine; indexing hidden activations would single out neurons."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, Feat):
        axis = _indexed_axis(x, op.args[1], meta.axis)
        if axis is None:
            raise UnsupportedOperation(
                f"{op.where}: indexes a hidden activation ({op.node.args[1]!r}) along its neuron axis; "
                "reading individual hidden channels is not supported yet"
            )
        return Feat(meta.layer, axis)
    if isinstance(x, torch.Tensor):
        return meta
    if isinstance(meta, (tuple, list)):
        return meta[op.args[1]] if isinstance(op.args[1], int) else None
    return None


# ------------------------------------------------------ concatenation / split
@function_rule(torch.cat, torch.concat, torch.concatenate)
def cat(b: LayoutBuilder, op: Op):
    """Concatenation along the neuron axis gives a composite layer (:meth:`LayoutBuilder.concat`);
    along another axis (tokens, batch) the parts must be neurons of one layer."""
    parts, metas = op.args[0], op.metas[0]
    dim = op.arg(1, "dim", 0) % parts[0].dim()
    feats = [m for m in metas if isinstance(m, Feat)]
    if not feats:
        return next((m for m in metas if isinstance(m, Raw)), None)
    if any(isinstance(m, Param) for m in metas) and all(m.axis != dim for m in feats):
        return _cat_tokens(b, op, parts, metas, feats[0], dim)
    if any(m.axis != dim for m in feats):
        if all(isinstance(m, Feat) and m.layer == feats[0].layer and m.axis == feats[0].axis for m in metas):
            return feats[0]
        raise UnsupportedOperation(
            f"{op.where}: concatenates hidden activations with other tensors along axis {dim}, which is not "
            "their neuron axis; only parts from one layer can be joined this way"
        )
    layers = [b.as_layer(m, dim, t.shape[dim], op.where) for t, m in zip(parts, metas)]
    return Feat(b.concat(op.node.name, layers), dim)


@function_rule(torch.split, torch.chunk, torch.tensor_split)
@method_rule("split", "chunk", "tensor_split")
def split(b: LayoutBuilder, op: Op):
    """Splitting along the neuron axis makes the source non-permutable (:meth:`LayoutBuilder.split`);
    along another axis every piece keeps the same neurons."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return tuple(meta for _ in op.out)
    dim = op.arg(2, "dim", 0) % x.dim()
    if dim != meta.axis:
        return tuple(Feat(meta.layer, meta.axis) for _ in op.out)
    pieces, off = [], 0
    for i, t in enumerate(op.out):
        n = t.shape[dim]
        pieces.append(Feat(b.split(f"{b.layers[meta.layer]['name']}:split{i}", meta.layer, off, n, op.where), dim))
        off += n
    return tuple(pieces)


def _indexed_axis(x: torch.Tensor, index, axis: int) -> int | None:
    """Where ``axis`` of ``x`` lands in ``x[index]``, or None if the index does not keep it whole."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in index):
        return None
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded += [slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i]
    expanded += [slice(None)] * (x.dim() + expanded.count(None) - len(expanded))
    src, out = 0, 0
    for i in expanded:
        if i is None:
            out += 1
            continue
        if src == axis:
            return out if i == slice(None) else None
        src += 1
        out += 0 if isinstance(i, int) else 1
    return None


# ---------------------------------------------------------- functional forms
def _param_arg(op: Op, i: int, name: str) -> tuple[torch.Tensor | None, Param | None]:
    if len(op.args) > i:
        return op.args[i], op.metas[i]
    return op.kwargs.get(name), op.kwmetas.get(name)


def _require_param(op: Op, value, meta, what: str) -> Param | None:
    if value is None:
        return None
    if not isinstance(meta, Param):
        raise UnsupportedOperation(f"{op.where}: the {what} is computed, not a parameter; only parameters are supported")
    return meta


def _functional_weights(op: Op) -> tuple[Param, tuple[str, tuple[int, ...]] | None]:
    """The weight (argument 1) and bias (argument 2) parameters of ``F.linear`` / ``F.conv*``."""
    w = _require_param(op, *_param_arg(op, 1, "weight"), "weight")
    bias_v, bias_m = _param_arg(op, 2, "bias")
    bias = _require_param(op, bias_v, bias_m, "bias")
    return w, None if bias is None else (bias.name, tuple(bias_v.shape))


@function_rule(F.linear)
def linear_functional(b: LayoutBuilder, op: Op):
    """``F.linear(x, self.weight, self.bias)``: the same block as ``nn.Linear``."""
    x = op.args[0]
    w, bias = _functional_weights(op)
    return _weight_layer(b, op, x, op.metas[0], x.dim() - 1, w.name.rsplit(".", 1)[0] or w.name, w.name, w.shape, bias)


@function_rule(F.conv1d, F.conv2d, F.conv3d)
def conv_functional(b: LayoutBuilder, op: Op):
    """``F.conv2d(x, self.weight, self.bias, stride, padding, dilation, groups)``: as ``nn.Conv2d``."""
    x = op.args[0]
    w, bias = _functional_weights(op)
    axis = x.dim() - 1 - (len(w.shape) - 2)
    name = w.name.rsplit(".", 1)[0] or w.name
    return _weight_layer(b, op, x, op.metas[0], axis, name, w.name, w.shape, bias, groups=op.arg(6, "groups", 1))


@function_rule(F.layer_norm)
def layer_norm_functional(b: LayoutBuilder, op: Op):
    """``F.layer_norm(x, shape, self.weight, self.bias)`` over the neuron axis (as ``nn.LayerNorm``)."""
    x, meta = op.args[0], op.metas[0]
    shape = tuple(op.arg(1, "normalized_shape"))
    if len(shape) != 1:
        raise UnsupportedOperation(f"{op.where}: layer norm over {len(shape)} axes is not supported")
    li = b.as_layer(meta, x.dim() - 1, shape[0], op.where)
    li = b.free_layer(li, ["ln_weight", "ln_bias"], op.node.name)
    for i, name, feature in ((2, "weight", "ln_weight"), (3, "bias", "ln_bias")):
        v, m = _param_arg(op, i, name)
        p = _require_param(op, v, m, name)
        if p is not None:
            b.node_param(li, feature, p.name, tuple(v.shape), op.where)
    b.restrict_scaling(li, "none")
    return Feat(li, x.dim() - 1)  # (layer_norm_functional)


@method_rule("expand", "expand_as", "repeat")
def expand(b: LayoutBuilder, op: Op):
    """Broadcasting copies keep neurons if they only grow other (or new leading) axes. An expanded
    parameter stays a parameter (e.g. a class token expanded over the batch)."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    axis = meta.axis + op.out.dim() - x.dim()
    if op.out.shape[axis] != x.shape[meta.axis]:
        raise UnsupportedOperation(f"{op.where}: repeats the neuron axis")
    return Feat(meta.layer, axis)


def _swin_attention(b: LayoutBuilder, op: Op):
    """torchvision's ``shifted_window_attention``: attention within windows, as for
    ``nn.MultiheadAttention``. The relative position bias and ``logit_scale`` are per-head
    parameters kept outside the graph, so whole heads stay in place; dimensions within a head move."""
    x, meta = op.args[0], op.metas[0]
    get = lambda i, n: (op.arg(i, n), op.meta(i, n))  # noqa: E731
    (qkv_w, qkv_wm), (proj_w, proj_wm) = get(1, "qkv_weight"), get(2, "proj_weight")
    (qkv_b, qkv_bm), (proj_b, proj_bm) = get(9, "qkv_bias"), get(10, "proj_bias")
    bias_m = get(3, "relative_position_bias")[1]
    scale_v, scale_m = get(11, "logit_scale")
    for v_, m_, what in ((qkv_w, qkv_wm, "qkv_weight"), (proj_w, proj_wm, "proj_weight"), (qkv_b, qkv_bm, "qkv_bias"),
                         (proj_b, proj_bm, "proj_bias")):  # fmt: skip
        if v_ is not None and not isinstance(m_, Param):
            raise UnsupportedOperation(f"{op.where}: {what} is not a parameter")
    E = x.shape[-1]
    src = b.as_layer(meta, x.dim() - 1, E, op.where)
    path = qkv_wm.name.rsplit(".", 2)[0]
    o = _attention_layers(
        b, op, path, [src] * 3, E, qkv_wm.name, tuple(qkv_w.shape), qkv_bm.name if qkv_b is not None else None,
        tuple(qkv_b.shape) if qkv_b is not None else (), proj_wm.name, tuple(proj_w.shape),
        proj_bm.name if proj_b is not None else None, tuple(proj_b.shape) if proj_b is not None else (),
        op.arg(5, "num_heads"), False,
    )  # fmt: skip
    if isinstance(bias_m, Feat):  # Swin v2: a small MLP computes the bias per head
        b.fix(bias_m.layer, f"attention heads at {path!r}")
    if isinstance(scale_m, Param):
        b.extra(scale_m.name, scale_m.shape, scale_m.dtype, op.where)
    return Feat(o, op.out.dim() - 1)


def _swin_position_bias(b: LayoutBuilder, op: Op):
    """Relative position bias of one window attention: a table per head, kept as extras (or the
    per-head output of Swin v2's bias MLP, passed on)."""
    table, index = op.metas[0], op.metas[1]
    for m in (table, index):
        if isinstance(m, Param) and m.name not in b.slots:
            b.extra(m.name, m.shape, m.dtype, op.where)
    return table if isinstance(table, Feat) else None


def _swin_patch_merging(b: LayoutBuilder, op: Op):
    """Patch merging stacks the four 2x2 neighbours' channels: the same neurons four times."""
    x, meta = op.args[0], op.metas[0]
    li = b.as_layer(meta, x.dim() - 1, x.shape[-1], op.where)
    return Feat(b.concat(f"{b.layers[li]['name']}:merge", [li] * 4), op.out.dim() - 1)


_torchvision_registered = False


def register_optional_rules() -> None:
    """Rules for torchvision's fx-wrapped functions (Swin attention, stochastic depth), registered
    once torchvision has been imported. A model that uses them imported torchvision already;
    importing it here would add seconds to ``import wgraph``. Called before every trace."""
    global _torchvision_registered
    if _torchvision_registered or "torchvision" not in sys.modules:
        return
    from torchvision.models import swin_transformer as swin
    from torchvision.ops import stochastic_depth

    FUNCTION_RULES[stochastic_depth] = _pointwise  # scales whole samples; identity in eval mode
    SCALING[stochastic_depth] = "real"
    FUNCTION_RULES[swin.shifted_window_attention] = _swin_attention
    FUNCTION_RULES[swin._get_relative_position_bias] = _swin_position_bias
    FUNCTION_RULES[swin._patch_merging_pad] = _swin_patch_merging
    _torchvision_registered = True


# --------------------------------------------------- ATen ops (torch.export)
def _addmm(b: LayoutBuilder, op: Op):
    """``addmm(bias, x, W)`` = ``x @ W + bias`` with ``W`` of shape ``(in, out)`` (GPT-2's Conv1D)."""
    (bias, bm), (x, meta), (w, wm) = zip(op.args[:3], op.metas[:3])
    if not isinstance(wm, Param) or not isinstance(bm, Param):
        raise UnsupportedOperation(f"{op.where}: addmm with computed weights is not supported")
    name = wm.name.rsplit(".", 1)[0]
    return _weight_layer(b, op, x, meta, x.dim() - 1, name, wm.name, wm.shape, (bm.name, tuple(bias.shape)), transposed=True)


def _embedding_functional(b: LayoutBuilder, op: Op):
    """``embedding(W, ids)``: as :func:`embedding`, the table a parameter argument."""
    w, wm = op.args[0], op.metas[0]
    if not isinstance(wm, Param):
        raise UnsupportedOperation(f"{op.where}: embedding of a computed table")
    tokens = b.new_layer(wm.name, w.shape[0], 0, kind="input")
    out = b.new_layer(f"{wm.name}:out", w.shape[1], 1)
    b.dense(wm.name, tokens, out, wm.name, tuple(w.shape), op.where, transposed=True)
    return Feat(out, op.out.dim() - 1)


def _sdpa(b: LayoutBuilder, op: Op):
    """``scaled_dot_product_attention(q, k, v, attn_mask)``: the output has v's neurons. Query and
    key layers are tied; a neuron axis split into (heads, head_dim) gives the head structure of
    :func:`_attention_layers`, whole heads movable unless the mask differs between heads."""
    metas = [op.metas[i] if len(op.args) > i else op.kwmetas.get(n) for i, n in enumerate(("query", "key", "value"))]
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
    if lq != lk:
        b.tie(lq, lk)
    b.heads([lq, lv], heads.pop(), movable, op.where)
    return metas[2]


def _slice(b: LayoutBuilder, op: Op):
    """``select``/``slice`` along a token or spatial axis keep the neurons; along the neuron axis
    they would single neurons out."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    dim = op.arg(1, "dim", 0) % x.dim()
    if dim == meta.axis:
        if tuple(op.out.shape) == tuple(x.shape):
            return meta
        raise UnsupportedOperation(f"{op.where}: slices the neuron axis; reading individual hidden channels is not supported yet")
    return Feat(meta.layer, meta.axis - (1 if op.out.dim() < x.dim() and dim < meta.axis else 0))


def _register_aten_ops() -> None:
    """The rules above, for the ATen ops that ``torch.export`` graphs are made of."""
    aten = torch.ops.aten
    pointwise = {
        "real": [aten.mul.Tensor, aten.mul.Scalar, aten.neg.default, aten.dropout.default, aten.clone.default,
                 aten.alias.default, aten.detach.default, aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
                 aten.to.device, aten.lift_fresh_copy.default],
        "positive": [aten.relu.default, aten.relu_.default, aten.leaky_relu.default, aten.abs.default],
        "sign": [aten.tanh.default, aten.sin.default, aten.hardtanh.default],
        "none": [aten.gelu.default, aten.silu.default, aten.sigmoid.default, aten.div.Tensor, aten.div.Scalar,
                 aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.pow.Tensor_Scalar, aten.softmax.int,
                 aten._softmax.default, aten.elu.default, aten.cos.default, aten.exp.default, aten.sqrt.default,
                 aten.rsqrt.default, aten.clamp.default, aten.hardswish.default, aten.hardsigmoid.default,
                 aten.mish.default, aten.erf.default, aten.relu6.default if hasattr(aten, "relu6") else aten.relu.default],
    }  # fmt: skip
    for group, ops in pointwise.items():
        for o in ops:
            FUNCTION_RULES.setdefault(o, _pointwise)
            SCALING.setdefault(o, group)
    _PARAM_FEATURE.update({aten.mul.Tensor: "scale", aten.add.Tensor: "shift"})
    _MERGE_LABEL.update({aten.add.Tensor: "skip", aten.mul.Tensor: "gate"})
    for o in (aten.add.Tensor, aten.add.Scalar):
        FUNCTION_RULES[o] = add
    for o in (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
              aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints):  # fmt: skip
        FUNCTION_RULES[o] = reshape
    for o in (aten.transpose.int, aten.permute.default, aten.t.default):
        FUNCTION_RULES[o] = transpose
    for o in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
        FUNCTION_RULES[o] = split
    for o in (aten.mean.dim, aten.sum.dim_IntList, aten.amax.default):
        FUNCTION_RULES[o] = reduce
    for o in (aten.select.int, aten.slice.Tensor):
        FUNCTION_RULES[o] = _slice
    FUNCTION_RULES[aten._assert_tensor_metadata.default] = shape_query
    FUNCTION_RULES[aten.cat.default] = cat
    FUNCTION_RULES[aten.expand.default] = expand
    FUNCTION_RULES[aten.linear.default] = linear_functional
    for o in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default):
        FUNCTION_RULES[o] = conv_functional
    FUNCTION_RULES[aten.layer_norm.default] = layer_norm_functional
    FUNCTION_RULES[aten.addmm.default] = _addmm
    FUNCTION_RULES[aten.embedding.default] = _embedding_functional
    FUNCTION_RULES[aten.scaled_dot_product_attention.default] = _sdpa
    FUNCTION_RULES[F.scaled_dot_product_attention] = _sdpa
    for o, d in ((aten.adaptive_avg_pool2d.default, 2), (aten.avg_pool2d.default, 2), (aten.max_pool2d.default, 2),
                 (aten.adaptive_avg_pool1d.default, 1), (aten.avg_pool1d.default, 1), (aten.max_pool1d.default, 1)):  # fmt: skip
        POOL_FUNCTIONS[o] = d
        FUNCTION_RULES[o] = _pool


_register_aten_ops()


def _cat_tokens(b: LayoutBuilder, op: Op, parts, metas, meta: Feat, dim: int):
    """``cat([class_token.expand(...), x], dim=tokens)``: a learned token is one more value per
    neuron, a node feature ``token`` of the neurons' layer."""
    for t, m in zip(parts, metas):
        if isinstance(m, Feat):
            if m != meta:
                raise UnsupportedOperation(f"{op.where}: joins tokens of different layers")
        elif isinstance(m, Param):
            C = t.shape[meta.axis]
            if math.prod(m.shape) != C or m.shape[-1] != C or meta.axis != t.dim() - 1:
                raise UnsupportedOperation(f"{op.where}: parameter {m.name!r} of shape {m.shape} joins the tokens")
            b.node_param(meta.layer, "token", m.name, m.shape, op.where)
        else:
            raise UnsupportedOperation(f"{op.where}: joins hidden tokens with a non-parameter tensor")
    return meta


@module_rule(nn.Embedding)
def embedding(b: LayoutBuilder, op: Op):
    """A lookup table ``(tokens, C)``: token ids are input nodes (never permuted), the table the
    edges from each token to the C neurons of a new layer."""
    m, path = op.module, b.path(op.node.target)
    if m.max_norm is not None:
        raise UnsupportedOperation(f"{op.where}: Embedding(max_norm=...) rewrites its weights in forward")
    tokens = b.new_layer(path or "embedding", m.num_embeddings, 0, kind="input")
    out = b.new_layer(f"{path}:out" if path else "embedding:out", m.embedding_dim, 1)
    key = b.qualify(path, "weight")
    b.dense(key, tokens, out, key, tuple(m.weight.shape), op.where, transposed=True)
    return Feat(out, op.out.dim() - 1)


@function_rule(operator.matmul, torch.matmul)
@method_rule("matmul", "__matmul__")
def matmul(b: LayoutBuilder, op: Op):
    """``x @ self.W`` with ``W`` of shape ``(in, out)``: a dense block held transposed."""
    (x, meta), (w, wm) = (op.args[0], op.metas[0]), (op.args[1], op.metas[1])
    if not isinstance(wm, Param) or w.dim() != 2 or isinstance(meta, Param):
        raise UnsupportedOperation(f"{op.where}: only activation @ parameter (a 2-D weight) is supported")
    return _weight_layer(b, op, x, meta, x.dim() - 1, wm.name, wm.name, wm.shape, transposed=True)


def _attention_layers(b: LayoutBuilder, op: Op, path: str, srcs: list[int], E: int, in_w: str, in_shape, in_b, in_b_shape,
                      out_w: str, out_shape, out_b, out_b_shape, n_heads: int, movable: bool) -> int:  # fmt: skip
    """Q, K, V and O layers of an attention block with a packed ``(3E, E)`` input projection.

    ``softmax(Q_h K_h^T / sqrt(d)) V_h`` is unchanged when the query and key dimensions of head
    ``h`` share a permutation (Q and K are tied, an ``attn:`` identity block pairs them), when the
    value dimensions of a head are permuted together with ``out_proj``'s inputs (V feeds O), and
    when whole heads move, the same way for Q/K and V (one head group).
    """
    depth = max(b.depth(s) for s in srcs) + 1
    q, k, v = (b.new_layer(f"{path}.{n}", E, depth) for n in ("q", "k", "v"))
    b.dense_parts(in_w, in_shape, list(zip(srcs, (q, k, v))), op.where)
    if in_b is not None:
        b.node_param_parts([q, k, v], "bias", in_b, in_b_shape, op.where)
    b.identity(f"attn:{path}", k, q)
    b.tie(q, k)
    b.heads([q, v], n_heads, movable, op.where)
    o = b.new_layer(f"{path}.out", E, depth + 1)
    b.dense(out_w, v, o, out_w, out_shape, op.where)
    if out_b is not None:
        b.node_param(o, "bias", out_b, out_b_shape, op.where)
    return o


@module_rule(nn.MultiheadAttention)
def attention(b: LayoutBuilder, op: Op):
    """Multi-head attention: layers Q, K, V (from the packed ``in_proj``) and O (``out_proj``),
    with head structure (:func:`_attention_layers`)."""
    m, path = op.module, b.path(op.node.target)
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedOperation(f"{op.where}: MultiheadAttention with kdim/vdim, bias_k/bias_v or add_zero_attn")
    E = m.embed_dim
    srcs = []
    for i, name in enumerate(("query", "key", "value")):
        t, meta = op.arg(i, name), op.meta(i, name)
        srcs.append(b.as_layer(meta, t.dim() - 1, E, op.where))
    has_b, has_ob = m.in_proj_bias is not None, m.out_proj.bias is not None
    o = _attention_layers(
        b, op, path, srcs, E,
        b.qualify(path, "in_proj_weight"), tuple(m.in_proj_weight.shape),
        b.qualify(path, "in_proj_bias") if has_b else None, (3 * E,),
        b.qualify(path, "out_proj.weight"), tuple(m.out_proj.weight.shape),
        b.qualify(path, "out_proj.bias") if has_ob else None, (E,), m.num_heads, True,
    )  # fmt: skip
    out = op.out[0] if isinstance(op.out, tuple) else op.out
    result = Feat(o, out.dim() - 1)
    return (result, None) if isinstance(op.out, tuple) else result


def _merge_split(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: SplitFeat, out_shape: tuple[int, ...]):
    """A reshape that merges the two halves of a split neuron axis back into one axis: the
    neurons come back in the order the axes now have (transposed halves: a channel shuffle)."""
    if out_shape == tuple(x.shape):
        return meta
    a0, a1 = meta.axes
    lo, hi = min(a0, a1), max(a0, a1)
    C = meta.sizes[0] * meta.sizes[1]
    prefix = math.prod(x.shape[:lo])
    j = next((j for j in range(len(out_shape)) if out_shape[j] == C and math.prod(out_shape[:j]) == prefix), None)
    if hi != lo + 1 or j is None or math.prod(out_shape[j + 1 :]) != math.prod(x.shape[hi + 1 :]):
        raise UnsupportedOperation(f"{op.where}: reshapes a tensor whose neuron axis is split, without merging it back")
    labels = torch.arange(C).view(meta.sizes)
    order = labels if a0 < a1 else labels.T
    index = order.reshape(-1).tolist()
    if index == list(range(C)):
        return Feat(meta.layer, j)
    return Feat(b.reorder(f"{b.layers[meta.layer]['name']}:shuffle", meta.layer, index, op.where), j)
