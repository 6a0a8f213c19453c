"""Pooling and reductions: ops that summarize spatial or token axes and keep the neuron axis.

Averages and sums commute with any real scaling of the neurons, maxima with positive ones; each
registration declares which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, SplitFeat, Stat
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
    """Reductions over spatial/sequence axes keep neurons; a reduction over the neuron axis is a
    per-position statistic of them (:class:`~wgraph.convert.builder.Stat`)."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        raise UnsupportedOperation(f"{op.where}: reduces a tensor whose neuron axis is split")
    if not isinstance(meta, Feat):
        return meta
    dim = op.arg(1, "dim")
    keepdim = op.arg(2, "keepdim", False)
    if dim is None:
        dims = set(range(x.dim()))
    else:
        dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
    if meta.axis in dims:  # a symmetric function of the neurons: RMSNorm's mean(x^2), LayerNorm's mean
        b.restrict_scaling(meta.layer, "none")
        return Stat((meta.layer,))
    b.restrict_scaling(meta.layer, op.declared.scaling)
    return Feat(meta.layer, meta.axis if keepdim else meta.axis - sum(d < meta.axis for d in dims))
