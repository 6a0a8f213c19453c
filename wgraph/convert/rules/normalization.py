"""Normalization: the neurons stay, their per-channel state becomes node features."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Param, SplitFeat
from .registry import Op, register

#: The node-feature prefix of each normalization module's state (``bn_weight``, ``ln_bias``, ...).
NORM_PREFIX = {
    nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.BatchNorm3d: "bn", nn.SyncBatchNorm: "bn",
    nn.InstanceNorm1d: "in", nn.InstanceNorm2d: "in", nn.InstanceNorm3d: "in",
    nn.GroupNorm: "gn", nn.LayerNorm: "ln", nn.RMSNorm: "rms",
}
_STATE_NAMES = {"weight": "weight", "bias": "bias", "running_mean": "mean", "running_var": "var"}


@register(modules=tuple(NORM_PREFIX))
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
    prefix = NORM_PREFIX[type(m)]
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
    features = [f"{prefix}_{_STATE_NAMES[a]}" for a in m.state_dict() if a in _STATE_NAMES]
    li = b.free_layer(li, features, path)
    if prefix == "gn" and m.num_groups not in (1, m.num_channels):
        b.fix(li, f"GroupNorm with {m.num_groups} groups at {path!r}")
    for attr, value in m.state_dict().items():
        key = b.qualify(path, attr)
        if attr in _STATE_NAMES:
            b.node_param(li, f"{prefix}_{_STATE_NAMES[attr]}", key, tuple(value.shape), op.where)
        elif value.dim() == 0:
            b.extra(key, (), value.dtype, op.where)
        else:
            raise UnsupportedOperation(f"{op.where}: no place for state {key!r} of shape {tuple(value.shape)}")
    b.restrict_scaling(li, "none")
    return Feat(li, axis)


def functional_norm(b: LayoutBuilder, op: Op, axis: int, size: int, params: tuple[tuple[int, str, str], ...]):
    """A functional normalization over neuron axis ``axis`` of argument 0: each ``(position, name,
    feature)`` of ``params`` is an optional parameter (or buffer) argument with one value per neuron,
    stored in node feature ``feature``."""
    x, meta = op.args[0], op.metas[0]
    li = b.as_layer(meta, axis % x.dim(), size, op.where)
    given = [(op.param(i, name), feature) for i, name, feature in params]
    li = b.free_layer(li, [feature for _, feature in given], op.node.name)
    for (v, p), feature in given:
        if p is not None:
            b.node_param(li, feature, p.name, p.shape, op.where)
    b.restrict_scaling(li, "none")
    return Feat(li, axis % x.dim())


@register(functions=(F.layer_norm,), aten=("layer_norm.default",))
def layer_norm_functional(b: LayoutBuilder, op: Op):
    """``F.layer_norm(x, shape, self.weight, self.bias)`` over the neuron axis (as ``nn.LayerNorm``)."""
    shape = tuple(op.arg(1, "normalized_shape"))
    if len(shape) != 1:
        raise UnsupportedOperation(f"{op.where}: layer norm over {len(shape)} axes is not supported")
    return functional_norm(b, op, -1, shape[0], ((2, "weight", "ln_weight"), (3, "bias", "ln_bias")))


#: Where ``F.batch_norm`` and ``aten.batch_norm`` (another argument order) take their state.
_BATCH_NORM_ARGS = {
    F.batch_norm: ((1, "running_mean", "bn_mean"), (2, "running_var", "bn_var"), (3, "weight", "bn_weight"),
                   (4, "bias", "bn_bias")),
    torch.ops.aten.batch_norm.default: ((1, "weight", "bn_weight"), (2, "bias", "bn_bias"),
                                        (3, "running_mean", "bn_mean"), (4, "running_var", "bn_var")),
}


@register(functions=(F.batch_norm,), aten=("batch_norm.default",))
def batch_norm_functional(b: LayoutBuilder, op: Op):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (timm's ``BatchNormAct2d``,
    ``nn.BatchNorm*`` under ``torch.export``): each channel (axis 1) normalized on its own, its state
    the node features of ``nn.BatchNorm*`` (:func:`norm`). The module's ``num_batches_tracked``
    counter, which the eval-mode graph does not read, is kept as an extra by the converter."""
    x = op.args[0]
    return functional_norm(b, op, 1, x.shape[1], _BATCH_NORM_ARGS[op.node.target])


@register(functions=(F.group_norm,), aten=("group_norm.default",))
def group_norm_functional(b: LayoutBuilder, op: Op):
    """``F.group_norm(x, groups, weight, bias)`` (timm's ``GroupNorm1``, PoolFormer): as
    ``nn.GroupNorm`` (:func:`norm`), the space fixed unless there is one group or one per channel."""
    x, groups = op.args[0], op.arg(1, "num_groups")
    meta = functional_norm(b, op, 1, x.shape[1], ((2, "weight", "gn_weight"), (3, "bias", "gn_bias")))
    if groups not in (1, x.shape[1]):
        b.fix(meta.layer, f"group norm with {groups} groups at {op.where}")
    return meta


@register(functions=(F.normalize,))
def normalize(b: LayoutBuilder, op: Op):
    """``F.normalize(x, p, dim)`` = ``x / ||x||_p`` along ``dim`` (cosine attention, XCA): along the
    neuron axis a symmetric function of the neurons, along another axis each neuron on its own,
    along the dimensions of a head (split neuron axis) each head on its own; every permutation the
    layout allows commutes with it. Across the heads of a split axis it would mix the heads' own
    orders: refused. Scalings: none. A normalized parameter is derived, not a weight."""
    x, meta = op.args[0], op.metas[0]
    dim = op.arg(2, "dim", 1) % x.dim()
    if isinstance(meta, SplitFeat):
        if len(meta.axes) != 2 or dim == meta.axes[0]:
            raise UnsupportedOperation(f"{op.where}: normalizes across the heads of a split neuron axis")
        b.restrict_scaling(meta.layer, "none")
    elif isinstance(meta, Feat):
        b.restrict_scaling(meta.layer, "none")
    elif isinstance(meta, Param):
        return replace(meta, derived=True)
    return meta
