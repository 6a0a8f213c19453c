"""Incremental construction of a :class:`~wgraph.layout.Layout` while interpreting a traced model.

The rules in :mod:`wgraph.convert.rules` call three things: :meth:`LayoutBuilder.new_layer` (an op
writes a fresh activation), :meth:`LayoutBuilder.dense` (a weight connects two layers) and
:meth:`LayoutBuilder.tie` (two layers must share one permutation, e.g. a residual addition).
Ties are kept in a union-find forest; :meth:`LayoutBuilder.build` turns its roots into
:class:`~wgraph.layout.NeuronSpace` objects.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import UnsupportedOperation
from ..layout import EdgeBlock, Layout, NeuronLayer, NeuronSpace, ParamSlot, intersect_scaling
from .metas import Feat, Gram, Moved, Param, Params, Raw, Scores, SplitFeat, Stat  # noqa: F401 (the rules' imports)


class LayoutBuilder:
    def __init__(self, prefix: str = "", aliases: dict[str, str] | None = None):
        self.prefix = prefix  # stripped from module paths (set when a bare leaf module is wrapped)
        self.layers: list[dict] = []
        self.blocks: list[EdgeBlock] = []
        self.slots: dict[str, ParamSlot] = {}
        self._parent: list[int] = []
        self._inputs: dict[tuple[str, int], int] = {}
        self._fixed: dict[int, str] = {}  # union-find root -> why its space cannot be permuted
        self._heads: dict[int, tuple[int, int]] = {}  # root -> (heads, head group or -1)
        self._head_groups = 0
        self._columns: set[tuple[int, str]] = set()  # (layer, node feature) already holding a parameter
        self._unpacked: dict[int, tuple[int, ...]] = {}  # packed layer -> its part layers
        self.node_features = ["bias"]
        self.aliases = aliases or {}  # second names of tied tensors -> the first name

    def path(self, target: str) -> str:
        """The module path of fx target ``target`` in the user's model."""
        if self.prefix and (target + ".").startswith(self.prefix):
            return target[len(self.prefix) :]
        return target

    @staticmethod
    def qualify(path: str, attr: str) -> str:
        """State-dict key of attribute ``attr`` of the module at ``path`` (``""`` is the root)."""
        return f"{path}.{attr}" if path else attr

    # ----------------------------------------------------------------- layers
    def new_layer(self, name: str, size: int, depth: int, kind: str = "hidden", segments=None) -> int:
        """A layer of ``size`` new neurons; with ``segments`` a composite layer (see :meth:`concat`)."""
        self.layers.append(
            {"name": name, "kind": kind, "depth": depth, "size": int(size), "scaling": "real", "segments": segments}
        )
        self._parent.append(len(self._parent))
        return len(self.layers) - 1

    def segments(self, li: int) -> list[tuple[int, int, int]]:
        """``(primary layer, offset, inner)`` pieces of layer ``li``: node ``offset + c * inner + s``
        of ``li`` is neuron ``c`` of the primary layer, for ``s < inner``."""
        segs = self.layers[li]["segments"]
        return [(li, 0, 1)] if segs is None else segs

    # ------------------------------------------------------- composite layers
    def concat(self, name: str, parts: list[int]) -> int:
        """Concatenation along the neuron axis: a composite layer whose nodes mirror the parts'.

        Its neurons are permuted by the parts' own permutations (block-diagonally), so it adds no
        symmetry of its own; copy blocks connect each part to its slice.
        """
        segs, off = [], 0
        for p in parts:
            segs += [(l, off + o, inner) for l, o, inner in self.segments(p)]
            off += self.size(p)
        li = self.new_layer(name, off, max(self.depth(p) for p in parts), segments=segs)
        off = 0
        for p in parts:
            block = f"cat:{self.layers[p]['name']}->{name}"
            self.blocks.append(EdgeBlock(block, "copy", p, li, dst_offset=off, count=self.size(p)))
            off += self.size(p)
            self.restrict_scaling(p, "none")
        self.restrict_scaling(li, "none")
        return li

    def spread(self, name: str, src: int, inner: int) -> int:
        """Flatten of a neuron axis with ``inner`` trailing positions: one node per (neuron, position),
        each tied to its neuron (node ``c * inner + s`` moves with neuron ``c``)."""
        segs = [(l, o * inner, k * inner) for l, o, k in self.segments(src)]
        li = self.new_layer(name, self.size(src) * inner, self.depth(src), segments=segs)
        block = f"flatten:{self.layers[src]['name']}"
        self.blocks.append(EdgeBlock(block, "copy", src, li, inner=inner, count=self.size(src)))
        self.restrict_scaling(src, "none")
        self.restrict_scaling(li, "none")
        return li

    def reorder(self, name: str, src: int, index: list[int], where: str, what: str = "channel reordering") -> int:
        """Neurons of ``src`` in a fixed new order (new neuron ``i`` is ``index[i]``, e.g. a channel
        shuffle), or a fixed selection of them (``index`` shorter than ``src``). A permutation of
        ``src`` would induce a different one on the result, which the layout does not express, so
        both are fixed (``what`` says why)."""
        self.fix(src, f"{what} at {where}")
        li = self.new_layer(name, len(index), self.depth(src))
        self.fix(li, f"{what} at {where}")
        block = f"reorder:{self.layers[src]['name']}->{name}"
        self.blocks.append(EdgeBlock(block, "copy", src, li, count=len(index), index=tuple(index)))
        self.restrict_scaling(li, "none")
        return li

    def split(self, name: str, src: int, offset: int, size: int, where: str) -> int:
        """A slice of a layer's neurons. A permutation could move neurons across the slice
        boundary, so the source's space becomes non-permutable (and so is the slice)."""
        self.fix(src, f"split at {where}")
        li = self.new_layer(name, size, self.depth(src))
        self.fix(li, f"split at {where}")
        block = f"split:{self.layers[src]['name']}->{name}"
        self.blocks.append(EdgeBlock(block, "copy", src, li, src_offset=offset, count=size))
        self.restrict_scaling(li, "none")
        return li

    def interleave(self, name: str, parts: list[int], heads: int, where: str) -> int:
        """Per head, the dimensions of ``parts`` one after another (``cat((-x2, x1), dim=-1)`` of
        head-split tensors: rotary embeddings' ``rotate_half``): a new layer, copy blocks from each
        part's head ``h`` to its place in head ``h``. Everything involved is fixed."""
        widths = [self.size(li) // heads for li in parts]
        total = sum(widths)
        li = self.new_layer(name, heads * total, max(self.depth(p) for p in parts))
        for src in (*parts, li):
            self.fix(src, f"a concatenation within attention heads at {where}")
        for k, (src, n) in enumerate(zip(parts, widths)):
            for h in range(heads):
                block = f"cat:{self.layers[src]['name']}->{name}[{h}]"
                dst_offset = h * total + sum(widths[:k])
                self.blocks.append(EdgeBlock(block, "copy", src, li, src_offset=h * n, dst_offset=dst_offset, count=n))
        self.restrict_scaling(li, "none")
        return li

    def fold(self, name: str, src: int, parts: int, where: str) -> int:
        """A new layer whose neuron ``c`` reduces neurons ``c, c + n, c + 2n, ...`` of ``src`` (``n``
        the new size; ResNeSt's sum over the radix splits): a copy block from each of the ``parts``
        slices. A permutation of ``src`` would have to move the slices together: both fixed."""
        size = self.size(src) // parts
        self.fix(src, f"reduction over parts of the neurons at {where}")
        li = self.new_layer(name, size, self.depth(src))
        self.fix(li, f"reduction over parts of the neurons at {where}")
        for k in range(parts):
            block = f"fold:{self.layers[src]['name']}->{name}[{k}]"
            self.blocks.append(EdgeBlock(block, "copy", src, li, src_offset=k * size, count=size))
        self.restrict_scaling(li, "none")
        return li

    def unpack(self, li: int, parts: int, where: str, sole: bool = True) -> tuple[int, ...]:
        """Layer ``li`` as ``parts`` layers of equal size (a packed projection: timm's ``qkv``).

        Where ``li`` is just what one weight wrote (the newest layer and block, nothing tied to
        it, no node feature but its bias), the weight becomes row blocks into the parts
        (:meth:`dense_parts`) and its bias a vector over them (:meth:`node_param_parts`), ``li``
        being the first part: each part gets its own space. Otherwise each part is a slice of
        ``li`` (:meth:`split`), which fixes the spaces. Asked again, the same layers come back.
        ``sole``: the caller checked that nothing but this split reads the layer's tensor (no other
        op holds a meta of ``li`` that the unpacking would shrink).
        """
        if li not in self._unpacked:
            size = self.size(li) // parts
            fresh = self._fresh_dense(li) if sole else None
            if fresh is None:
                name = self.layers[li]["name"]
                pieces = [self.split(f"{name}[{k}]", li, k * size, size, where) for k in range(parts)]
                self._unpacked[li] = tuple(pieces)
            else:
                self._unpacked[li] = self._unpack_dense(li, parts, fresh)
        return self._unpacked[li]

    def _fresh_dense(self, li: int) -> int | None:
        """The index of the dense block that alone wrote layer ``li`` (see :meth:`unpack`), or None."""
        bi = len(self.blocks) - 1
        if bi < 0 or li != len(self.layers) - 1 or self.layers[li]["segments"] is not None:
            return None
        block = self.blocks[bi]
        slot = self.slots.get(block.param or "")
        if block.kind != "dense" or block.dst != li or slot is None or slot.index != bi or slot.parts:
            return None
        if slot.transposed or self._find(li) != li or li in self._fixed or li in self._heads:
            return None
        return bi if {f for l, f in self._columns if l == li} <= {"bias"} else None

    def _unpack_dense(self, li: int, parts: int, bi: int) -> tuple[int, ...]:
        block, size = self.blocks[bi], self.size(li) // parts
        name, depth = self.layers[li]["name"], self.depth(li)
        self.layers[li].update(name=f"{name}[0]", size=size)
        layers = (li, *(self.new_layer(f"{name}[{k}]", size, depth) for k in range(1, parts)))
        for other in layers[1:]:
            self.layers[other]["scaling"] = self.layers[li]["scaling"]
        self.blocks[bi] = replace(block, name=f"{block.param}[0]")
        self.blocks += [replace(block, name=f"{block.param}[{k}]", dst=layers[k]) for k in range(1, parts)]
        slot = self.slots[block.param]
        self.slots[block.param] = replace(slot, parts=(bi, *range(len(self.blocks) - parts + 1, len(self.blocks))))
        bias = next((k for k, v in self.slots.items() if v.where == "nodes" and v.index == li), None)
        if bias is not None:
            self.slots[bias] = replace(self.slots[bias], parts=layers)
            self._columns |= {(l, "bias") for l in layers}
        return layers

    def input_layer(self, source: str, axis: int, size: int) -> int:
        """The input layer for raw tensor ``source`` read along ``axis`` (created once)."""
        key = (source, axis)
        if key not in self._inputs:
            name = "input" if not self._inputs else f"input:{source}"
            self._inputs[key] = self.new_layer(name, size, depth=0, kind="input")
        li = self._inputs[key]
        if self.layers[li]["size"] != size:
            raise UnsupportedOperation(
                f"input {source!r} is read along axis {axis} with {size} and with "
                f"{self.layers[li]['size']} features; reshape it once before the first layer"
            )
        return li

    def as_layer(self, meta, axis: int, size: int, where: str) -> int:
        """Layer index of a Feat/Raw argument read along ``axis`` (normalized, non-negative)."""
        if isinstance(meta, Raw):
            return self.input_layer(meta.source, axis, size)
        if isinstance(meta, Param):  # a buffer of constants used as data (e.g. coordinates)
            if meta.name not in self.slots:
                self.extra(meta.name, meta.shape, meta.dtype, where)
            return self.input_layer(meta.name, axis, size)
        if isinstance(meta, Feat):
            # A single neuron on a different size-1 axis is the same neuron (reshapes of size-1
            # axes are ambiguous); with two or more neurons the axes must agree.
            if meta.axis != axis and not (size == 1 and self.size(meta.layer) == 1):
                raise UnsupportedOperation(
                    f"{where}: reads axis {axis} of a tensor whose neurons lie on axis {meta.axis} "
                    f"(layer {self.layers[meta.layer]['name']!r}); only ops along the neuron axis are supported"
                )
            return meta.layer
        raise UnsupportedOperation(f"{where}: expected a tensor argument")

    def size(self, li: int) -> int:
        return self.layers[li]["size"]

    def depth(self, li: int) -> int:
        return self.layers[li]["depth"]

    def mark_output(self, li: int) -> None:
        if self.layers[li]["segments"] is not None:  # a composite output fixes what it mirrors
            self.fix(li, "part of the output")
        if self.layers[li]["kind"] == "hidden":
            self.layers[li]["kind"] = "output"

    def restrict_scaling(self, li: int, group: str) -> None:
        """An op applied to layer ``li``'s neurons commutes only with scalings in ``group``."""
        self.layers[li]["scaling"] = intersect_scaling(self.layers[li]["scaling"], group)

    # ----------------------------------------------------------------- blocks
    def _claim(self, param: str, slot: ParamSlot, where: str) -> None:
        if param in self.aliases:
            param = self.aliases[param]
            slot = replace(slot, name=param)
        if param in self.slots:
            raise UnsupportedOperation(
                f"{where}: parameter {param!r} is used a second time (shared module or tied weight); "
                "weight sharing is not supported yet"
            )
        self.slots[param] = slot

    def dense(
        self,
        name: str,
        src: int,
        dst: int,
        param: str,
        shape: tuple[int, ...],
        where: str,
        transposed: bool = False,
        kernel: tuple[int, ...] | None = None,
    ) -> None:
        """A weight ``param`` of shape ``(dst.size, src.size, *kernel)`` from ``src`` to ``dst``
        (``transposed``: a parameter laid out ``(src.size, dst.size, *kernel)``, e.g. ``x @ W``).
        A parameter already used by another dense block becomes a :meth:`shared` block."""
        kernel = tuple(kernel) if kernel is not None else () if transposed else tuple(shape[2:])
        param = self.aliases.get(param, param)
        prev = self.slots.get(param)
        if prev is not None and prev.where == "edges" and not prev.parts and self.blocks[prev.index].kind == "dense":
            return self.shared(name, src, dst, prev, transposed, where)
        self.blocks.append(EdgeBlock(name=name, kind="dense", src=src, dst=dst, param=param, kernel=kernel))
        slot = ParamSlot(param, tuple(shape), "edges", len(self.blocks) - 1, transposed=transposed)
        self._claim(param, slot, where)

    def shared(self, name: str, src: int, dst: int, prev: ParamSlot, transposed: bool, where: str) -> None:
        """A second use of a weight (a shared module, or tied weights such as an embedding reused
        as the output layer): one parameter, one tensor, held by the first block; this block only
        refers to it. Its layers are tied to the first block's: the same orientation ties source to
        source and destination to destination, the reverse orientation (``W`` used as ``W^T``)
        source to destination and destination to source."""
        first = self.blocks[prev.index]
        reverse = transposed != prev.transposed
        pairs = ((src, first.dst), (dst, first.src)) if reverse else ((src, first.src), (dst, first.dst))
        for a, b in pairs:
            if self.size(a) != self.size(b):
                raise UnsupportedOperation(f"{where}: parameter {prev.name!r} is reused with other shapes")
            if a != b:
                self.tie(a, b)
        self.blocks.append(
            EdgeBlock(
                name=name, kind="shared", src=src, dst=dst, param=prev.name, kernel=first.kernel,
                index=(prev.index, int(reverse)),
            )
        )

    def dense_parts(self, param: str, shape: tuple[int, ...], parts: list[tuple[int, int]], where: str) -> None:
        """One weight whose row blocks feed different layers: rows of part ``k`` go from
        ``parts[k][0]`` to ``parts[k][1]`` (attention's packed query/key/value projection)."""
        first = len(self.blocks)
        for k, (src, dst) in enumerate(parts):
            self.blocks.append(EdgeBlock(f"{param}[{k}]", "dense", src, dst, param=param, kernel=tuple(shape[2:])))
        slot = ParamSlot(param, tuple(shape), "edges", first, parts=tuple(range(first, len(self.blocks))))
        self._claim(param, slot, where)

    def node_param_parts(self, layers: list[int], feature: str, param: str, shape: tuple[int, ...], where: str) -> None:
        """One vector split over several layers' node feature ``feature`` (a packed bias)."""
        for li in layers:
            if (li, feature) in self._columns:
                raise UnsupportedOperation(
                    f"{where}: layer {self.layers[li]['name']!r} already has a {feature!r} parameter"
                )
            self._columns.add((li, feature))
        if feature not in self.node_features:
            self.node_features.append(feature)
        col = self.node_features.index(feature)
        self._claim(param, ParamSlot(param, tuple(shape), "nodes", layers[0], col, parts=tuple(layers)), where)

    def grouped(
        self, name: str, src: int, dst: int, param: str, shape: tuple[int, ...], groups: int, where: str
    ) -> None:
        """A grouped convolution's weight ``(out, in // groups, *kernel)``: block diagonal.

        A depthwise convolution (``groups == in == out``) connects channel ``c`` to channel ``c``
        only, so source and destination share one permutation (tied). Other groupings would need
        permutations that keep the groups: not modelled, so both spaces are fixed.
        """
        prev = self.slots.get(self.aliases.get(param, param))
        if prev is not None and prev.where == "edges" and self.blocks[prev.index].kind == "grouped":
            # A shared grouped convolution (CoaT's positional convolution, called by several blocks):
            # its layers tied to the first use's, which holds the weight (no second block).
            first = self.blocks[prev.index]
            for a, b in ((src, first.src), (dst, first.dst)):
                if self.size(a) != self.size(b):
                    raise UnsupportedOperation(f"{where}: parameter {param!r} is reused with other shapes")
                self.tie(a, b)
            self.restrict_scaling(src, "none")
            return
        self.blocks.append(
            EdgeBlock(name=name, kind="grouped", src=src, dst=dst, param=param, kernel=tuple(shape[2:]), groups=groups)
        )
        self._claim(param, ParamSlot(param, tuple(shape), "edges", len(self.blocks) - 1), where)
        if groups == self.size(src) == self.size(dst):
            self.tie(src, dst)
        else:
            self.fix(src, f"grouped convolution ({groups} groups) at {where}")
            self.fix(dst, f"grouped convolution ({groups} groups) at {where}")
        self.restrict_scaling(src, "none")

    def node_param(self, layer: int, feature: str, param: str, shape: tuple[int, ...], where: str) -> None:
        """A per-neuron vector ``param`` (e.g. a bias) stored in node feature column ``feature``.

        A vector already stored on other neurons (the bias of a shared module; CaiT's class token,
        joined to the tokens and then the start of the class stream) stays where it is, and the two
        layers are tied: the same neurons, one permutation, the vector stored once."""
        prev = self.slots.get(self.aliases.get(param, param))
        if prev is not None and prev.where == "nodes" and not prev.parts and tuple(prev.shape) == tuple(shape):
            self.tie(prev.index, layer)
            return
        if (layer, feature) in self._columns:
            raise UnsupportedOperation(
                f"{where}: layer {self.layers[layer]['name']!r} already has a {feature!r} parameter; "
                "two such parameters on one layer are not supported"
            )
        self._columns.add((layer, feature))
        if feature not in self.node_features:
            self.node_features.append(feature)
        self._claim(param, ParamSlot(param, tuple(shape), "nodes", layer, self.node_features.index(feature)), where)

    def free_layer(self, li: int, features: list[str], name: str) -> int:
        """``li`` if its node-feature columns ``features`` are free, else a fresh layer tied to it.

        A second normalization (or scale) on the same neurons, as in pre-norm transformers where
        the stream meets several LayerNorms, gets its own nodes: an identity block joins them and
        they share one permutation, so the parameters of both round-trip and permute exactly.
        """
        if not any((li, f) in self._columns for f in features):
            return li
        new = self.new_layer(name, self.size(li), self.depth(li))
        self.identity(f"norm:{self.layers[li]['name']}->{name}", li, new)
        self.tie(li, new)
        return new

    def extra(self, param: str, shape: tuple[int, ...], dtype: torch.dtype, where: str) -> None:
        """State that belongs to no neuron (kept beside the graph, round-tripped exactly); a second
        use of the same state (one token-mixing weight applied along two axes) keeps it once."""
        prev = self.slots.get(self.aliases.get(param, param))
        if prev is not None and prev.where == "extra" and tuple(prev.shape) == tuple(shape):
            return
        self._claim(param, ParamSlot(param, tuple(shape), "extra", -1, -1, str(dtype).removeprefix("torch.")), where)

    def identity(self, name: str, src: int, dst: int) -> None:
        self.blocks.append(EdgeBlock(name=name, kind="identity", src=src, dst=dst))

    # ------------------------------------------------------------------- ties
    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def fix(self, li: int, reason: str) -> None:
        """Layer ``li``'s neurons may not be permuted (its whole space becomes non-permutable)."""
        for l, _, _ in self.segments(li):
            self._fixed.setdefault(self._find(l), reason)

    def heads(self, layers: list[int], n_heads: int, movable: bool, where: str) -> None:
        """Attention layers whose dimensions form ``n_heads`` heads; with ``movable``, whole heads
        may be permuted, the same way in all of ``layers`` (one head group)."""
        group = self._head_groups if movable else -1
        self._head_groups += movable
        for li in layers:
            if self.layers[li]["segments"] is not None:
                self.fix(li, f"attention heads on a composite layer at {where}")
                continue
            root = self._find(li)
            if self._heads.get(root, (n_heads, group)) != (n_heads, group):
                self.fix(li, f"two attention head structures meet at {where}")
            self._heads[root] = (n_heads, group)
            self.restrict_scaling(li, "none")

    def tie(self, a: int, b: int) -> None:
        """Layers ``a`` and ``b`` must be permuted by one permutation."""
        if self.layers[a]["segments"] is not None or self.layers[b]["segments"] is not None:
            # Tying composite layers would need segment-wise ties: fix them instead (exact, safe).
            self.fix(a, "residual with a concatenated/flattened layer")
            self.fix(b, "residual with a concatenated/flattened layer")
            return
        ra, rb = self._find(a), self._find(b)
        if self.size(a) != self.size(b):
            na, nb = self.layers[a]["name"], self.layers[b]["name"]
            raise UnsupportedOperation(f"cannot tie layers {na!r} ({self.size(a)}) and {nb!r} ({self.size(b)})")
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self._parent[hi] = lo
            if hi in self._fixed:
                self._fixed.setdefault(lo, self._fixed.pop(hi))
            if hi in self._heads:
                moved = self._heads.pop(hi)
                if self._heads.setdefault(lo, moved) != moved:
                    self._fixed.setdefault(lo, "two attention head structures tied together")

    # ------------------------------------------------------------------ build
    def build(self, state_keys: list[str], meta: dict | None = None) -> Layout:
        primary = [li for li, l in enumerate(self.layers) if l["segments"] is None]
        roots: dict[int, int] = {}
        for li in primary:
            roots.setdefault(self._find(li), len(roots))
        # Whole heads move together in every space of a head group: if one of them is fixed, none may.
        pinned = {group for root, (_, group) in self._heads.items() if root in self._fixed and group >= 0}
        heads = {root: (n, -1 if group in pinned else group) for root, (n, group) in self._heads.items()}
        layers, start = [], 0
        for li, l in enumerate(self.layers):
            space = roots[self._find(li)] if l["segments"] is None else -1
            scaling = l["scaling"] if l["segments"] is None else "none"
            layers.append(NeuronLayer(l["name"], l["kind"], l["depth"], start, l["size"], space, scaling))
            start += l["size"]
        spaces = []
        for root, si in roots.items():
            members = tuple(li for li in range(len(layers)) if layers[li].space == si)
            segments = tuple(
                (li, off, inner)
                for li, l in enumerate(self.layers)
                if l["segments"] is not None
                for src, off, inner in l["segments"]
                if self._find(src) == root
            )
            spaces.append(
                NeuronSpace(
                    name=layers[members[0]].name,
                    layers=members,
                    size=layers[root].size,
                    permutable=all(layers[li].kind == "hidden" for li in members) and root not in self._fixed,
                    note=self._fixed.get(root, ""),
                    segments=segments,
                    heads=heads.get(root, (1, -1))[0],
                    head_group=heads.get(root, (1, -1))[1],
                    # Tied layers would need one scaling through every op between them: not modelled.
                    scaling=(
                        layers[members[0]].scaling
                        if len(members) == 1 and layers[members[0]].kind == "hidden" and root not in self._fixed
                        else "none"
                    ),
                )
            )
        params = tuple(
            self.slots[k]
            if k in self.slots
            else ParamSlot(k, self.slots[self.aliases[k]].shape, "alias", -1, alias_of=self.aliases[k])
            for k in state_keys
        )
        return Layout(
            layers=tuple(layers),
            spaces=tuple(spaces),
            blocks=tuple(self.blocks),
            params=params,
            node_features=tuple(self.node_features),
            meta=meta or {},
        )
