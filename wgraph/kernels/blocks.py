"""Block structure shared by the message-passing code: which nodes a block connects, and pairwise
sums over a (possibly grouped) dense block without index tensors."""

from __future__ import annotations

import torch


def block_nodes(layout, blk) -> tuple[slice | torch.Tensor, slice | torch.Tensor]:
    """Nodes a block connects, ``(sources, targets)``, as slices or index tensors.

    Dense, grouped and identity blocks connect their two whole layers. A copy block connects
    ``count`` source neurons (from ``src_offset``, or the listed ``index``) to ``count * inner``
    target nodes from ``dst_offset``: source ``i`` feeds targets ``i * inner + s``.
    """
    s, d = layout.layers[blk.src], layout.layers[blk.dst]
    if blk.kind != "copy":
        return slice(s.start, s.stop), slice(d.start, d.stop)
    b = d.start + blk.dst_offset
    targets = slice(b, b + blk.count * blk.inner)
    if getattr(blk, "index", ()):
        return s.start + torch.tensor(blk.index, dtype=torch.long), targets
    a = s.start + blk.src_offset
    return slice(a, a + blk.count), targets


def pair_sum(src: torch.Tensor, dst: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``(B, in, H)`` and ``(B, out, H)`` -> ``(B, out, in // groups, H)``: ``dst[o] + src[u]`` for
    every edge ``(o, j)`` of a dense block with ``groups`` groups (source ``u = g(o) * in_g + j``)."""
    B, n_in, H = src.shape
    out = dst.shape[1]
    s = src.reshape(B, groups, 1, n_in // groups, H)
    d = dst.reshape(B, groups, out // groups, 1, H)
    return (s + d).reshape(B, out, n_in // groups, H)
