"""Shape ops: reshapes, axis reorderings, broadcasting, indexing, concatenation and splits.

None of them computes anything; each rule finds where the neuron axis lands in the result, and
refuses an op that would merge, split, reorder or single out neurons in a way the graph cannot
represent.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
from torch import nn

from ...errors import UnsupportedOperation
from ..builder import Feat, LayoutBuilder, Moved, Param, Params, Raw, SplitFeat
from .registry import Op, register


def _around(shape: tuple[int, ...], j: int, k: int, prefix: int, suffix: int) -> bool:
    """Whether the axes of ``shape`` before ``j`` hold ``prefix`` elements and those from ``k`` on ``suffix``."""
    return math.prod(shape[:j]) == prefix and math.prod(shape[k:]) == suffix


def _reshaped(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: Feat, out_shape: tuple[int, ...]):
    """Where the neuron axis of ``x`` lands in a reshape to ``out_shape``, if it stays intact.

    In row-major order the neuron axis ``a`` of size C survives as output axis ``j`` exactly when
    ``out[j] == C`` and the products of the sizes before and after it are unchanged (for C > 1 at
    most one ``j`` qualifies). Otherwise the reshape merges or splits neurons.
    """
    C = x.shape[meta.axis]
    prefix, suffix = math.prod(x.shape[: meta.axis]), math.prod(x.shape[meta.axis + 1 :])
    found = [j for j, s in enumerate(out_shape) if s == C and _around(out_shape, j, j + 1, prefix, suffix)]
    if found:  # unique when C > 1; with C == 1 any size-1 axis holds the single neuron
        return Feat(meta.layer, min(found, key=lambda j: abs(j - meta.axis)))
    # A flattened layer (one node per (neuron, position), :meth:`LayoutBuilder.spread`) unflattened
    # again, (C * inner) -> (C, *positions) (TNT's pixel embedding after nn.Unfold): the primary
    # layer's neurons on the first of those axes.
    segments = b.layers[meta.layer]["segments"]
    if segments is not None and len(segments) == 1 and segments[0][1] == 0 and segments[0][2] > 1:
        primary, _, inner = segments[0]
        for j in range(len(out_shape)):
            for t in range(j + 2, len(out_shape) + 1):
                if out_shape[j] == b.size(primary) and math.prod(out_shape[j + 1 : t]) == inner:
                    if _around(out_shape, j, t, prefix, suffix):
                        return Feat(primary, j)
    # The neuron axis split in two consecutive axes (the first half of a channel shuffle).
    for j in range(len(out_shape) - 1):
        pair = out_shape[j : j + 2]
        if pair[0] * pair[1] == C and min(pair) > 1 and _around(out_shape, j, j + 2, prefix, suffix):
            return SplitFeat(meta.layer, (j, j + 1), (out_shape[j], out_shape[j + 1]))
    # A packed projection split in (parts, heads, head_dim): timm's qkv(x).reshape(B, N, 3, H, d).
    for j in range(len(out_shape) - 2):
        triple = tuple(out_shape[j : j + 3])
        if math.prod(triple) == C and triple[0] > 1 and _around(out_shape, j, j + 3, prefix, suffix):
            return SplitFeat(meta.layer, (j, j + 1, j + 2), triple)
    # Axes before the neuron axis merged into it (Swin's patch merging: (..., 2, 2, C) -> (..., 4C)):
    # the neurons repeated once per position of those axes, a concatenation of copies.
    for t in range(1, meta.axis + 1):
        outer = math.prod(x.shape[meta.axis - t : meta.axis])
        before = math.prod(x.shape[: meta.axis - t])
        for j, s in enumerate(out_shape):
            if outer > 1 and s == C * outer and _around(out_shape, j, j + 1, before, suffix):
                name = f"{b.layers[meta.layer]['name']}:merge"
                return Feat(b.concat(name, [meta.layer] * outer), j)
    # Flatten of the neuron axis with the axes after it: one node per (neuron, position).
    for t in range(1, x.dim() - meta.axis):
        inner = math.prod(x.shape[meta.axis + 1 : meta.axis + 1 + t])
        rest = math.prod(x.shape[meta.axis + 1 + t :])
        for j, s in enumerate(out_shape):
            if s == C * inner and _around(out_shape, j, j + 1, prefix, rest):
                name = f"{b.layers[meta.layer]['name']}:flat"
                return Feat(b.spread(name, meta.layer, inner), j)
    if x.dim() <= 8 and x.numel() <= 1 << 24:  # the neurons folded into other axes: follow each element
        shape = [1] * x.dim()
        shape[meta.axis] = C
        labels = torch.arange(C).view(shape).expand(tuple(x.shape)).reshape(out_shape)
        return _aligned(meta.layer, labels)
    raise UnsupportedOperation(
        f"{op.where}: reshapes {tuple(x.shape)} -> {tuple(out_shape)}, splitting or reordering the {C} "
        f"neurons on axis {meta.axis} (e.g. a channel shuffle); this is not supported yet"
    )


def _aligned(layer: int, labels: torch.Tensor):
    """A :class:`Feat` where one axis of ``labels`` enumerates the neurons in order (the same neuron
    along every other axis), else the :class:`Moved` meta."""
    for j, n in enumerate(labels.shape):
        shape = [1] * labels.dim()
        shape[j] = n
        if torch.equal(labels, torch.arange(n).view(shape).expand(labels.shape)):
            return Feat(layer, j)
    return Moved(layer, labels)


@register(
    modules=(nn.Flatten, nn.Unflatten),
    functions=(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze),
    methods=("flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"),
    aten=(
        "view.default", "reshape.default", "_unsafe_view.default", "unsqueeze.default", "squeeze.dim", "squeeze.dims",
        "squeeze.default", "flatten.using_ints",
    ),
)
def reshape(b: LayoutBuilder, op: Op):
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, Moved):
        return _aligned(meta.layer, meta.labels.reshape(tuple(op.out.shape)))
    if isinstance(meta, SplitFeat):
        return _merge_split(b, op, x, meta, tuple(op.out.shape))
    if not isinstance(meta, Feat):
        return meta
    return _reshaped(b, op, x, meta, tuple(op.out.shape))


@register(
    functions=(torch.transpose, torch.permute, torch.movedim, torch.swapaxes, torch.t),
    methods=("transpose", "permute", "t", "movedim", "swapaxes"),
    aten=("transpose.int", "permute.default", "t.default"),
)
def transpose(b: LayoutBuilder, op: Op):
    """Axis reorderings move the neuron axis; find it by applying the same op to axis labels."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, Param):  # W.t(): not the weight in its stored orientation
        return replace(meta, derived=True)
    if isinstance(meta, Moved):
        target, labels = op.node.target, meta.labels
        fn = getattr(labels, target) if isinstance(target, str) else (lambda *a, **k: target(labels, *a, **k))
        return _aligned(meta.layer, fn(*op.args[1:], **op.kwargs))
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


def _kept_axis(shape: tuple[int, ...], a: int, out_shape: tuple[int, ...]) -> int | None:
    """The axis of ``out_shape`` that is axis ``a`` of ``shape`` unchanged (same size, same numbers
    of elements before and after it), or None."""
    before, after = math.prod(shape[:a]), math.prod(shape[a + 1 :])
    found = [j for j, n in enumerate(out_shape) if n == shape[a] and _around(out_shape, j, j + 1, before, after)]
    return found[0] if len(found) == 1 else None


def _merge_split(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: SplitFeat, out_shape: tuple[int, ...]):
    """A reshape that merges the parts of a split neuron axis back into one axis: the neurons come
    back in the order the axes now have (transposed parts: a channel shuffle, fixed), or a reshape
    of other axes only."""
    if out_shape == tuple(x.shape):
        return meta
    kept = [_kept_axis(tuple(x.shape), a, out_shape) for a in meta.axes]
    if all(j is not None for j in kept):  # only other axes reshaped (Hiera's pooled queries)
        return SplitFeat(meta.layer, tuple(kept), meta.sizes)
    lo, hi = min(meta.axes), max(meta.axes)
    C = math.prod(meta.sizes)
    prefix = math.prod(x.shape[:lo])
    j = next((j for j in range(len(out_shape)) if out_shape[j] == C and math.prod(out_shape[:j]) == prefix), None)
    between = [a for a in range(lo, hi + 1) if a not in meta.axes and x.shape[a] != 1]  # size-1 axes may sit there
    if between or j is None or math.prod(out_shape[j + 1 :]) != math.prod(x.shape[hi + 1 :]):
        raise UnsupportedOperation(f"{op.where}: reshapes a tensor whose neuron axis is split, without merging it back")
    order = sorted(range(len(meta.axes)), key=lambda k: meta.axes[k])  # the parts in the order they now have
    index = torch.arange(C).view(meta.sizes).permute(order).reshape(-1).tolist()
    if index == list(range(C)):
        return Feat(meta.layer, j)
    return Feat(b.reorder(f"{b.layers[meta.layer]['name']}:shuffle", meta.layer, index, op.where), j)


@register(methods=("expand", "expand_as", "repeat", "tile"), aten=("expand.default", "expand_as.default"))
def expand(b: LayoutBuilder, op: Op):
    """Broadcasting copies keep neurons if they only grow other (or new leading) axes. An expanded
    parameter stays a parameter (e.g. a class token expanded over the batch)."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        axes = tuple(a + op.out.dim() - x.dim() for a in meta.axes)
        if any(op.out.shape[a] != x.shape[o] for a, o in zip(axes, meta.axes)):
            raise UnsupportedOperation(f"{op.where}: repeats the neuron axis")
        return SplitFeat(meta.layer, axes, meta.sizes)
    if not isinstance(meta, Feat):
        return meta
    axis = meta.axis + op.out.dim() - x.dim()
    if op.out.shape[axis] != x.shape[meta.axis]:
        raise UnsupportedOperation(f"{op.where}: repeats the neuron axis")
    return Feat(meta.layer, axis)


@register(functions=(torch.repeat_interleave,), methods=("repeat_interleave",), aten=("repeat_interleave.self_int",))
def repeat_interleave(b: LayoutBuilder, op: Op):
    """``x.repeat_interleave(r, dim)`` along a batch or token axis keeps the neurons (GCViT's global
    queries); along the neuron axis it would copy single neurons."""
    x, meta = op.args[0], op.metas[0]
    dim = op.arg(2, "dim")
    axes = meta.axes if isinstance(meta, SplitFeat) else (meta.axis,) if isinstance(meta, Feat) else ()
    if axes and (dim is None or dim % x.dim() in axes):
        raise UnsupportedOperation(f"{op.where}: repeats single neurons (repeat_interleave along the neuron axis)")
    return meta


@register(functions=(torch.roll,), methods=("roll",), aten=("roll.default",))
def roll(b: LayoutBuilder, op: Op):
    """``torch.roll`` along spatial or token axes (Swin's shifted windows) keeps the neurons; along
    the neuron axis it would move them."""
    x, meta = op.args[0], op.metas[0]
    dims = op.arg(2, "dims")
    axes = meta.axes if isinstance(meta, SplitFeat) else (meta.axis,) if isinstance(meta, Feat) else ()
    dims = (dims,) if isinstance(dims, int) else dims
    rolled = set(range(x.dim())) if not dims else {d % x.dim() for d in dims}
    if rolled & set(axes):
        raise UnsupportedOperation(f"{op.where}: rolls the neuron axis")
    return meta


@register(methods=("unfold",), aten=("unfold.default",))
def unfold(b: LayoutBuilder, op: Op):
    """``x.unfold(dim, size, step)``: windows along a spatial or token axis, one new last axis of
    positions in the window; the neurons stay on their axis (along the neuron axis: refused)."""
    x, meta = op.args[0], op.metas[0]
    dim = op.arg(1, "dimension") % x.dim()
    axes = meta.axes if isinstance(meta, SplitFeat) else (meta.axis,) if isinstance(meta, Feat) else ()
    if dim in axes:
        raise UnsupportedOperation(f"{op.where}: unfolds the neuron axis into windows")
    return meta


@register(aten=("index.Tensor",))
def index_tensor(b: LayoutBuilder, op: Op):
    """``table[:, idx]`` under ``torch.export`` (a relative position bias gathered from its table):
    fine for parameters and inputs; gathering hidden activations would single out neurons."""
    meta = op.metas[0]
    if isinstance(meta, (Feat, SplitFeat)):
        raise UnsupportedOperation(f"{op.where}: gathers hidden activations by a tensor index")
    _index_buffers(b, op)
    return meta


def _index_buffers(b: LayoutBuilder, op: Op) -> None:
    """Index buffers (``attention_bias_idxs``) that gather from a table belong to no neuron: extras."""
    index = op.metas[1] if len(op.metas) > 1 else None
    for m in index if isinstance(index, (tuple, list)) else (index,):
        if isinstance(m, Param) and m.name not in b.slots:
            b.extra(m.name, m.shape, m.dtype, op.where)


@register(functions=(getattr, len), methods=("size", "dim", "numel"), aten=("_assert_tensor_metadata.default",))
def shape_query(b: LayoutBuilder, op: Op):
    return None


@register(functions=(operator.getitem,))
def getitem(b: LayoutBuilder, op: Op):
    """Indexing shapes and tuples is fine; indexing hidden activations would single out neurons."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        return _index_split(b, op, x, meta, _expanded(x, op.args[1]))
    if isinstance(meta, Feat):
        axis = _indexed_axis(x, op.args[1], meta.axis)
        expanded = _expanded(x, op.args[1])
        if axis is None and expanded is not None:
            out, i = _landing(expanded, meta.axis)  # x[:, :C'] (GhostNet's crop, DPN's and FocalNet's splits)
            if isinstance(i, slice) and i.step in (None, 1):
                return _neuron_slice(b, op, meta, *i.indices(x.shape[meta.axis])[:2], out)
        index = op.args[1]
        if axis is None and isinstance(index, torch.Tensor) and meta.axis > 0 and not index.is_floating_point():
            if index.dtype != torch.bool:  # table[idx] gathers positions (Swin V2's bias table)
                return Feat(meta.layer, meta.axis - 1 + index.dim())
        if axis is None:
            raise UnsupportedOperation(
                f"{op.where}: indexes a hidden activation ({op.node.args[1]!r}) along its neuron axis; "
                "reading individual hidden channels is not supported yet"
            )
        return Feat(meta.layer, axis)
    if isinstance(x, torch.Tensor):
        _index_buffers(b, op)
        return meta
    if isinstance(meta, (tuple, list)):
        return meta[op.args[1]] if isinstance(op.args[1], int) else None
    return None



def _expanded(x: torch.Tensor, index) -> list | None:
    """``index`` of ``x[index]`` with one entry per axis of ``x`` (plus the ``None`` of new axes),
    or None for tensor and list indices."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in index):
        return None
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded += [slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i]
    return expanded + [slice(None)] * (x.dim() + expanded.count(None) - len(expanded))


def _landing(expanded: list, axis: int) -> tuple[int, object]:
    """Where ``axis`` lands in the result of an expanded index, and the index entry it gets."""
    src, out = 0, 0
    for i in expanded:
        if i is None:
            out += 1
            continue
        if src == axis:
            return out, i
        src += 1
        out += 0 if isinstance(i, int) else 1
    return out, slice(None)


def _indexed_axis(x: torch.Tensor, index, axis: int) -> int | None:
    """Where ``axis`` of ``x`` lands in ``x[index]``, or None if the index does not keep it whole."""
    expanded = _expanded(x, index)
    if expanded is None:
        return None
    out, i = _landing(expanded, axis)
    return out if i == slice(None) else None


def _within_heads(b: LayoutBuilder, op: Op, meta: SplitFeat, sl: slice, axes: tuple[int, ...]) -> SplitFeat:
    """``x[..., a:b]`` of a head-split tensor (rotary embeddings' halves): the same dimensions of
    every head, a fixed selection (:meth:`LayoutBuilder.reorder`)."""
    H, D = meta.sizes
    picked = range(D)[sl]
    index = [h * D + j for h in range(H) for j in picked]
    name = f"{b.layers[meta.layer]['name']}[{picked.start}:{picked.stop}:{picked.step}]"
    li = b.reorder(name, meta.layer, index, op.where, what="a slice of each head's dimensions")
    return SplitFeat(li, axes, (H, len(picked)))


def _index_split(b: LayoutBuilder, op: Op, x: torch.Tensor, meta: SplitFeat, expanded: list | None):
    """``x[index]`` of a split neuron axis: every split axis kept whole, or one part of a packed
    projection selected (``qkv[0]`` of ``qkv.permute(2, 0, 3, 1, 4)``), the rest kept whole."""
    landed = [] if expanded is None else [_landing(expanded, a) for a in meta.axes]
    kept = [i == slice(None) for _, i in landed]
    if landed and all(kept):
        return SplitFeat(meta.layer, tuple(out for out, _ in landed), meta.sizes)
    if landed and len(meta.axes) == 2 and kept[0] and isinstance(landed[1][1], slice):
        out = tuple(o for o, _ in landed)
        return _within_heads(b, op, meta, landed[1][1], out)
    if landed and len(meta.axes) == 3 and isinstance(landed[0][1], int) and all(kept[1:]):
        part = b.unpack(meta.layer, meta.sizes[0], op.where, _sole_reader(op.node))[landed[0][1] % meta.sizes[0]]
        return SplitFeat(part, tuple(out for out, _ in landed[1:]), meta.sizes[1:])
    raise UnsupportedOperation(
        f"{op.where}: indexes a tensor whose neuron axis is split ({op.node.args[1:]!r}); only selecting "
        "one part of a packed projection (qkv[0]) is supported"
    )


@register(functions=(torch.unbind,), methods=("unbind",), aten=("unbind.int",))
def unbind(b: LayoutBuilder, op: Op):
    """``qkv.unbind(0)``: the pieces along a token, batch or part axis (each part of a packed
    projection its own layer, :meth:`LayoutBuilder.unpack`); along the neuron axis it would single
    out neurons."""
    x, meta = op.args[0], op.metas[0]
    dim = op.arg(1, "dim", 0) % x.dim()
    n = x.shape[dim]
    if isinstance(meta, Feat) and dim != meta.axis:
        return tuple(Feat(meta.layer, meta.axis - (dim < meta.axis)) for _ in range(n))
    if isinstance(meta, SplitFeat):
        index = [[slice(None)] * dim + [i] + [slice(None)] * (x.dim() - dim - 1) for i in range(n)]
        return tuple(_index_split(b, op, x, meta, expanded) for expanded in index)
    if isinstance(meta, Feat):
        raise UnsupportedOperation(f"{op.where}: unbinds the neuron axis; reading individual neurons is not supported")
    return tuple(meta for _ in range(n))


#: Ops between a packed projection and the selection of its parts (fx methods and ATen names).
_PACKED_PATH = {"reshape", "view", "permute", "transpose", "contiguous", "_unsafe_view"}
_PART_READERS = {"getitem", "select", "unbind"}


def _sole_reader(node: torch.fx.Node) -> bool:
    """Whether the parts selected at ``node`` are all that reads the packed projection: each tensor
    between the weight's output and ``node`` (reshapes, permutes) is read by the next one only,
    and the last one only by selections of parts (``qkv[0]``, ``qkv[1]``, ...)."""

    def name(n) -> str:
        target = n.target
        return target if isinstance(target, str) else getattr(target, "__name__", str(target)).split(".")[0]

    src = node.args[0]
    if not isinstance(src, torch.fx.Node) or not all(u is node or name(u) in _PART_READERS for u in src.users):
        return False
    while src.op != "call_module" and name(src) in _PACKED_PATH:
        src = src.args[0]
        if not isinstance(src, torch.fx.Node) or len(src.users) != 1:
            return False
    return len(src.users) == 1


def _neuron_slice(b: LayoutBuilder, op: Op, meta: Feat, start: int, stop: int, axis: int) -> Feat:
    """Neurons ``start:stop`` of a layer (a crop of concatenated channels, a channel split written as
    indexing): a slice of it, which fixes both (:meth:`LayoutBuilder.split`)."""
    name = f"{b.layers[meta.layer]['name']}[{start}:{stop}]"
    return Feat(b.split(name, meta.layer, start, stop - start, op.where), axis)


@register(aten=("select.int", "slice.Tensor"))
def select_slice(b: LayoutBuilder, op: Op):
    """``select``/``slice`` along a token or spatial axis keep the neurons; along the neuron axis
    they would single neurons out."""
    x, meta = op.args[0], op.metas[0]
    if isinstance(meta, SplitFeat):
        dim = op.arg(1, "dim", 0) % x.dim()
        if op.out.dim() < x.dim():  # select.int
            index = [slice(None)] * dim + [op.arg(2, "index")] + [slice(None)] * (x.dim() - dim - 1)
            return _index_split(b, op, x, meta, index)
        if len(meta.axes) == 2 and dim == meta.axes[1] and tuple(op.out.shape) != tuple(x.shape):
            sl = slice(op.arg(2, "start"), op.arg(3, "end"), op.arg(4, "step", 1))
            return _within_heads(b, op, meta, sl, meta.axes)
        if dim in meta.axes and tuple(op.out.shape) != tuple(x.shape):
            raise UnsupportedOperation(f"{op.where}: slices a split neuron axis")
        return meta
    if not isinstance(meta, Feat):
        return meta
    dim = op.arg(1, "dim", 0) % x.dim()
    if dim == meta.axis:
        if tuple(op.out.shape) == tuple(x.shape):
            return meta
        if op.node.target is torch.ops.aten.slice.Tensor and op.arg(4, "step", 1) == 1:
            start, stop, _ = slice(op.arg(2, "start"), op.arg(3, "end")).indices(x.shape[dim])
            return _neuron_slice(b, op, meta, start, stop, dim)
        raise UnsupportedOperation(
            f"{op.where}: slices the neuron axis; reading individual hidden channels is not supported yet"
        )
    return Feat(meta.layer, meta.axis - (1 if op.out.dim() < x.dim() and dim < meta.axis else 0))


@register(functions=(torch.cat, torch.concat, torch.concatenate), aten=("cat.default",))
def cat(b: LayoutBuilder, op: Op):
    """Concatenation along the neuron axis gives a composite layer (:meth:`LayoutBuilder.concat`);
    along another axis (tokens, batch) the parts must be neurons of one layer."""
    parts, metas = op.args[0], op.metas[0]
    dim = op.arg(1, "dim", 0) % parts[0].dim()
    if any(isinstance(m, SplitFeat) for m in metas):
        first = metas[0]
        if all(m == first for m in metas) and dim not in first.axes:  # more tokens of one layer
            return first
        same = all(isinstance(m, SplitFeat) and m.axes == first.axes and m.sizes[0] == first.sizes[0] for m in metas)
        if same and len(first.axes) == 2 and dim == first.axes[1]:  # rotate_half: cat((-x2, x1), dim=-1)
            name = f"{op.node.name}:heads"
            li = b.interleave(name, [m.layer for m in metas], first.sizes[0], op.where)
            return SplitFeat(li, first.axes, (first.sizes[0], op.out.shape[dim]))
        raise UnsupportedOperation(f"{op.where}: concatenates tensors whose neuron axis is split otherwise")
    feats = [m for m in metas if isinstance(m, Feat)]
    if not feats:
        params = [p for m in metas for p in (m.parts if isinstance(m, Params) else (m,)) if isinstance(p, Param)]
        return Params(tuple(params)) if params else next((m for m in metas if isinstance(m, Raw)), None)
    if any(isinstance(m, Param) for m in metas) and all(m.axis != dim for m in feats):
        return _cat_tokens(b, op, parts, metas, feats[0], dim)
    if any(m.axis != dim for m in feats):
        if all(isinstance(m, Feat) and m.layer == feats[0].layer and m.axis == feats[0].axis for m in metas):
            return feats[0]
        if all(isinstance(m, Feat) and m.axis == feats[0].axis for m in metas):
            return _join_tokens(b, op, parts, feats)
        raise UnsupportedOperation(
            f"{op.where}: concatenates hidden activations with other tensors along axis {dim}, which is not "
            "their neuron axis; only parts from one layer can be joined this way"
        )
    layers = [b.as_layer(m, dim, t.shape[dim], op.where) for t, m in zip(parts, metas)]
    return Feat(b.concat(op.node.name, layers), dim)


@register(
    functions=(torch.split, torch.chunk, torch.tensor_split),
    methods=("split", "chunk", "tensor_split"),
    aten=("split.Tensor", "split_with_sizes.default", "chunk.default"),
)
def split(b: LayoutBuilder, op: Op):
    """Splitting along the neuron axis makes the source non-permutable (:meth:`LayoutBuilder.split`),
    except that equal pieces of what one weight alone wrote (``qkv(x).chunk(3, -1)``) become layers
    of their own (:meth:`LayoutBuilder.unpack`); along another axis every piece keeps the same
    neurons."""
    x, meta = op.args[0], op.metas[0]
    dim = op.arg(2, "dim", 0) % x.dim()
    if isinstance(meta, SplitFeat) and dim in meta.axes:
        return _split_heads(b, op, meta, dim)
    if not isinstance(meta, Feat):
        return tuple(meta for _ in op.out)
    if dim != meta.axis:
        return tuple(Feat(meta.layer, meta.axis) for _ in op.out)
    if len({t.shape[dim] for t in op.out}) == 1:  # q, k, v = qkv(x).chunk(3, -1): a packed projection
        return tuple(Feat(li, dim) for li in b.unpack(meta.layer, len(op.out), op.where, _sole_reader(op.node)))
    pieces, off = [], 0
    for i, t in enumerate(op.out):
        n = t.shape[dim]
        pieces.append(Feat(b.split(f"{b.layers[meta.layer]['name']}:split{i}", meta.layer, off, n, op.where), dim))
        off += n
    return tuple(pieces)


def _split_heads(b: LayoutBuilder, op: Op, meta: SplitFeat, dim: int) -> tuple[SplitFeat, ...]:
    """Pieces of a neuron axis split in (heads, dims), split along one of those axes (LeViT's
    ``qkv(x).view(B, N, heads, -1).split([key_dim, key_dim, val_dim], dim=3)``: each head's q, k
    and v interleaved). Each piece is a fixed selection of the neurons (:meth:`LayoutBuilder.reorder`)."""
    if len(meta.axes) != 2:
        raise UnsupportedOperation(f"{op.where}: splits a packed projection before selecting its parts")
    (H, D), minor = meta.sizes, dim == meta.axes[1]
    pieces, off = [], 0
    for k, t in enumerate(op.out):
        n = t.shape[dim]
        if minor:
            index = [h * D + off + j for h in range(H) for j in range(n)]
        else:
            index = list(range(off * D, (off + n) * D))
        name = f"{b.layers[meta.layer]['name']}:split{k}"
        li = b.reorder(name, meta.layer, index, op.where, what="split of a head-split axis")
        pieces.append(SplitFeat(li, meta.axes, (H, n) if minor else (n, D)))
        off += n
    return tuple(pieces)


@register(functions=(torch.stack,), aten=("stack.default",))
def stack(b: LayoutBuilder, op: Op):
    """``torch.stack`` along a new axis: the neurons stay on their axis (shifted if the new axis comes
    before it); tensors of different layers are joined as tokens are (:func:`_join_tokens`)."""
    parts, metas = op.args[0], op.metas[0]
    dim = op.arg(1, "dim", 0) % op.out.dim()
    first = metas[0]
    if isinstance(first, SplitFeat) and len(first.axes) == 2 and all(m == replace(first, layer=m.layer) for m in metas):
        # EVA's rotary pairs stack((-x[..., 1::2], x[..., ::2]), -1): the parts one after another
        # (a concatenation, fixed where later merged in another order), the stacked axis first
        li = b.concat(f"{op.node.name}:stack", [m.layer for m in metas])
        moved = tuple(a + (dim <= a) for a in first.axes)
        return SplitFeat(li, (dim, *moved), (len(metas), *first.sizes))
    feats = [m for m in metas if isinstance(m, Feat)]
    if not feats:
        if any(isinstance(m, (SplitFeat, Param)) for m in metas):
            raise UnsupportedOperation(f"{op.where}: stacks tensors whose neuron axis is split, or parameters")
        return next((m for m in metas if isinstance(m, Raw)), None)
    if len(feats) != len(metas):
        raise UnsupportedOperation(f"{op.where}: stacks hidden activations with other tensors")
    joined = feats[0] if all(m == feats[0] for m in feats) else _join_tokens(b, op, parts, feats)
    return Feat(joined.layer, joined.axis + (dim <= joined.axis))


def _join_tokens(b: LayoutBuilder, op: Op, parts, feats: list[Feat]) -> Feat:
    """``cat([x_cls, x], dim=tokens)`` of tokens from different layers (CaiT's class stream joined
    to the patch tokens): every later op treats neuron ``c`` of all of them alike, so the layers
    share one permutation (tied, an identity block ``tokens:`` between them, as for a residual)."""
    sizes = {t.shape[m.axis] for t, m in zip(parts, feats)}
    if len(sizes) != 1:
        raise UnsupportedOperation(f"{op.where}: joins tokens with different numbers of neurons {sorted(sizes)}")
    dst = max(m.layer for m in feats)
    for m in feats:
        if m.layer != dst:
            b.identity(f"tokens:{b.layers[m.layer]['name']}->{b.layers[dst]['name']}", m.layer, dst)
            b.tie(m.layer, dst)
            b.restrict_scaling(m.layer, "none")
    b.restrict_scaling(dst, "none")
    return Feat(dst, feats[0].axis)


def _cat_tokens(b: LayoutBuilder, op: Op, parts, metas, meta: Feat, dim: int):
    """``cat([class_token.expand(...), x], dim=tokens)``: a learned token is one more value per
    neuron, a node feature ``token`` of the neurons' layer; ``T > 1`` learned tokens ``(1, T, C)``
    (register tokens) are T input nodes with edges to the C neurons (like a positional embedding)."""
    for t, m in zip(parts, metas):
        if isinstance(m, Feat):
            if m != meta:
                raise UnsupportedOperation(f"{op.where}: joins tokens of different layers")
        elif isinstance(m, Param):
            C = t.shape[meta.axis]
            if math.prod(m.shape) % C or m.shape[-1] != C or meta.axis != t.dim() - 1 or m.derived:
                raise UnsupportedOperation(f"{op.where}: parameter {m.name!r} of shape {m.shape} joins the tokens")
            if math.prod(m.shape) == C:
                b.node_param(meta.layer, "token", m.name, m.shape, op.where)
            else:  # several learned tokens (register tokens): input nodes, as a positional embedding
                tokens = b.new_layer(m.name, math.prod(m.shape) // C, 0, kind="input")
                b.dense(m.name, tokens, meta.layer, m.name, m.shape, op.where, transposed=True)
                b.restrict_scaling(meta.layer, "none")
        else:
            raise UnsupportedOperation(f"{op.where}: joins hidden tokens with a non-parameter tensor")
    return meta
