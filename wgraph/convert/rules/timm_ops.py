"""timm's fx-wrapped functions (``register_notrace_function``), which a trace keeps as calls: the
attention mask helper and the window/grid rearrangements of Swin-like models; and timm modules
with rules of their own (kept as calls too): weight-standardized and "same"-padded convolutions,
"same"-padded pooling.

They register once timm has been imported (:meth:`Registry.lazy`), like torchvision's.
"""

from __future__ import annotations

import importlib

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder
from .parametric import _module_layer, conv
from .pointwise import add
from .pooling import pool
from .registry import REGISTRY, Op, Registry

#: Functions that only move tokens: windows back to the image, blocks back to the grid. Channels
#: stay on the last axis (``nchw``: axis 1), each channel moved alike, so any permutation commutes.
TOKEN_MOVES = {
    "timm.models.swin_transformer": ("window_reverse",),
    "timm.models.swin_transformer_v2": ("window_reverse",),
    "timm.models.swin_transformer_v2_cr": ("window_reverse",),
    "timm.models.gcvit": ("window_reverse",),
    "timm.models.davit": ("window_reverse",),
    "timm.models.nest": ("deblockify",),
    "timm.models.maxxvit": ("window_reverse", "grid_reverse", "window_reverse_nchw", "grid_reverse_nchw"),
}


def token_move(b: LayoutBuilder, op: Op):
    """A function of :data:`TOKEN_MOVES`: the neurons stay on the channel axis."""
    x, meta = op.args[0], op.metas[0]
    if not isinstance(meta, Feat):
        return meta
    axis = 1 if op.node.target.__name__.endswith("_nchw") else x.dim() - 1
    out_axis = 1 if axis == 1 else op.out.dim() - 1
    if meta.axis != axis or op.out.shape[out_axis] != x.shape[axis]:
        raise UnsupportedOperation(
            f"{op.where}: {op.node.target.__name__} moves tokens of a tensor whose neurons are not on its channel axis"
        )
    return Feat(meta.layer, out_axis)


def std_conv(b: LayoutBuilder, op: Op):
    """timm's weight-standardized convolutions (NFNet's ``ScaledStdConv2d``, BiT's ``StdConv2d``): the
    convolution uses ``gain * (W - mean) / std`` with statistics over each output channel's row. A
    permutation of the input channels reorders each row, which leaves its statistics alone, and
    one of the output channels moves rows and gains together: the stored ``W`` is the block, the
    gain a node feature ``ws_gain``. Scalings of either side would change the statistics: none."""
    m = op.module
    if m.padding_mode != "zeros":
        raise UnsupportedOperation(f"{op.where}: padding_mode {m.padding_mode!r}")
    result = _module_layer(b, op, 2, groups=m.groups)
    src = b.as_layer(op.metas[0], op.args[0].dim() - 3, op.args[0].shape[-3], op.where)
    if getattr(m, "gain", None) is not None:
        b.node_param(result.layer, "ws_gain", b.qualify(b.path(op.node.target), "gain"), tuple(m.gain.shape), op.where)
    b.restrict_scaling(src, "none")
    b.restrict_scaling(result.layer, "none")
    return result


def register_timm(registry: Registry) -> None:
    """Register the rules above for timm's functions (those of the installed timm version)."""
    from timm.layers import attention

    # scores + mask, or the scores alone when there is no mask
    registry.register(functions=(attention.maybe_add_mask,), merge_label="skip")(add)
    found = []
    for module, names in TOKEN_MOVES.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    registry.register(functions=tuple(found))(token_move)
    conv2d_same = importlib.import_module("timm.layers.conv2d_same")  # the package exports functions of these names
    pool2d_same = importlib.import_module("timm.layers.pool2d_same")
    timm_std_conv = importlib.import_module("timm.layers.std_conv")

    # "same"-padded convolution and pooling (TensorFlow ports): padding computed in forward from
    # the input size, which fx cannot trace; as calls, their rules are those of the torch layers.
    registry.register(modules=(conv2d_same.Conv2dSame,))(conv)
    registry.register(modules=(pool2d_same.AvgPool2dSame,), scaling="real", pooled_axes=2)(pool)
    registry.register(modules=(pool2d_same.MaxPool2dSame,), scaling="positive", pooled_axes=2)(pool)

    kinds = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")
    registry.register(modules=tuple(getattr(timm_std_conv, k) for k in kinds if hasattr(timm_std_conv, k)))(std_conv)


REGISTRY.lazy("timm", register_timm)
