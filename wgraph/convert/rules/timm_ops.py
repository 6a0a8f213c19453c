"""timm's fx-wrapped functions (``register_notrace_function``), which a trace keeps as calls: the
attention mask helper and the window/grid rearrangements of Swin-like models.

They register once timm has been imported (:meth:`Registry.lazy`), like torchvision's.
"""

from __future__ import annotations

import importlib

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder
from .pointwise import add
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


REGISTRY.lazy("timm", register_timm)
