"""The :class:`Layout`: everything about a weight graph that depends only on the architecture,
with the geometry the other rooms ask of it (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..errors import FileFormatError
from .check import check_layout, read_part
from .parts import FEATURE_SCALING, FORMAT_VERSION, NODE_KINDS, EdgeBlock, NeuronLayer, NeuronSpace, ParamSlot


@dataclass(frozen=True)
class Layout:
    """Everything about a weight graph that depends only on the architecture.

    Computed once per architecture (by tracing) and shared by every checkpoint of it.
    """

    layers: tuple[NeuronLayer, ...]
    spaces: tuple[NeuronSpace, ...]
    blocks: tuple[EdgeBlock, ...]
    params: tuple[ParamSlot, ...]
    node_features: tuple[str, ...] = ("bias",)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ------------------------------------------------------------------ sizes
    @property
    def num_nodes(self) -> int:
        return self.layers[-1].stop if self.layers else 0

    def block_shape(self, i: int) -> tuple[int, ...]:
        """Shape of block ``i`` for one network: ``(out, in, *kernel)`` (``(n,)`` for identity)."""
        b = self.blocks[i]
        if not b.has_tensor:
            return (self.block_num_edges(i),)
        return (self.layers[b.dst].size, self.layers[b.src].size // b.groups, *b.kernel)

    def block_num_edges(self, i: int) -> int:
        b = self.blocks[i]
        if b.kind == "identity":
            return self.layers[b.dst].size
        if b.kind == "copy":
            return b.count * b.inner
        return self.layers[b.dst].size * self.layers[b.src].size // b.groups  # dense, grouped, shared

    @property
    def num_edges(self) -> int:
        return sum(self.block_num_edges(i) for i in range(len(self.blocks)))

    @property
    def num_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def extra_params(self) -> tuple[ParamSlot, ...]:
        return tuple(p for p in self.params if p.where == "extra")

    @cached_property
    def param_index(self) -> dict[str, int]:
        return {p.name: i for i, p in enumerate(self.params)}

    # ------------------------------------------------------------ per-node data
    def _per_node(self, fn) -> torch.Tensor:
        out = torch.empty(self.num_nodes, dtype=torch.long)
        for li, layer in enumerate(self.layers):
            out[layer.start : layer.stop] = fn(li, layer)
        return out

    @cached_property
    def node_kind(self) -> torch.Tensor:
        """``(N,)`` index into :data:`NODE_KINDS`."""
        return self._per_node(lambda li, l: NODE_KINDS.index(l.kind))

    @cached_property
    def node_depth(self) -> torch.Tensor:
        """``(N,)`` layer depth of every node."""
        return self._per_node(lambda li, l: l.depth)

    @cached_property
    def node_layer(self) -> torch.Tensor:
        """``(N,)`` index of the :class:`NeuronLayer` of every node."""
        return self._per_node(lambda li, l: li)

    @cached_property
    def node_position(self) -> torch.Tensor:
        """``(N,)`` position of every node within its layer (the input/output position)."""
        return self._per_node(lambda li, l: torch.arange(l.size))

    @cached_property
    def kind_nodes(self) -> dict[str, torch.Tensor]:
        """``{kind: (n,) node indices}`` for every kind of :data:`NODE_KINDS`."""
        return {k: (self.node_kind == i).nonzero().flatten() for i, k in enumerate(NODE_KINDS)}

    def nodes_of_kind(self, kind: str) -> torch.Tensor:
        """Node indices of the input, hidden or output neurons (ascending)."""
        return self.kind_nodes[kind]

    # ------------------------------------------------------- neuron-space geometry
    def space_runs(self, si: int) -> tuple[tuple[int, int], ...]:
        """The nodes neuron space ``si`` moves, as runs ``(base, inner)``: neuron ``c`` of the
        space is nodes ``base + c * inner + s`` for every ``s < inner``.

        Each layer of the space is a run with ``inner = 1`` at the layer's start; each segment
        ``(layer, offset, inner)`` of a composite layer (a concatenation, a flattened feature map)
        is a run at the layer's start plus ``offset``. Every other geometric question about spaces
        (:meth:`node_permutation`, :meth:`node_scale`, :attr:`fixed_nodes`, :attr:`node_spatial`)
        is answered from these runs.
        """
        return self._space_runs[si]

    @cached_property
    def _space_runs(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        return tuple(
            tuple((self.layers[li].start, 1) for li in sp.layers)
            + tuple((self.layers[li].start + off, inner) for li, off, inner in sp.segments)
            for sp in self.spaces
        )

    def space_scaling(self, si: int) -> str:
        """The scaling group space ``si`` admits where :func:`wgraph.permute` can apply it: the
        space's declared ``scaling``, or ``"none"`` if one of its layers carries a node feature
        without a rule in :data:`~wgraph.layout.parts.FEATURE_SCALING`."""
        return self._space_scalings[si]

    @cached_property
    def _space_scalings(self) -> tuple[str, ...]:
        ruled = {li for li in range(len(self.layers))}
        for p in self.params:
            if p.where == "nodes" and self.node_features[p.feature] not in FEATURE_SCALING:
                ruled -= set(p.targets)
        return tuple(sp.scaling if all(li in ruled for li in sp.layers) else "none" for sp in self.spaces)

    def node_permutation(self, perms: dict[int, torch.Tensor], batch_size: int) -> torch.Tensor:
        """``(B, N)`` gather index: new node ``n`` of network ``b`` is old node ``out[b, n]``.

        ``perms[space]`` is a ``(B, size)`` permutation of that space's neurons; it moves every run
        of the space (:meth:`space_runs`): ``out[b, base + c * inner + s] = base + p[b, c] * inner + s``.
        """
        idx = torch.arange(self.num_nodes).expand(batch_size, -1).clone()
        for si, p in perms.items():
            size = self.spaces[si].size
            for base, inner in self.space_runs(si):
                idx[:, base : base + size * inner] = base + (p[:, :, None] * inner + torch.arange(inner)).flatten(1)
        return idx

    def node_scale(self, scales: dict[int, torch.Tensor], batch_size: int, dtype=torch.float64) -> torch.Tensor:
        """``(B, N)`` factor of every node: ``scales[space]`` (``(B, size)``, per neuron of the space)
        repeated over each run of the space, 1 for nodes of unscaled spaces."""
        out = torch.ones(batch_size, self.num_nodes, dtype=dtype)
        for si, s in scales.items():
            size = self.spaces[si].size
            for base, inner in self.space_runs(si):
                out[:, base : base + size * inner] = s.to(dtype).repeat_interleave(inner, dim=1)
        return out

    @cached_property
    def fixed_nodes(self) -> torch.Tensor:
        """``(N,)`` bool: the node is moved by no neuron permutation (input and output neurons, and
        hidden neurons that some op singles out)."""
        moved = torch.zeros(self.num_nodes, dtype=torch.bool)
        for si, sp in enumerate(self.spaces):
            if sp.permutable:
                for base, inner in self.space_runs(si):
                    moved[base : base + sp.size * inner] = True
        return ~moved

    @cached_property
    def node_spatial(self) -> torch.Tensor:
        """``(N,)`` long: for a node that mirrors a neuron at ``inner > 1`` positions (a flattened
        feature map), its position ``s < inner``; ``-1`` for every other node."""
        spatial = torch.full((self.num_nodes,), -1, dtype=torch.long)
        for si, sp in enumerate(self.spaces):
            for base, inner in self.space_runs(si):
                if inner > 1:
                    spatial[base : base + sp.size * inner] = torch.arange(inner).repeat(sp.size)
        return spatial

    @cached_property
    def node_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which attention head each node belongs to: ``(local, joint)``, two ``(N,)`` long tensors,
        ``-1`` for nodes outside spaces with ``heads > 1``.

        Neuron ``c`` of a space of ``size`` neurons in ``heads`` heads is in head ``c // (size /
        heads)``. ``local`` numbers the heads of every run of a space (each layer, each segment)
        apart; ``joint`` numbers head ``h`` of all spaces of one ``head_group`` (the query/key and
        the value dimensions of one attention, whose heads move together) as one, and the heads of
        a space with ``head_group == -1`` as its own. A permutation the space allows (heads moved
        as blocks, dimensions reordered within heads) maps every head to one head, so a function
        of the per-head sets of nodes is equivariant; a swap of dimensions across heads is not.
        """
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        joint = local.clone()
        first: dict[tuple, int] = {}  # head group (or lone space) -> its first joint id
        n_local = n_joint = 0
        for si, sp in enumerate(self.spaces):
            if sp.heads <= 1:
                continue
            head = torch.arange(sp.size) // (sp.size // sp.heads)
            key = ("group", sp.head_group) if sp.head_group >= 0 else ("space", si)
            if key not in first:
                first[key], n_joint = n_joint, n_joint + sp.heads
            for base, inner in self.space_runs(si):
                nodes = slice(base, base + sp.size * inner)
                local[nodes] = (n_local + head).repeat_interleave(inner)
                joint[nodes] = (first[key] + head).repeat_interleave(inner)
                n_local += sp.heads
        return local, joint

    @cached_property
    def head_nodes(self) -> torch.Tensor:
        """``(n,)`` long: the nodes of attention heads (``node_heads[0] >= 0``), ascending; empty
        for a layout without heads."""
        return (self.node_heads[0] >= 0).nonzero().flatten()

    # ---------------------------------------------------------------- block geometry
    def block_selection(self, i: int) -> tuple[slice | torch.Tensor | None, slice | torch.Tensor | None]:
        """Which neurons of its two layers block ``i`` connects, relative to each layer:
        ``(sources, targets)``, each ``None`` (the whole layer), a slice, or an index tensor.

        Dense, grouped, shared and identity blocks connect their two whole layers. A copy block
        connects ``count`` source neurons (from ``src_offset``, or the listed ``index``) to
        ``count * inner`` target neurons from ``dst_offset``: source ``i`` feeds targets ``i * inner + s``.
        """
        return self._block_selections[i]

    @cached_property
    def _block_selections(self) -> tuple:
        out = []
        for b in self.blocks:
            if b.kind != "copy":
                out.append((None, None))
                continue
            targets = slice(b.dst_offset, b.dst_offset + b.count * b.inner)
            if b.index:
                out.append((torch.tensor(b.index, dtype=torch.long), targets))
            else:
                out.append((slice(b.src_offset, b.src_offset + b.count), targets))
        return tuple(out)

    def block_nodes(self, i: int) -> tuple[slice | torch.Tensor, slice | torch.Tensor]:
        """The nodes block ``i`` connects, ``(sources, targets)``, as slices or index tensors of the
        whole graph (:meth:`block_selection` shifted by each layer's start)."""
        b = self.blocks[i]
        src, dst = self.block_selection(i)
        return _absolute(self.layers[b.src], src), _absolute(self.layers[b.dst], dst)

    # ------------------------------------------------------------------ identity
    @cached_property
    def fingerprint(self) -> int:
        """A stable 63-bit hash of the layout's structure (``meta`` excluded): equal for equal
        layouts in every process, so saved per-layout state can be checked against a layout."""
        d = self.to_dict()
        d.pop("meta", None)
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    # -------------------------------------------------------------- edge lists
    @cached_property
    def edge_index(self) -> torch.Tensor:
        """``(2, E)`` source/destination node of every edge, block after block.

        Within a dense block the order is row-major over ``(out, in)``: edge ``o * in + i``
        is ``src.start + i -> dst.start + o``, matching ``W.reshape(out * in, -1)``.
        """
        parts = [self.block_edge_index(i) for i in range(len(self.blocks))]
        if not parts:
            return torch.empty(2, 0, dtype=torch.long)
        return torch.cat(parts, dim=1)

    def block_edge_index(self, i: int) -> torch.Tensor:
        """``(2, E_i)`` source/destination nodes of the edges of block ``i``."""
        b = self.blocks[i]
        s, d = self.layers[b.src], self.layers[b.dst]
        if b.kind == "identity":
            src, dst = torch.arange(s.start, s.stop), torch.arange(d.start, d.stop)
        elif b.kind == "copy":
            sources = self.block_selection(i)[0]
            if isinstance(sources, slice):
                sources = torch.arange(sources.start, sources.stop)
            src = s.start + sources.repeat_interleave(b.inner)
            dst = d.start + b.dst_offset + torch.arange(b.count * b.inner)
        else:  # dense (groups == 1) and grouped: row-major over (out, in // groups)
            out, in_g = d.size, s.size // b.groups
            o, j = torch.meshgrid(torch.arange(out), torch.arange(in_g), indexing="ij")
            dst = d.start + o
            src = s.start + (o // (out // b.groups)) * in_g + j
        return torch.stack([src.reshape(-1), dst.reshape(-1)])

    @cached_property
    def edge_block(self) -> torch.Tensor:
        """``(E,)`` index of the block of every edge."""
        return torch.repeat_interleave(
            torch.arange(len(self.blocks)),
            torch.tensor([self.block_num_edges(i) for i in range(len(self.blocks))], dtype=torch.long),
        )

    @cached_property
    def max_kernel(self) -> int:
        """Length of the longest edge feature vector (1 for a pure MLP)."""
        return max([b.kernel_numel for b in self.blocks if b.has_tensor] + [1])

    # ---------------------------------------------------------------- summary
    def summary(self) -> str:
        """Human-readable description: layers, edge blocks per kind, neuron spaces."""
        lines = [
            f"Layout: {self.num_nodes} nodes, {self.num_edges} edges, {self.num_params} parameters "
            f"in {len(self.params)} tensors",
        ]
        lines.append("  layers:")
        for li, l in enumerate(self.layers):
            lines.append(
                f"    [{li}] {l.name:<24} {l.kind:<6} depth {l.depth:<3} nodes {l.start}..{l.stop - 1} "
                f"({l.size}) space {l.space}"
            )
        kinds: dict[str, list[int]] = {}
        for i, b in enumerate(self.blocks):
            if not b.has_tensor:
                key = b.kind
            else:
                key = "dense linear" if not b.kernel else f"dense k={'x'.join(map(str, b.kernel))}"
            kinds.setdefault(key, []).append(i)
        lines.append("  edge blocks by kind:")
        for key, idx in kinds.items():
            n_e = sum(self.block_num_edges(i) for i in idx)
            n_p = sum(math.prod(self.block_shape(i)) for i in idx if self.blocks[i].has_tensor)
            lines.append(f"    {key:<14} blocks {len(idx):<3} edges {n_e:<10} parameters {n_p}")
        lines.append("  neuron spaces:")
        for si, s in enumerate(self.spaces):
            names = ", ".join(self.layers[li].name for li in s.layers)
            tag = "permutable" if s.permutable else "fixed"
            scale = f" scaling {s.scaling:<8}" if s.permutable else " " * 17
            note = f"  ({s.note})" if s.note else ""
            lines.append(f"    [{si}] size {s.size:<5} {tag:<10}{scale} layers: {names}{note}")
        return "\n".join(lines)

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layers": [asdict(x) for x in self.layers],
            "spaces": [asdict(x) for x in self.spaces],
            "blocks": [asdict(x) for x in self.blocks],
            "params": [asdict(x) for x in self.params],
            "node_features": list(self.node_features),
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        """Read :meth:`to_dict`'s form, checking every field's type and the layout's consistency
        (:meth:`check`): a layout from a file is untrusted, and a wrong one would map weights to the
        wrong places. Raises :class:`~wgraph.errors.FileFormatError` naming the field."""
        if not isinstance(d, dict):
            raise FileFormatError(f"layout: expected a JSON object, got {type(d).__name__}")
        if d.get("format_version") != FORMAT_VERSION:
            raise FileFormatError(
                f"layout format_version {d.get('format_version')!r} is not supported "
                f"(this wgraph reads version {FORMAT_VERSION})"
            )
        parts = {}
        kinds = (("layers", NeuronLayer), ("spaces", NeuronSpace), ("blocks", EdgeBlock), ("params", ParamSlot))
        for key, part in kinds:
            items = d.get(key)
            if not isinstance(items, list):
                raise FileFormatError(f"layout.{key}: expected a list, got {type(items).__name__}")
            parts[key] = tuple(read_part(part, x, f"layout.{key}[{i}]") for i, x in enumerate(items))
        features = d.get("node_features")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise FileFormatError(f"layout.node_features: expected a list of strings, got {features!r}")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise FileFormatError(f"layout.meta: expected an object, got {type(meta).__name__}")
        layout = cls(**parts, node_features=tuple(features), meta=meta)
        layout.check()
        return layout

    @classmethod
    def from_json(cls, s: str) -> Layout:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise FileFormatError(f"layout: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def check(self) -> None:
        """Raise :class:`~wgraph.errors.FileFormatError` naming the first inconsistent field
        (see :func:`wgraph.layout.check.check_layout`); a layout that passed is not checked again."""
        if not self.__dict__.get("_checked"):
            check_layout(self)
            self.__dict__["_checked"] = True


def _absolute(layer: NeuronLayer, sel):
    """A selection relative to ``layer`` (see :meth:`Layout.block_selection`) as graph node indices."""
    if sel is None:
        return slice(layer.start, layer.stop)
    if isinstance(sel, slice):
        return slice(layer.start + sel.start, layer.start + sel.stop)
    return layer.start + sel
