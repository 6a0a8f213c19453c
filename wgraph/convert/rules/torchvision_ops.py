"""torchvision's fx-wrapped functions: Swin's window attention, its relative position bias and
patch merging, and stochastic depth.

They register once torchvision has been imported (:meth:`Registry.lazy`): a model that uses them
imported torchvision already, and importing it here would add seconds to ``import wgraph``.
"""

from __future__ import annotations

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Param
from .attention import AttentionSpec, Weight, attention_layers
from .pointwise import pointwise
from .registry import REGISTRY, Op, Registry


def _weight(value, meta: Param | None) -> Weight | None:
    return None if value is None else Weight(meta.name, tuple(value.shape))


def swin_attention(b: LayoutBuilder, op: Op):
    """torchvision's ``shifted_window_attention``: attention within windows, as for
    ``nn.MultiheadAttention``. The relative position bias and ``logit_scale`` are per-head
    parameters kept outside the graph, so whole heads stay in place; dimensions within a head move."""
    x, meta = op.args[0], op.metas[0]
    params = {n: op.pair(i, n) for i, n in ((1, "qkv_weight"), (2, "proj_weight"), (9, "qkv_bias"), (10, "proj_bias"))}
    for what, (value, m) in params.items():
        if value is not None and not isinstance(m, Param):
            raise UnsupportedOperation(f"{op.where}: {what} is not a parameter")
    (qkv_w, qkv_wm), (proj_w, proj_wm), (qkv_b, qkv_bm), (proj_b, proj_bm) = params.values()
    bias_m, scale_m = op.meta(3, "relative_position_bias"), op.meta(11, "logit_scale")
    E = x.shape[-1]
    src = b.as_layer(meta, x.dim() - 1, E, op.where)
    path = qkv_wm.name.rsplit(".", 2)[0]
    spec = AttentionSpec(
        path=path,
        embed_dim=E,
        num_heads=op.arg(5, "num_heads"),
        in_proj=_weight(qkv_w, qkv_wm),
        in_bias=_weight(qkv_b, qkv_bm),
        out_proj=_weight(proj_w, proj_wm),
        out_bias=_weight(proj_b, proj_bm),
        heads_movable=False,
    )
    o = attention_layers(b, op, [src] * 3, spec)
    if isinstance(bias_m, Feat):  # Swin v2: a small MLP computes the bias per head
        b.fix(bias_m.layer, f"attention heads at {path!r}")
    if isinstance(scale_m, Param):
        b.extra(scale_m.name, scale_m.shape, scale_m.dtype, op.where)
    return Feat(o, op.out.dim() - 1)


def swin_position_bias(b: LayoutBuilder, op: Op):
    """Relative position bias of one window attention: a table per head, kept as extras (or the
    per-head output of Swin v2's bias MLP, passed on)."""
    table, index = op.metas[0], op.metas[1]
    for m in (table, index):
        if isinstance(m, Param) and m.name not in b.slots:
            b.extra(m.name, m.shape, m.dtype, op.where)
    return table if isinstance(table, Feat) else None


def swin_patch_merging(b: LayoutBuilder, op: Op):
    """Patch merging stacks the four 2x2 neighbours' channels: the same neurons four times."""
    x, meta = op.args[0], op.metas[0]
    li = b.as_layer(meta, x.dim() - 1, x.shape[-1], op.where)
    return Feat(b.concat(f"{b.layers[li]['name']}:merge", [li] * 4), op.out.dim() - 1)


def register_torchvision(registry: Registry) -> None:
    """Register the rules above for torchvision's functions."""
    from torchvision.models import swin_transformer as swin
    from torchvision.ops import stochastic_depth

    # Stochastic depth scales whole samples (the identity in eval mode): linear in the neurons.
    registry.register(functions=(stochastic_depth,), scaling="real")(pointwise)
    registry.register(functions=(swin.shifted_window_attention,))(swin_attention)
    registry.register(functions=(swin._get_relative_position_bias,))(swin_position_bias)
    registry.register(functions=(swin._patch_merging_pad,))(swin_patch_merging)


REGISTRY.lazy("torchvision", register_torchvision)
