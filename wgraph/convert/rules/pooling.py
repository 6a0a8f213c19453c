"""Pooling and reductions: ops that summarize spatial or token axes and keep the neuron axis.

Averages and sums commute with any real scaling of the neurons, maxima with positive ones; each
registration declares which.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ...layout import intersect_scaling
from ..builder import Feat, LayoutBuilder, Param, SplitFeat, Stat
from .registry import Op, register


@register(
    modules=(nn.AvgPool1d, nn.AdaptiveAvgPool1d),
    functions=(F.avg_pool1d, F.adaptive_avg_pool1d),
    aten=("avg_pool1d.default", "adaptive_avg_pool1d.default"),
    scaling="real",
    pooled_axes=1,
)
@register(
    modules=(nn.MaxPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    functions=(F.max_pool1d, F.adaptive_max_pool1d, F.lp_pool1d),
    aten=("max_pool1d.default",),
    scaling="positive",
    pooled_axes=1,
)
@register(
    modules=(nn.AvgPool2d, nn.AdaptiveAvgPool2d),
    functions=(F.avg_pool2d, F.adaptive_avg_pool2d),
    aten=("avg_pool2d.default", "adaptive_avg_pool2d.default"),
    scaling="real",
    pooled_axes=2,
)
@register(
    modules=(nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
    functions=(F.max_pool2d, F.adaptive_max_pool2d, F.lp_pool2d),
    aten=("max_pool2d.default",),
    scaling="positive",
    pooled_axes=2,
)
@register(
    modules=(nn.AvgPool3d, nn.AdaptiveAvgPool3d),
    functions=(F.avg_pool3d, F.adaptive_avg_pool3d),
    scaling="real",
    pooled_axes=3,
)
@register(
    modules=(nn.MaxPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d),
    functions=(F.max_pool3d, F.adaptive_max_pool3d, F.lp_pool3d),
    scaling="positive",
    pooled_axes=3,
)
def pool(b: LayoutBuilder, op: Op):
    """Spatial pooling acts on each channel separately: the channel axis keeps its neurons."""
    spatial = op.declared.pooled_axes
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        raise UnsupportedOperation(f"{op.where}: pools a tensor whose neuron axis is split")
    if not isinstance(meta, Feat):
        return meta
    if not isinstance(op.out, torch.Tensor):
        raise UnsupportedOperation(f"{op.where}: pooling that returns indices is not supported")
    if meta.axis != x.dim() - 1 - spatial:
        raise UnsupportedOperation(f"{op.where}: pools over the neuron axis {meta.axis}")
    b.restrict_scaling(meta.layer, op.declared.scaling)
    return Feat(meta.layer, op.out.dim() - 1 - spatial)


# ATen's mean / sum keep the "positive" group they had before rules declared their scaling;
# "real" would be exact as well.
@register(functions=(torch.mean, torch.sum), methods=("mean", "sum"), scaling="real")
@register(
    functions=(torch.amax, torch.amin),
    methods=("amax", "amin"),
    aten=("mean.dim", "sum.dim_IntList", "amax.default"),
    scaling="positive",
)
def reduce(b: LayoutBuilder, op: Op):
    """``x.mean(dim, keepdim)`` and alike: reductions over spatial/sequence axes keep neurons; a
    reduction over the neuron axis is a per-position statistic of them
    (:class:`~wgraph.convert.builder.Stat`)."""
    return _reduced(b, op, op.arg(1, "dim"), op.arg(2, "keepdim", False))


@register(functions=(torch.norm,), methods=("norm",), aten=("linalg_vector_norm.default",), scaling="positive")
def norm_reduce(b: LayoutBuilder, op: Op):
    """``torch.norm(x, p, dim, keepdim)`` (ConvNeXt-V2's GRN): ``|s| ||x||`` for neurons scaled by ``s``."""
    return _reduced(b, op, op.arg(2, "dim"), op.arg(3, "keepdim", False))


@register(
    functions=(torch.var, torch.std), methods=("var", "std"), aten=("var.dim", "var.correction", "std.correction")
)
def var_reduce(b: LayoutBuilder, op: Op):
    """``x.var(dim, unbiased, keepdim)`` / ``std``: a reduction that commutes with no scaling."""
    return _reduced(b, op, op.arg(1, "dim"), op.arg(3, "keepdim", False))


def _reduced(b: LayoutBuilder, op: Op, dim, keepdim: bool):
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, (Feat, SplitFeat)):
        return meta
    if dim is None or dim == []:
        dims = set(range(x.dim()))
    else:
        dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
    if isinstance(meta, SplitFeat):  # over tokens (Hiera's pooled queries): the split axes stay
        if len(meta.axes) == 2 and dims & set(meta.axes) == {meta.axes[0]}:  # over the parts (ResNeSt's radix)
            li = b.fold(f"{b.layers[meta.layer]['name']}:{op.node.name}", meta.layer, meta.sizes[0], op.where)
            minor = meta.axes[1]
            return Feat(li, minor if keepdim else minor - sum(d < minor for d in dims))
        if dims & set(meta.axes):
            raise UnsupportedOperation(f"{op.where}: reduces over a part of a split neuron axis")
        b.restrict_scaling(meta.layer, op.declared.scaling)
        moved = meta.axes if keepdim else tuple(a - sum(d < a for d in dims) for a in meta.axes)
        return SplitFeat(meta.layer, moved, meta.sizes)
    if meta.axis in dims:  # a symmetric function of the neurons: RMSNorm's mean(x^2), LayerNorm's mean
        b.restrict_scaling(meta.layer, "none")
        return Stat((meta.layer,))
    b.restrict_scaling(meta.layer, op.declared.scaling)
    return Feat(meta.layer, meta.axis if keepdim else meta.axis - sum(d < meta.axis for d in dims))


def _along(b: LayoutBuilder, op: Op, axes: set[int], scaling: str, what: str):
    """An op along ``axes`` of argument 0, each channel on its own: neurons stay."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat) and set(meta.axes) & axes or isinstance(meta, Feat) and meta.axis in axes:
        raise UnsupportedOperation(f"{op.where}: {what} the neuron axis")
    if isinstance(meta, Param):  # a resized or padded parameter is not the parameter itself
        return replace(meta, derived=True)
    if not isinstance(meta, (Feat, SplitFeat)):
        return meta
    if op.out.dim() != x.dim():
        raise UnsupportedOperation(f"{op.where}: {what} {tuple(x.shape)} into {tuple(op.out.shape)}")
    b.restrict_scaling(meta.layer, intersect_scaling(op.declared.scaling, scaling))
    return meta


_PAD_KINDS = ("Zero", "Constant", "Reflection", "Replication", "Circular")
_PADS = tuple(getattr(nn, f"{kind}Pad{d}d") for kind in _PAD_KINDS for d in (1, 2, 3))


@register(
    modules=_PADS,
    functions=(F.pad,),
    aten=("pad.default", "constant_pad_nd.default", *(f"{k}_pad{d}d.default" for k in ("reflection", "replication")
                                                      for d in (1, 2, 3))),
    scaling="real",
)
def pad(b: LayoutBuilder, op: Op):
    """``F.pad(x, pad, mode, value)`` of spatial or token axes (``pad`` gives two widths per axis,
    the last axis first; Swin pads (0, 0) on its channels-last neuron axis): every channel padded
    alike. Padding with a constant other than zero commutes with no scaling."""
    if op.module is not None:
        widths, value = op.module.padding, getattr(op.module, "value", 0.0)
    else:
        widths = op.arg(1, "pad")
        at = 2 if op.node.target is torch.ops.aten.constant_pad_nd.default else 3
        value = op.arg(at, "value", 0.0)
    x = op.args[0]
    axes = {x.dim() - 1 - k for k in range(len(widths) // 2) if widths[2 * k] or widths[2 * k + 1]}
    return _along(b, op, axes, "real" if not value else "none", "pads")


@register(
    modules=(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
    functions=(F.interpolate,),
    aten=tuple(f"upsample_{m}.vec" for m in ("nearest1d", "nearest2d", "nearest3d", "linear1d", "bilinear2d",
                                              "bicubic2d", "trilinear3d")),
    scaling="real",
)
def interpolate(b: LayoutBuilder, op: Op):
    """``F.interpolate`` / ``nn.Upsample``: every channel (axis 1) resampled alike, linearly."""
    return _along(b, op, set(range(2, op.args[0].dim())), "real", "resamples")


@register(modules=(nn.Unfold,), functions=(F.unfold,), aten=("im2col.default",))
def unfold_patches(b: LayoutBuilder, op: Op):
    """``nn.Unfold`` / ``F.unfold`` (im2col, TNT's and VOLO's patches): ``(B, C, H, W)`` to
    ``(B, C * k * k, L)``, row ``c * k * k + p`` being channel ``c`` at kernel position ``p``: one
    node per (neuron, position) that moves with its neuron (:meth:`LayoutBuilder.spread`)."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    if meta.axis != 1 or x.dim() != 4:
        raise UnsupportedOperation(f"{op.where}: unfolds a tensor whose neurons are not its channel axis")
    inner = op.out.shape[1] // x.shape[1]
    return Feat(b.spread(f"{b.layers[meta.layer]['name']}:unfold", meta.layer, inner), 1)
