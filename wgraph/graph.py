"""The weight-graph format: :class:`Layout` (per architecture) and :class:`WeightGraph` (B networks).

A network becomes a graph whose **nodes are neurons** and whose **edges are weights**.

* Every activation that a parametric op reads or writes contributes one :class:`NeuronLayer`: a
  contiguous range of node indices, one node per feature (channel) of that activation.
* Every weight tensor is one dense :class:`EdgeBlock` from the layer it reads to the layer it writes.
  The block keeps the parameter's native shape: ``(out, in)`` for ``Linear`` and
  ``(out, in, *kernel)`` for a convolution, so edge ``(o, i)`` carries the kernel ``W[o, i]`` as its
  feature vector. No ``edge_index`` is stored; :meth:`WeightGraph.to_pyg` produces one on demand.
* Biases (and later normalization statistics) are **node features**: column ``f`` of
  ``nodes[b, n, f]``.
* Residual additions add ``identity`` blocks (no parameters, edge value 1) and tie the two layers
  into one :class:`NeuronSpace`: a set of layers that must be permuted together.

The **parameter map** (:class:`ParamSlot`) puts every element of every state-dict entry in exactly
one place, so :meth:`WeightGraph.to_state_dict` is a bit-exact inverse of the conversion.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .errors import FileFormatError, IncompatibleBatchError, StateDictError

NODE_KINDS = ("input", "hidden", "output")
#: Per-neuron scaling groups, from largest to smallest: ``real`` (any nonzero factor: only linear
#: ops touch the neurons), ``positive`` (positive factors: ReLU, LeakyReLU, max pooling, ...),
#: ``sign`` (factors +-1: odd activations such as tanh and sin), ``none``.
SCALING_GROUPS = ("real", "positive", "sign", "none")


def intersect_scaling(a: str, b: str) -> str:
    """The largest scaling group contained in both ``a`` and ``b``."""
    if a == b or b == "real":
        return a
    if a == "real":
        return b
    return "none"

BLOCK_KINDS = ("dense", "grouped", "identity", "copy", "shared")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class NeuronLayer:
    """The neurons of one activation's feature axis: nodes ``start .. start + size - 1``.

    ``name`` is the module path (or fx node) that produced the activation, ``kind`` one of
    :data:`NODE_KINDS`, ``depth`` the number of parametric ops between the input and this layer,
    ``space`` the index of the :class:`NeuronSpace` it belongs to. ``scaling`` is the largest
    group of per-neuron scalings ``h_i -> s_i h_i`` that the ops applied to these neurons commute
    with (see :data:`SCALING_GROUPS`): scaling a hidden neuron's incoming weights and bias by ``s``
    and its outgoing weights by ``1/s`` then preserves the function.
    """

    name: str
    kind: str
    depth: int
    start: int
    size: int
    space: int
    scaling: str = "none"

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class NeuronSpace:
    """Layers whose neurons share one permutation (tied by residual additions).

    A space is ``permutable`` only if every layer in it is hidden: input and output neurons are
    ordered by the data and the task, so permuting them changes the function. ``scaling``: the
    per-neuron scaling group the space admits besides permutations (:data:`SCALING_GROUPS`).
    ``note`` says why a space of hidden neurons is not permutable (an op that singles them out).
    ``segments`` lists where the space's neurons reappear in composite layers (concatenations,
    flattened feature maps): ``(layer, offset, inner)`` means node ``offset + c * inner + s`` of
    that layer moves with neuron ``c`` of the space, for every ``s < inner``.
    ``heads > 1``: attention dimensions in ``heads`` contiguous blocks. A permutation may only
    reorder dimensions within a head and move whole heads; spaces with the same ``head_group``
    (the query/key space and the value space of one attention) move their heads together, and
    ``head_group == -1`` means heads stay in place (a per-head parameter outside the graph, such
    as a relative position bias table, pins them).
    """

    name: str
    layers: tuple[int, ...]
    size: int
    permutable: bool
    scaling: str = "none"
    note: str = ""
    segments: tuple[tuple[int, int, int], ...] = ()
    heads: int = 1
    head_group: int = -1


@dataclass(frozen=True)
class EdgeBlock:
    """All edges from layer ``src`` to layer ``dst`` that come from one parameter (or a skip).

    ``kind == "dense"``: the weight ``param`` of shape ``(dst.size, src.size, *kernel)``; edge
    ``(o, i)`` has feature vector ``W[o, i].flatten()`` of length ``prod(kernel)``.
    ``kind == "grouped"``: a grouped convolution with ``groups`` groups, weight of native shape
    ``(out, in // groups, *kernel)``: destination ``o`` in group ``o // (out // groups)`` reads the
    ``in // groups`` sources of that group; edge ``(o, j)`` carries ``W[o, j]`` (block diagonal).
    ``kind == "shared"``: a second use of the weight of dense block ``index[0]`` (a shared module
    or tied weights), with the same edges as a dense block; no tensor of its own: its edge values
    are that block's weight, transposed if ``index[1] == 1`` (the weight used as ``W^T``).
    ``kind == "identity"``: a residual connection, edge ``i -> i`` with value 1, no parameter.
    ``kind == "copy"``: neurons that reappear in a composite layer (a concatenation, or a flatten
    that gives every channel one node per spatial position): edges with value 1 from source neuron
    ``src_offset + i`` to destination nodes ``dst_offset + i * inner + s`` for ``s < inner``,
    ``i < count``; no parameter. With ``index``, source neuron ``index[i]`` instead of
    ``src_offset + i`` (a fixed reordering such as a channel shuffle).
    """

    name: str
    kind: str
    src: int
    dst: int
    param: str | None = None
    kernel: tuple[int, ...] = ()
    src_offset: int = 0
    dst_offset: int = 0
    inner: int = 1
    count: int = 0
    groups: int = 1
    index: tuple[int, ...] = ()

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel)

    @property
    def has_tensor(self) -> bool:
        """Whether the block holds a parameter (dense) or only structure (identity, copy)."""
        return self.kind in ("dense", "grouped")


@dataclass(frozen=True)
class ParamSlot:
    """Where one state-dict entry lives in the graph.

    ``where == "edges"``: the whole tensor is the dense block ``index``.
    ``where == "nodes"``: a vector stored in node-feature column ``feature`` of layer ``index``.
    ``where == "extra"``: state that belongs to no neuron (e.g. BatchNorm's ``num_batches_tracked``),
    kept as is in :attr:`WeightGraph.extras` with its own ``dtype`` so the round trip stays exact.
    ``where == "alias"``: a second name of the tensor ``alias_of`` (tied weights appear under
    both names in a state dict); stored once, returned under both names.

    ``parts``: a parameter that feeds several blocks or layers (attention's packed ``in_proj``)
    is the concatenation along its first axis of the blocks (``edges``) or layers (``nodes``)
    listed, ``index`` being the first. ``transposed``: the block holds the parameter viewed as
    ``(in, out, *kernel)`` with its first two axes swapped (``x @ W``, positional embeddings
    ``(1, tokens, C)``, embedding tables ``(tokens, C)``, transposed convolutions).
    """

    name: str
    shape: tuple[int, ...]
    where: str
    index: int
    feature: int = -1
    dtype: str | None = None
    parts: tuple[int, ...] = ()
    transposed: bool = False
    alias_of: str | None = None

    @property
    def targets(self) -> tuple[int, ...]:
        """The blocks (``edges``) or layers (``nodes``) that hold the parameter."""
        return self.parts or (self.index,)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


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

    def node_permutation(self, perms: dict[int, torch.Tensor], batch_size: int) -> torch.Tensor:
        """``(B, N)`` gather index: new node ``n`` of network ``b`` is old node ``out[b, n]``.

        ``perms[space]`` is a ``(B, size)`` permutation of that space's neurons; it moves the nodes
        of every layer in the space and every segment of a composite layer that mirrors them.
        """
        idx = torch.arange(self.num_nodes).expand(batch_size, -1).clone()
        for si, p in perms.items():
            space = self.spaces[si]
            for li in space.layers:
                start = self.layers[li].start
                idx[:, start : start + space.size] = start + p
            for li, off, inner in space.segments:
                base = self.layers[li].start + off
                pos = p[:, :, None] * inner + torch.arange(inner)
                idx[:, base + torch.arange(space.size * inner).view(space.size, inner)] = base + pos
        return idx

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
            i = torch.tensor(b.index, dtype=torch.long) if b.index else b.src_offset + torch.arange(b.count)
            src = s.start + i.repeat_interleave(b.inner)
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
            key = b.kind if not b.has_tensor else ("dense linear" if not b.kernel else f"dense k={'x'.join(map(str, b.kernel))}")
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
        if d.get("format_version") != FORMAT_VERSION:
            raise FileFormatError(
                f"layout format_version {d.get('format_version')!r} is not supported "
                f"(this wgraph reads version {FORMAT_VERSION})"
            )
        return cls(
            layers=tuple(NeuronLayer(**x) for x in d["layers"]),
            spaces=tuple(
                NeuronSpace(**{**x, "layers": tuple(x["layers"]), "segments": tuple(map(tuple, x.get("segments", ())))})
                for x in d["spaces"]
            ),
            blocks=tuple(
                EdgeBlock(**{**x, "kernel": tuple(x["kernel"]), "index": tuple(x.get("index", ()))}) for x in d["blocks"]
            ),
            params=tuple(
                ParamSlot(**{**x, "shape": tuple(x["shape"]), "parts": tuple(x.get("parts", ()))}) for x in d["params"]
            ),
            node_features=tuple(d["node_features"]),
            meta=d.get("meta", {}),
        )

    @classmethod
    def from_json(cls, s: str) -> Layout:
        return cls.from_dict(json.loads(s))


class WeightGraph:
    """B networks of one architecture as a graph: a :class:`Layout` plus tensors.

    Attributes:
        layout: the shared :class:`Layout`.
        nodes: ``(B, N, F)`` node features (column names in ``layout.node_features``; zero where a
            node has no such parameter, e.g. the bias of an input neuron).
        edges: one tensor per edge block: ``(B, out, in, *kernel)`` for dense blocks, ``None`` for
            identity blocks (their edges all carry the value 1).
        extras: ``{name: (B, *shape)}`` state that belongs to no neuron (``layout.extra_params``,
            e.g. BatchNorm's ``num_batches_tracked``). If not given, zeros: fine for graphs that a
            model outputs, whose extras do not change the function.
    """

    def __init__(
        self,
        layout: Layout,
        nodes: torch.Tensor,
        edges: list[torch.Tensor | None],
        extras: dict[str, torch.Tensor] | None = None,
    ):
        if nodes.dim() != 3 or nodes.shape[1:] != (layout.num_nodes, len(layout.node_features)):
            raise IncompatibleBatchError(
                f"nodes must have shape (B, {layout.num_nodes}, {len(layout.node_features)}), "
                f"got {tuple(nodes.shape)}"
            )
        if len(edges) != len(layout.blocks):
            raise IncompatibleBatchError(f"expected {len(layout.blocks)} edge tensors, got {len(edges)}")
        B = nodes.shape[0]
        for i, (blk, e) in enumerate(zip(layout.blocks, edges)):
            if not blk.has_tensor:
                if e is not None:
                    raise IncompatibleBatchError(f"{blk.kind} block {blk.name!r} takes no tensor")
                continue
            want = (B, *layout.block_shape(i))
            if e is None or tuple(e.shape) != want:
                got = None if e is None else tuple(e.shape)
                raise IncompatibleBatchError(f"edge block {blk.name!r}: expected shape {want}, got {got}")
            if e.dtype != nodes.dtype or e.device != nodes.device:
                raise IncompatibleBatchError(
                    f"edge block {blk.name!r} is {e.dtype} on {e.device}, nodes are {nodes.dtype} on {nodes.device}"
                )
        if extras is None:
            extras = {
                p.name: torch.zeros(B, *p.shape, dtype=getattr(torch, p.dtype or "float32"), device=nodes.device)
                for p in layout.extra_params
            }
        if extras.keys() != {p.name for p in layout.extra_params}:
            raise IncompatibleBatchError(
                f"extras {sorted(extras)} do not match the layout's {[p.name for p in layout.extra_params]}"
            )
        self.layout = layout
        self.nodes = nodes
        self.edges = list(edges)
        self.extras = dict(extras)

    # ------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        return self.nodes.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.nodes.dtype

    @property
    def device(self) -> torch.device:
        return self.nodes.device

    @property
    def num_nodes(self) -> int:
        return self.layout.num_nodes

    @property
    def num_edges(self) -> int:
        return self.layout.num_edges

    def __repr__(self) -> str:
        return (
            f"WeightGraph(B={self.batch_size}, nodes={self.num_nodes}, edges={self.num_edges}, "
            f"blocks={len(self.layout.blocks)}, dtype={self.dtype}, device={self.device})"
        )

    def summary(self) -> str:
        return f"{self!r}\n{self.layout.summary()}"

    # -------------------------------------------------------- parameter access
    def param(self, name: str) -> torch.Tensor:
        """The stacked ``(B, *shape)`` values of state-dict entry ``name`` (a view where possible)."""
        idx = self.layout.param_index.get(name)
        if idx is None:
            raise StateDictError(f"no parameter {name!r} in this graph; it has {list(self.layout.param_index)}")
        slot, B = self.layout.params[idx], self.batch_size
        if slot.where == "alias":
            return self.param(slot.alias_of)
        if slot.where == "extra":
            return self.extras[name]
        if slot.where == "edges":
            parts = [self.edges[i] for i in slot.targets]
            if slot.transposed:  # stored (out, in, *k); the parameter is laid out (in, out, *k)
                return parts[0].transpose(1, 2).reshape(B, *slot.shape)
        else:
            layers = [self.layout.layers[i] for i in slot.targets]
            parts = [self.nodes[:, l.start : l.stop, slot.feature] for l in layers]
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return value.reshape(B, *slot.shape)

    def to_state_dict(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The state dict of network ``index``: tensors bit-identical to those converted."""
        if not -self.batch_size <= index < self.batch_size:
            raise IndexError(f"network index {index} out of range for a batch of {self.batch_size}")
        sd = OrderedDict((p.name, self.param(p.name)[index].clone().contiguous()) for p in self.layout.params)
        if "state_dict_metadata" in self.layout.meta:  # module versions, as in ``Module.state_dict()``
            sd._metadata = OrderedDict((k, dict(v)) for k, v in self.layout.meta["state_dict_metadata"].items())
        return sd

    @property
    def has_nonfinite(self) -> dict[str, list[int]]:
        """Parameters holding NaN or Inf: ``{name: [network indices]}`` (empty, so falsy, if none)."""
        out = {}
        for p in self.layout.params:
            v = self.param(p.name)
            bad = ~torch.isfinite(v.reshape(self.batch_size, -1)).all(dim=1)
            if bad.any():
                out[p.name] = bad.nonzero().flatten().tolist()
        return out

    # ----------------------------------------------------------- batch ops
    def __getitem__(self, index) -> WeightGraph:
        """Select networks: an int keeps a batch of one, a slice / index tensor a sub-batch."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return WeightGraph(
            self.layout,
            self.nodes[index],
            [None if e is None else e[index] for e in self.edges],
            {k: v[index] for k, v in self.extras.items()},
        )

    def to(self, *args, **kwargs) -> WeightGraph:
        """Move / cast every tensor, as :meth:`torch.Tensor.to` (non-float extras only move)."""
        nodes = self.nodes.to(*args, **kwargs)
        extras = {k: v.to(*args, **kwargs) if v.is_floating_point() else v.to(nodes.device) for k, v in self.extras.items()}
        return WeightGraph(self.layout, nodes, [None if e is None else e.to(*args, **kwargs) for e in self.edges], extras)

    @staticmethod
    def cat(graphs: list[WeightGraph]) -> WeightGraph:
        """Concatenate batches of the same layout."""
        if not graphs:
            raise IncompatibleBatchError("cannot concatenate an empty list of graphs")
        lay = graphs[0].layout
        for i, g in enumerate(graphs):
            if g.layout != lay:
                raise IncompatibleBatchError(f"graph {i} has a different layout than graph 0")
        edges = [
            None if not blk.has_tensor else torch.cat([g.edges[i] for g in graphs])
            for i, blk in enumerate(lay.blocks)
        ]
        extras = {p.name: torch.cat([g.extras[p.name] for g in graphs]) for p in lay.extra_params}
        return WeightGraph(lay, torch.cat([g.nodes for g in graphs]), edges, extras)

    def reindex(self, idx: torch.Tensor) -> WeightGraph:
        """Gather nodes by a ``(B, N)`` node permutation ``idx`` (new node ``n`` = old ``idx[b, n]``),
        moving every weight with its neurons: ``W'[b, o, i] = W[b, idx_dst[o], idx_src[i]]``.

        ``idx`` must respect the layout's symmetries (use :meth:`Layout.node_permutation`); grouped
        blocks are only moved along their output axis, which is exact for the permutations the
        layout allows (depthwise blocks tie input and output; other groupings are fixed).
        """
        lay, B = self.layout, self.batch_size
        idx = idx.to(self.device)
        rows = torch.arange(B, device=self.device)[:, None]
        edges = []
        for blk, e in zip(lay.blocks, self.edges):
            if e is None:
                edges.append(None)
                continue
            s, d = lay.layers[blk.src], lay.layers[blk.dst]
            pd = idx[:, d.start : d.stop] - d.start
            if blk.kind == "grouped":
                edges.append(e[rows, pd])
            else:
                ps = idx[:, s.start : s.stop] - s.start
                edges.append(e[rows[:, :, None], pd[:, :, None], ps[:, None, :]])
        return WeightGraph(lay, self.nodes[rows, idx], edges, dict(self.extras))

    def permute(self, perm) -> WeightGraph:
        """Apply a neuron permutation (:class:`wgraph.symmetry.Symmetry`); see :mod:`wgraph.symmetry`."""
        from .symmetry import permute

        return permute(self, perm)

    # ------------------------------------------------------------- exports
    def block_values(self, i: int) -> torch.Tensor:
        """``(B, E_i, K_i)`` values of the edges of block ``i``, in :meth:`Layout.block_edge_index`
        order: the weight's kernels (``K_i = prod(kernel)``) for dense and grouped blocks, the first
        use's weight (transposed where it is used as ``W^T``) for shared blocks, 1 for identity and
        copy edges."""
        lay, blk, B = self.layout, self.layout.blocks[i], self.batch_size
        n = lay.block_num_edges(i)
        if blk.kind == "shared":
            w = self.edges[blk.index[0]]
            return (w.transpose(1, 2) if blk.index[1] else w).reshape(B, n, blk.kernel_numel)
        if not blk.has_tensor:
            return self.nodes.new_ones(B, n, 1)
        return self.edges[i].reshape(B, n, blk.kernel_numel)

    def edge_attr(self) -> torch.Tensor:
        """``(B, E, K)`` edge features in :attr:`Layout.edge_index` order, zero-padded to ``K = max_kernel``.

        Identity and copy edges carry the value 1 in channel 0.
        """
        lay = self.layout
        K = lay.max_kernel
        parts = []
        for i in range(len(lay.blocks)):
            values = self.block_values(i)
            part = values.new_zeros(*values.shape[:2], K)
            part[..., : values.shape[2]] = values
            parts.append(part)
        if not parts:
            return self.nodes.new_zeros(self.batch_size, 0, K)
        return torch.cat(parts, dim=1)

    def _edge_param_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E,)`` parameter index (-1 for identity/copy edges) and flat offset of each edge's first element."""
        lay = self.layout
        params, flats = [], []
        for i, blk in enumerate(lay.blocks):
            n = lay.block_num_edges(i)
            if not blk.has_tensor:
                params.append(torch.full((n,), -1, dtype=torch.long))
                flats.append(torch.full((n,), -1, dtype=torch.long))
            else:
                params.append(torch.full((n,), lay.param_index[blk.param], dtype=torch.long))
                flats.append(torch.arange(n, dtype=torch.long) * blk.kernel_numel)
        if not params:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        return torch.cat(params), torch.cat(flats)

    def to_pyg(self):
        """Export as ``torch_geometric.data.Data`` (B = 1) or ``Batch`` (B > 1).

        Fields: ``x (N, F)`` node features, ``edge_index (2, E)``, ``edge_attr (E, K)``,
        ``edge_block (E,)``, ``edge_param (E,)`` (index into ``param_names``, -1 for identity/copy edges),
        ``edge_flat (E,)`` (flat offset in that parameter of the edge's first kernel element: the
        edge's ``K_b = prod(kernel)`` values are ``param.flatten()[edge_flat : edge_flat + K_b]``),
        ``node_kind``, ``node_depth``, ``node_layer``, ``node_position`` and ``param_names``.
        :meth:`from_pyg` writes such a graph back.
        """
        with warnings.catch_warnings():  # torch_geometric's import-time deprecation noise
            warnings.simplefilter("ignore", FutureWarning)
            from torch_geometric.data import Batch, Data

        lay = self.layout
        ea = self.edge_attr()
        ep, ef = self._edge_param_maps()
        datas = []
        for b in range(self.batch_size):
            datas.append(
                Data(
                    x=self.nodes[b],
                    edge_index=lay.edge_index,
                    edge_attr=ea[b],
                    edge_block=lay.edge_block,
                    edge_param=ep,
                    edge_flat=ef,
                    node_kind=lay.node_kind,
                    node_depth=lay.node_depth,
                    node_layer=lay.node_layer,
                    node_position=lay.node_position,
                    param_names=[p.name for p in lay.params],
                    num_nodes=lay.num_nodes,
                )
            )
        return datas[0] if len(datas) == 1 else Batch.from_data_list(datas)

    @classmethod
    def from_pyg(cls, data, layout: Layout, extras: dict[str, torch.Tensor] | None = None) -> WeightGraph:
        """Inverse of :meth:`to_pyg`: rebuild the graph from ``x`` and ``edge_attr``.

        Accepts a ``Data`` (one network) or a ``Batch`` of networks of ``layout``; only ``x`` and
        ``edge_attr`` are read, so a model that edits them writes its result back this way.
        State outside the graph (``layout.extra_params``, e.g. BatchNorm's ``num_batches_tracked``)
        is not in PyG data: pass it as ``extras`` or it is set to zero, with a warning.
        """
        N, E = layout.num_nodes, layout.num_edges
        x, ea = data.x, data.edge_attr
        if x.shape[0] % N or ea.shape[0] % E or x.shape[0] // N != ea.shape[0] // E:
            raise IncompatibleBatchError(
                f"PyG data with {x.shape[0]} nodes / {ea.shape[0]} edges does not match a layout "
                f"with {N} nodes / {E} edges per network"
            )
        B = x.shape[0] // N
        x = x.reshape(B, N, -1)
        ea = ea.reshape(B, E, -1)
        edges, off = [], 0
        for i, blk in enumerate(layout.blocks):
            n = layout.block_num_edges(i)
            if not blk.has_tensor:
                edges.append(None)
            else:
                edges.append(ea[:, off : off + n, : blk.kernel_numel].reshape(B, *layout.block_shape(i)).clone())
            off += n
        if extras is None and layout.extra_params:
            warnings.warn(
                f"from_pyg: {[p.name for p in layout.extra_params]} are not part of PyG data; set to zero "
                "(pass extras= to keep them)",
                stacklevel=2,
            )
        return cls(layout, x.clone(), edges, extras)

    def to_networkx(self, index: int = 0):
        """Network ``index`` as a ``networkx.MultiDiGraph`` for inspection.

        Nodes carry ``kind``, ``layer`` (name), ``depth``, ``position`` and one attribute per node
        feature; edges carry ``block``, ``kind``, ``param`` and ``value`` (a float for Linear
        weights, a list for conv kernels, 1.0 for identity and copy edges).
        """
        import networkx as nx

        lay = self.layout
        g = nx.MultiDiGraph()
        feats = self.nodes[index].tolist()
        for layer in lay.layers:
            for p in range(layer.size):
                n = layer.start + p
                attrs = {name: feats[n][f] for f, name in enumerate(lay.node_features)}
                g.add_node(n, kind=layer.kind, layer=layer.name, depth=layer.depth, position=p, **attrs)
        for i, blk in enumerate(lay.blocks):
            vals = self.block_values(i)[index].tolist()
            src, dst = lay.block_edge_index(i).tolist()
            for u, v, val in zip(src, dst, vals):
                g.add_edge(u, v, block=blk.name, kind=blk.kind, param=blk.param, value=val if blk.kernel else val[0])
        return g

    # --------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write the graph as one safetensors file, the layout as JSON in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        if not path.parent.exists():
            raise FileFormatError(f"cannot write {path}: directory {path.parent} does not exist")
        tensors = {"nodes": self.nodes.contiguous(), **{f"extras/{k}": v.contiguous() for k, v in self.extras.items()}}
        for blk, e in zip(self.layout.blocks, self.edges):
            if e is not None:
                tensors[f"edges/{blk.name}"] = e.contiguous()
        save_file(tensors, str(path), metadata={"wgraph_layout": self.layout.to_json()})

    @classmethod
    def load(cls, path: str | Path) -> WeightGraph:
        """Read a file written by :meth:`save` (safetensors: no pickle is ever loaded)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "wgraph_layout" not in meta:
                    raise FileFormatError(f"{path}: a safetensors file, but not a wgraph graph (no layout)")
                layout = Layout.from_json(meta["wgraph_layout"])
                nodes = f.get_tensor("nodes")
                edges = [
                    None if not blk.has_tensor else f.get_tensor(f"edges/{blk.name}") for blk in layout.blocks
                ]
                extras = {p.name: f.get_tensor(f"extras/{p.name}") for p in layout.extra_params}
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
            raise FileFormatError(f"{path}: not a readable wgraph file ({e})") from None
        return cls(layout, nodes, edges, extras)
