"""The data half of a weight graph: :class:`WeightGraph`, B networks of one :class:`~wgraph.layout.Layout`.

A WeightGraph holds the tensors: node features ``(B, N, F)`` (biases, normalization statistics),
one tensor per edge block in the parameter's native shape, and the state that belongs to no
neuron. The architecture (layers, blocks, neuron spaces, the parameter map) is its
:class:`~wgraph.layout.Layout`, shared by every checkpoint; :meth:`WeightGraph.to_state_dict` is a
bit-exact inverse of the conversion. Exports: PyG, networkx, safetensors files.

The Layout's dataclasses are re-exported here (``from wgraph.graph import Layout`` keeps working).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from . import export
from .errors import FileFormatError, IncompatibleBatchError, StateDictError
from .layout import (
    BLOCK_KINDS,
    FORMAT_VERSION,
    NODE_KINDS,
    SCALING_GROUPS,
    EdgeBlock,
    Layout,
    NeuronLayer,
    NeuronSpace,
    ParamSlot,
    intersect_scaling,
)
from .symmetry import Symmetry, permute

__all__ = [
    "WeightGraph", "Layout", "NeuronLayer", "NeuronSpace", "EdgeBlock", "ParamSlot",
    "NODE_KINDS", "SCALING_GROUPS", "BLOCK_KINDS", "FORMAT_VERSION", "intersect_scaling",
]


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
        for p in layout.extra_params:
            v = extras[p.name]
            if tuple(v.shape) != (B, *p.shape) or not p.accepts(v.dtype):
                want = f"{p.dtype} of shape {(B, *p.shape)}"
                raise IncompatibleBatchError(f"extra state {p.name!r}: expected {want}, got {v.dtype} {tuple(v.shape)}")
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
        extras = {
            k: v.to(*args, **kwargs) if v.is_floating_point() else v.to(nodes.device) for k, v in self.extras.items()
        }
        edges = [None if e is None else e.to(*args, **kwargs) for e in self.edges]
        return WeightGraph(self.layout, nodes, edges, extras)

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

    def permute(self, perm: Symmetry) -> WeightGraph:
        """Apply a neuron permutation (:class:`wgraph.symmetry.Symmetry`); see :mod:`wgraph.symmetry`."""
        return permute(self, perm)

    def replace(self, *, nodes: torch.Tensor | None = None, edges: list | None = None) -> WeightGraph:
        """A graph of the same layout and extras with new node features and / or edge tensors."""
        return WeightGraph(
            self.layout, self.nodes if nodes is None else nodes, self.edges if edges is None else edges, self.extras
        )

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
        return export.padded_edge_attr(self)

    def to_pyg(self, index: int | None = None, *, hetero: bool = False):
        """Export as ``torch_geometric.data.Data``: network ``index``, or every network (a ``Batch``
        when there are several) with ``index=None``.

        Fields: ``x (N, F)`` node features, ``edge_index (2, E)``, ``edge_attr (E, K)`` zero-padded
        to the longest kernel, ``edge_block (E,)``, ``edge_param (E,)`` (index into ``param_names``,
        -1 for identity/copy edges), ``edge_flat (E,)`` (flat offset in that parameter of the edge's
        first kernel element: the edge's ``K_b = prod(kernel)`` values are
        ``param.flatten()[edge_flat : edge_flat + K_b]``), ``node_kind``, ``node_depth``,
        ``node_layer``, ``node_position`` and ``param_names``.

        ``hetero=True``: a ``HeteroData`` with node type ``"neuron"`` and one edge type per kernel
        shape (``("neuron", "k3x3", "neuron")``, ``"linear"``, ``"identity"``, ``"copy"``), each with
        the fields above and unpadded ``edge_attr (E_t, K_t)``. :meth:`from_pyg` reads both forms.
        """
        return export.to_pyg(self, index, hetero=hetero)

    @classmethod
    def from_pyg(cls, data, layout: Layout, extras: dict[str, torch.Tensor] | None = None) -> WeightGraph:
        """Inverse of :meth:`to_pyg`: rebuild the graph from ``x`` and ``edge_attr``.

        Accepts a ``Data`` / ``HeteroData`` (one network) or a ``Batch`` of networks of ``layout``;
        only ``x`` and ``edge_attr`` are read, so a model that edits them writes its result back this
        way. State outside the graph (``layout.extra_params``, e.g. BatchNorm's
        ``num_batches_tracked``) is not in PyG data: pass it as ``extras`` or it is set to zero, with
        a warning. The layout is checked first (:meth:`Layout.check`).
        """
        layout.check()
        nodes, edges = export.from_pyg(data, layout)
        if extras is None and layout.extra_params:
            warnings.warn(
                f"from_pyg: {[p.name for p in layout.extra_params]} are not part of PyG data; set to zero "
                "(pass extras= to keep them)",
                stacklevel=2,
            )
        return cls(layout, nodes, edges, extras)

    def to_networkx(self, index: int = 0):
        """Network ``index`` as a ``networkx.MultiDiGraph`` for inspection, GraphML-safe (see
        :func:`wgraph.export.to_networkx`: conv kernels are edge attributes ``w0 .. w{K-1}``)."""
        return export.to_networkx(self, index)

    # --------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write the graph as one safetensors file, the layout as JSON in its metadata.

        The file appears whole or not at all: it is written beside the target as
        ``.<name>.wgraph-tmp.<pid>`` and renamed. Temporaries of that naming left by a process
        that no longer runs (a ``kill -9`` mid-write) are removed on the next write."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir():
            example = path / "graph.safetensors"
            raise FileFormatError(f"cannot write {path}: it is a directory (give a file name, e.g. {example})")
        if not path.parent.exists():
            raise FileFormatError(f"cannot write {path}: directory {path.parent} does not exist")
        tensors = {"nodes": self.nodes.contiguous(), **{f"extras/{k}": v.contiguous() for k, v in self.extras.items()}}
        for blk, e in zip(self.layout.blocks, self.edges):
            if e is not None:
                tensors[f"edges/{blk.name}"] = e.contiguous()
        _remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}{_TEMP}{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={"wgraph_layout": self.layout.to_json()})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> WeightGraph:
        """Read a file written by :meth:`save` (safetensors: no pickle is ever loaded)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.is_dir():
            raise FileFormatError(f"{path}: a directory, not a graph file (a .safetensors file written by wgraph)")
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "wgraph_layout" not in meta:
                    raise FileFormatError(f"{path}: a safetensors file, but not a wgraph graph (no layout)")
                try:
                    layout = Layout.from_json(meta["wgraph_layout"])
                except FileFormatError as e:
                    raise FileFormatError(f"{path}: {e}") from None
                want = ["nodes", *(f"edges/{b.name}" for b in layout.blocks if b.has_tensor)]
                want += [f"extras/{p.name}" for p in layout.extra_params]
                have = set(f.keys())
                missing, unexpected = [k for k in want if k not in have], sorted(have - set(want))
                if missing or unexpected:
                    raise FileFormatError(
                        f"{path}: the tensors do not match the layout: missing {missing}, unexpected {unexpected}"
                    )
                nodes = f.get_tensor("nodes")
                edges = [
                    None if not blk.has_tensor else f.get_tensor(f"edges/{blk.name}") for blk in layout.blocks
                ]
                extras = {p.name: f.get_tensor(f"extras/{p.name}") for p in layout.extra_params}
        except (SafetensorError, OSError) as e:
            raise FileFormatError(f"{path}: not a readable wgraph file ({e})") from None
        try:
            return cls(layout, nodes, edges, extras)
        except IncompatibleBatchError as e:
            raise FileFormatError(f"{path}: the tensors do not match the layout: {e}") from None


_TEMP = ".wgraph-tmp."


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.wgraph-tmp.<pid>`` files beside ``path`` whose writing process is gone."""
    prefix = f".{path.name}{_TEMP}"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # a live process of another user
            pass
