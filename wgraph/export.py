"""Exports of a :class:`~wgraph.graph.WeightGraph`: PyTorch Geometric (homogeneous, or one edge type
per kernel shape) and networkx.

Every edge ``u -> v`` of block ``b`` carries the block's feature vector ``x_uv`` (the weight, a
flattened ``kh x kw`` kernel, or 1 for identity and copy edges) and points back into the state
dict: ``edge_param`` (index into ``param_names``, -1 for edges without a parameter) and
``edge_flat`` (the flat offset of its first element: its ``K_b`` values are
``param.flatten()[edge_flat : edge_flat + K_b]``). Edges come block after block, in
:meth:`~wgraph.layout.Layout.block_edge_index` order.

The homogeneous form pads every edge's features to the longest kernel (``K = max_kernel``); the
heterogeneous form (``hetero=True``) keeps one edge type per kernel shape (``"linear"``,
``"k3x3"``, ``"identity"``, ...) with features of their own width, so a ResNet's 3x3 edges do
not carry 49 columns for the sake of its one 7x7 stem.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from .errors import IncompatibleBatchError

if TYPE_CHECKING:
    from .graph import WeightGraph
    from .layout import Layout

NODE_TYPE = "neuron"


def edge_type(layout: Layout, i: int) -> str:
    """The heterogeneous edge type of block ``i``: ``"identity"`` / ``"copy"`` for structural edges,
    else its kernel shape (``"linear"``, ``"k3x3"``, ...)."""
    b = layout.blocks[i]
    if b.kind in ("identity", "copy"):
        return b.kind
    return "linear" if not b.kernel else "k" + "x".join(map(str, b.kernel))


def edge_param_maps(layout: Layout, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E_i,)`` parameter index (-1 without a parameter) and flat offset of each edge's first element."""
    blk, n = layout.blocks[i], layout.block_num_edges(i)
    if not blk.has_tensor:
        return torch.full((n,), -1, dtype=torch.long), torch.full((n,), -1, dtype=torch.long)
    param = torch.full((n,), layout.param_index[blk.param], dtype=torch.long)
    return param, torch.arange(n, dtype=torch.long) * blk.kernel_numel


def padded_edge_attr(graph: WeightGraph) -> torch.Tensor:
    """``(B, E, K)`` edge features in :attr:`Layout.edge_index` order, zero-padded to ``K = max_kernel``."""
    lay = graph.layout
    K = lay.max_kernel
    out = graph.nodes.new_zeros(graph.batch_size, lay.num_edges, K)
    start = 0
    for i in range(len(lay.blocks)):
        values = graph.block_values(i)
        out[:, start : start + values.shape[1], : values.shape[2]] = values
        start += values.shape[1]
    return out


def _node_fields(layout: Layout) -> dict:
    return {
        "node_kind": layout.node_kind,
        "node_depth": layout.node_depth,
        "node_layer": layout.node_layer,
        "node_position": layout.node_position,
    }


def to_pyg(graph: WeightGraph, index: int | None = None, *, hetero: bool = False):
    """``Data`` / ``HeteroData`` of network ``index``; with ``index=None``, of every network (a
    ``Batch`` when there are several). See :meth:`WeightGraph.to_pyg`."""
    with warnings.catch_warnings():  # torch_geometric's import-time deprecation noise
        warnings.simplefilter("ignore", FutureWarning)
        from torch_geometric.data import Batch, Data, HeteroData

    if index is not None:
        if not -graph.batch_size <= index < graph.batch_size:
            raise IndexError(f"network index {index} out of range for a batch of {graph.batch_size}")
        graph = graph[index]
    lay = graph.layout
    names = [p.name for p in lay.params]
    if not hetero:
        ea = padded_edge_attr(graph)
        maps = [edge_param_maps(lay, i) for i in range(len(lay.blocks))]
        ep = torch.cat([m[0] for m in maps]) if maps else torch.empty(0, dtype=torch.long)
        ef = torch.cat([m[1] for m in maps]) if maps else torch.empty(0, dtype=torch.long)
        datas = [
            Data(x=graph.nodes[b], edge_index=lay.edge_index, edge_attr=ea[b], edge_block=lay.edge_block,
                 edge_param=ep, edge_flat=ef, param_names=names, num_nodes=lay.num_nodes, **_node_fields(lay))
            for b in range(graph.batch_size)
        ]
        return datas[0] if len(datas) == 1 else Batch.from_data_list(datas)
    groups: dict[str, list[int]] = {}
    for i in range(len(lay.blocks)):
        groups.setdefault(edge_type(lay, i), []).append(i)
    datas = []
    for b in range(graph.batch_size):
        data = HeteroData()
        data[NODE_TYPE].x = graph.nodes[b]
        data[NODE_TYPE].num_nodes = lay.num_nodes
        for key, value in _node_fields(lay).items():
            data[NODE_TYPE][key] = value
        data.param_names = names
        for t, blocks in groups.items():
            store = data[NODE_TYPE, t, NODE_TYPE]
            store.edge_index = torch.cat([lay.block_edge_index(i) for i in blocks], dim=1)
            store.edge_attr = torch.cat([graph.block_values(i)[b] for i in blocks])
            store.edge_block = torch.cat([torch.full((lay.block_num_edges(i),), i) for i in blocks])
            maps = [edge_param_maps(lay, i) for i in blocks]
            store.edge_param = torch.cat([m[0] for m in maps])
            store.edge_flat = torch.cat([m[1] for m in maps])
        datas.append(data)
    return datas[0] if len(datas) == 1 else Batch.from_data_list(datas)


def from_pyg(data, layout: Layout) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Node features ``(B, N, F)`` and per-block edge tensors from PyG data of ``layout``
    (homogeneous or heterogeneous, one network or a batch)."""
    N = layout.num_nodes
    hetero = hasattr(data, "node_types")
    x = data[NODE_TYPE].x if hetero else data.x
    if x.shape[0] % N:
        raise IncompatibleBatchError(f"PyG data with {x.shape[0]} nodes does not match a layout with {N} nodes")
    B = x.shape[0] // N
    nodes = x.reshape(B, N, -1).clone()
    edges: list[torch.Tensor | None] = []
    if not hetero:
        E, ea = layout.num_edges, data.edge_attr
        if ea.shape[0] != B * E:
            raise IncompatibleBatchError(
                f"PyG data with {x.shape[0]} nodes / {ea.shape[0]} edges does not match a layout "
                f"with {N} nodes / {E} edges per network"
            )
        ea = ea.reshape(B, E, -1)
    offsets: dict[str, int] = {}
    start = 0
    for i, blk in enumerate(layout.blocks):
        n = layout.block_num_edges(i)
        if hetero:
            t = edge_type(layout, i)
            ea, start = _typed_edges(data, t, B, layout), offsets.get(t, 0)
            offsets[t] = start + n
        if blk.has_tensor:
            edges.append(ea[:, start : start + n, : blk.kernel_numel].reshape(B, *layout.block_shape(i)).clone())
        else:
            edges.append(None)
        if not hetero:
            start += n
    return nodes, edges


def _typed_edges(data, t: str, B: int, layout: Layout) -> torch.Tensor:
    """``(B, E_t, K_t)`` features of edge type ``t`` of heterogeneous PyG data."""
    key = (NODE_TYPE, t, NODE_TYPE)
    want = sum(layout.block_num_edges(i) for i in range(len(layout.blocks)) if edge_type(layout, i) == t)
    if key not in data.edge_types or data[key].edge_attr.shape[0] != B * want:
        got = data[key].edge_attr.shape[0] if key in data.edge_types else 0
        raise IncompatibleBatchError(f"PyG data has {got} edges of type {t!r}, the layout {want} per network")
    ea = data[key].edge_attr
    return ea.reshape(B, want, -1)


def to_networkx(graph: WeightGraph, index: int = 0):
    """Network ``index`` as a ``networkx.MultiDiGraph``; every attribute is a number or a string,
    so ``networkx.write_graphml`` writes it.

    Nodes: ``kind``, ``layer`` (name), ``depth``, ``position`` and one attribute per node-feature
    column. Edges: ``block`` (name), ``kind``, ``param`` (``""`` without a parameter) and either
    ``value`` (a ``Linear`` weight, 1.0 for identity and copy edges) or, for a kernel of ``K``
    elements, ``kernel`` (``"3x3"``) and ``w0 .. w{K-1}`` in row-major order.
    """
    import networkx as nx

    lay = graph.layout
    g = nx.MultiDiGraph()
    feats = graph.nodes[index].tolist()
    nodes = []
    for layer in lay.layers:
        for p in range(layer.size):
            n = layer.start + p
            attrs = {name: feats[n][f] for f, name in enumerate(lay.node_features)}
            nodes.append((n, {"kind": layer.kind, "layer": layer.name, "depth": layer.depth, "position": p, **attrs}))
    g.add_nodes_from(nodes)
    # Edges go straight into the adjacency (``_succ[u][v][key]`` and ``_pred[v][u]``, one key dict
    # shared by both, as ``add_edge`` does): ``add_edges_from`` copies every attribute dict again, which
    # took most of the time for ResNet-18's 1.9M edges.
    succ, pred = g._succ, g._pred
    for i, blk in enumerate(lay.blocks):
        # Column lists zipped into rows: half the time of ``tolist()`` on the (E, K) block.
        rows = zip(*graph.block_values(i)[index].detach().cpu().double().T.tolist())
        src, dst = lay.block_edge_index(i).tolist()
        head = (blk.name, blk.kind, blk.param or "")
        if blk.kernel:
            keys = ("block", "kind", "param", "kernel", *(f"w{k}" for k in range(blk.kernel_numel)))
            head += ("x".join(map(str, blk.kernel)),)
            data = (dict(zip(keys, head + r)) for r in rows)
        else:
            data = ({"block": head[0], "kind": head[1], "param": head[2], "value": r[0]} for r in rows)
        for u, v, d in zip(src, dst, data):
            keyed = succ[u].get(v)
            if keyed is None:
                keyed = succ[u][v] = pred[v][u] = {}
            keyed[len(keyed)] = d
    return g
