"""Reading a layout from a file: every field's type and the layout's internal consistency.

A layout read from a file is untrusted: an edited one could map weights to the wrong places,
declare a symmetry that changes the function, or fail deep inside an export. Everything here
raises :class:`~wgraph.errors.FileFormatError` naming the field (``layout.spaces[2].permutable``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any

import torch

from ..errors import FileFormatError
from .parts import BLOCK_KINDS, NODE_KINDS, SCALING_GROUPS


def check_layout(layout) -> None:
    """Raise :class:`~wgraph.errors.FileFormatError` naming the first inconsistent field.

    Checked: layers tile the nodes ``0 .. N-1`` in order; every index (space, layer, block,
    node-feature column) is in range; a space lists exactly the layers that name it, its size
    is theirs, and it is permutable only if all of them are hidden (input and output neurons
    are ordered by the data and the task); segments and copy blocks stay inside their layers;
    group and head counts divide their sizes; a shared block's shape is its source's; and the
    parameter map puts every element in exactly one place: each parameter's size is the sum of
    its blocks' or layers', each block with a tensor belongs to exactly one parameter (the one
    it names), no node-feature column of a layer is claimed twice, aliases name a stored
    parameter of their shape.
    """
    L, S = len(layout.layers), len(layout.spaces)
    start = 0
    for li, l in enumerate(layout.layers):
        at = f"layout.layers[{li}]"
        _require(l.start == start, f"{at}.start: {l.start}, but the previous layer ends at node {start}")
        _require(l.size >= 1, f"{at}.size: {l.size} is not positive")
        _require(l.kind in NODE_KINDS, f"{at}.kind: {l.kind!r} is not one of {list(NODE_KINDS)}")
        _require(-1 <= l.space < S, f"{at}.space: {l.space} is not a space index (0..{S - 1}, or -1)")
        _require(l.scaling in SCALING_GROUPS, f"{at}.scaling: {l.scaling!r} is not one of {list(SCALING_GROUPS)}")
        start = l.stop
    by_space: dict[int, list[int]] = {}
    for li, l in enumerate(layout.layers):
        by_space.setdefault(l.space, []).append(li)
    for si, sp in enumerate(layout.spaces):
        at = f"layout.spaces[{si}]"
        members = tuple(by_space.get(si, ()))
        listed = f"{at}.layers: {list(sp.layers)}, but the layers of space {si} are {list(members)}"
        _require(sp.layers == members, listed)
        for li in members:
            l = layout.layers[li]
            _require(l.size == sp.size, f"{at}.size: {sp.size}, but its layer {li} ({l.name!r}) has {l.size} neurons")
            _require(
                not sp.permutable or l.kind == "hidden",
                f"{at}.permutable: true, but its layer {li} ({l.name!r}) holds {l.kind} neurons, which no "
                "permutation may move",
            )
        _require(sp.scaling in SCALING_GROUPS, f"{at}.scaling: {sp.scaling!r} is not one of {list(SCALING_GROUPS)}")
        _require(not (sp.permutable and sp.note), f"{at}.permutable: true, but its note says why not: {sp.note!r}")
        _require(sp.heads >= 1 and sp.size % sp.heads == 0, f"{at}.heads: {sp.heads} does not divide size {sp.size}")
        for k, seg in enumerate(sp.segments):
            li, off, inner = seg if len(seg) == 3 else (-1, -1, -1)
            ok = len(seg) == 3 and 0 <= li < L and layout.layers[li].space == -1 and off >= 0 and inner >= 1
            _require(
                ok and off + sp.size * inner <= layout.layers[li].size,
                f"{at}.segments[{k}]: {list(seg)} is not (composite layer, offset, inner) inside a layer",
            )
    tensor_blocks: set[str] = set()
    for bi, b in enumerate(layout.blocks):
        at = f"layout.blocks[{bi}] ({b.name!r})"
        if b.has_tensor:  # the name keys the block's tensor in a file
            _require(b.name not in tensor_blocks, f"{at}.name: a second block with a tensor of this name")
            tensor_blocks.add(b.name)
        _require(b.kind in BLOCK_KINDS, f"{at}.kind: {b.kind!r} is not one of {list(BLOCK_KINDS)}")
        _require(_block_fits(layout, bi), f"{at}: its indices, offsets, groups or kernel do not fit its layers")
    claimed: dict[int, str] = {}
    columns: set[tuple[int, int]] = set()
    names = set()
    for pi, p in enumerate(layout.params):
        at = f"layout.params[{pi}] ({p.name!r})"
        _require(p.name not in names, f"{at}.name: a second parameter of this name")
        names.add(p.name)
        _require(all(n >= 0 for n in p.shape), f"{at}.shape: {list(p.shape)} has a negative size")
        if p.where == "edges":
            total = 0
            for bi in p.targets:
                n_blocks = len(layout.blocks)
                _require(0 <= bi < n_blocks, f"{at}: block {bi} is out of range (0..{n_blocks - 1})")
                b = layout.blocks[bi]
                _require(b.has_tensor and b.param == p.name, f"{at}: block {bi} ({b.name!r}) does not hold it")
                _require(bi not in claimed, f"{at}: block {bi} is already the parameter {claimed.get(bi)!r}")
                claimed[bi] = p.name
                total += math.prod(layout.block_shape(bi)) if _block_fits(layout, bi) else -1
            _require(total == p.numel, f"{at}.shape: {list(p.shape)} ({p.numel} elements) does not match its blocks")
        elif p.where == "nodes":
            F = len(layout.node_features)
            _require(0 <= p.feature < F, f"{at}.feature: {p.feature} is not a node-feature column (0..{F - 1})")
            total = 0
            for li in p.targets:
                _require(0 <= li < L, f"{at}: layer {li} is out of range (0..{L - 1})")
                _require((li, p.feature) not in columns, f"{at}: column {p.feature} of layer {li} is claimed twice")
                columns.add((li, p.feature))
                total += layout.layers[li].size
            _require(total == p.numel, f"{at}.shape: {list(p.shape)} ({p.numel} elements) does not match its layers")
        elif p.where == "extra":
            _require(isinstance(getattr(torch, str(p.dtype), None), torch.dtype), f"{at}.dtype: {p.dtype!r}")
        elif p.where != "alias":
            raise FileFormatError(f"{at}.where: {p.where!r} is not one of edges, nodes, extra, alias")
    for pi, p in enumerate(layout.params):
        if p.where == "alias":
            at = f"layout.params[{pi}] ({p.name!r}).alias_of"
            target = layout.param_index.get(p.alias_of) if p.alias_of is not None else None
            stored = target is not None and layout.params[target].where != "alias"
            _require(stored, f"{at}: {p.alias_of!r} is not a stored parameter")
            _require(layout.params[target].shape == p.shape, f"{at}: {p.alias_of!r} has another shape")
    F = len(layout.node_features)
    for bi, b in enumerate(layout.blocks):
        if b.has_tensor and bi not in claimed:
            raise FileFormatError(f"layout.blocks[{bi}] ({b.name!r}).param: {b.param!r} has no parameter slot for it")
    names = list(layout.node_features)
    _require(len(set(names)) == F, f"layout.node_features: repeated names in {names}")


def _block_fits(layout, bi: int) -> bool:
    """Whether block ``bi``'s layers, offsets, index, groups and kernel are consistent."""
    b, L = layout.blocks[bi], len(layout.layers)
    if not (0 <= b.src < L and 0 <= b.dst < L):
        return False
    n_src, n_dst = layout.layers[b.src].size, layout.layers[b.dst].size
    if b.kind == "identity":
        return n_src == n_dst
    if b.kind == "copy":
        inside = b.count >= 0 and b.inner >= 1 and 0 <= b.dst_offset and b.dst_offset + b.count * b.inner <= n_dst
        if b.index:
            return inside and len(b.index) == b.count and all(0 <= i < n_src for i in b.index)
        return inside and 0 <= b.src_offset and b.src_offset + b.count <= n_src
    kernel_ok = all(k >= 1 for k in b.kernel)
    if b.kind == "shared":
        if len(b.index) != 2 or not 0 <= b.index[0] < len(layout.blocks) or b.index[1] not in (0, 1):
            return False
        first = layout.blocks[b.index[0]]
        if first.kind != "dense" or not (0 <= first.src < L and 0 <= first.dst < L) or first.kernel != b.kernel:
            return False
        ends = (layout.layers[first.dst].size, layout.layers[first.src].size)
        return kernel_ok and (n_dst, n_src) == (ends if not b.index[1] else ends[::-1])
    groups_ok = b.groups >= 1 and n_src % b.groups == 0 and n_dst % b.groups == 0
    return kernel_ok and groups_ok and (b.kind == "grouped" or b.groups == 1)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FileFormatError(message)


#: How :func:`read_part` checks a field of each annotation (``from __future__ import annotations``
#: makes them strings).
_FIELD_TYPES = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str | None": lambda v: v is None or isinstance(v, str),
    "tuple[int, ...]": lambda v: isinstance(v, list) and all(_FIELD_TYPES["int"](x) for x in v),
    "tuple[tuple[int, int, int], ...]": lambda v: isinstance(v, list)
    and all(isinstance(x, list) and len(x) == 3 and all(_FIELD_TYPES["int"](y) for y in x) for x in v),
}


def read_part(cls, x: Any, at: str):
    """One dataclass of a layout from its JSON object, every field's type checked."""
    if not isinstance(x, dict):
        raise FileFormatError(f"{at}: expected an object, got {type(x).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(x) - set(known))
    if unknown:
        raise FileFormatError(f"{at}: unknown field(s) {unknown}; {cls.__name__} has {list(known)}")
    values = {}
    for name, f in known.items():
        if name not in x:
            if f.default is MISSING:
                raise FileFormatError(f"{at}.{name}: missing")
            continue
        v = x[name]
        if not _FIELD_TYPES[f.type](v):
            raise FileFormatError(f"{at}.{name}: {v!r} is not of type {f.type}")
        values[name] = tuple(tuple(e) if isinstance(e, list) else e for e in v) if isinstance(v, list) else v
    return cls(**values)
