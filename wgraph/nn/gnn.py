r"""The graph NFN: bidirectional message passing over a WeightGraph's edge blocks.

Node states start from :class:`~wgraph.nn.encoders.NodeEncoder`. Each :class:`GNNLayer` sends
messages along every edge block in both directions, with separate maps per direction
(:math:`d \in \{\rightarrow, \leftarrow\}`; forward goes from a block's input layer to its output
layer, backward the other way):

.. math::

    m^{d}_v = P^{d}\Big( \bigoplus_{u \in \mathcal{N}^d(v)}
              \phi\big(A^{d} h_u + B^{d} h_v + C^{d} L_{k}\, x_{uv}\big) \Big)

    h_v \leftarrow \mathrm{Norm}\Big(h_v + U\big[\,h_v \,\Vert\, m^{\rightarrow}_v \,\Vert\,
    m^{\leftarrow}_v\big]\Big)

where :math:`x_{uv}` is the raw (normalized) edge feature of the block (a scalar weight, a flattened
conv kernel, or the constant 1 of a residual edge), :math:`L_k` the edge encoder's lift for its
kernel shape (composed with :math:`C^d` and applied inside the kernel, so the weights are re-lifted
at every layer and no ``E x H`` edge state is kept), :math:`\bigoplus` one aggregator or several
concatenated (PNA-style ``mean, max, std``), :math:`U` a two-layer MLP and Norm a LayerNorm (or
nothing). A node that receives messages from several blocks sums the per-block aggregates. All
message passing goes through :func:`wgraph.kernels.message_pass`.

With ``edge_updates = true`` every edge keeps a state :math:`e_{uv}` (initially :math:`L_k x_{uv}`)
that each layer updates after the nodes, :math:`e_{uv} \leftarrow e_{uv} + O\,\phi(E e_{uv} + S h_u
+ D h_v)`, and messages read :math:`C^d e_{uv}` instead. This materializes ``E x H`` per layer.

Every operation is per node, per edge, or a sum / mean / max over a set of edges that a neuron
permutation only reorders, so node states are equivariant; position embeddings are added only to
neurons no permutation moves.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..graph import Layout, WeightGraph
from ..kernels import ACTIVATIONS, Backend, get_backend, message_pass, pair_sum
from ..kernels.spec import apply_act_
from ..support import Support
from .configs import GNNConfig, ReadoutConfig
from .encoders import EdgeEncoder, EdgeInput, InputNormalization, NodeEncoder
from .layouts import model_layouts
from .readout import InvariantReadout, ParameterHead, _Act

__all__ = ["GraphNFN", "GNNLayer", "GNNConfig", "ReadoutConfig", "ConfigError", "EdgeInput", "from_config"]


# ----------------------------------------------------------------------------- layers
class _Direction(nn.Module):
    """The maps A, B (+bias), C and P of one message direction."""

    def __init__(self, hidden: int, n_aggr: int):
        super().__init__()
        self.send = nn.Linear(hidden, hidden, bias=False)
        self.recv = nn.Linear(hidden, hidden)
        self.edge = nn.Linear(hidden, hidden, bias=False)
        self.post = nn.Linear(hidden * n_aggr, hidden)

    def edge_map(self, inp: EdgeInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``C`` composed with the edge lift ``(w, b)``: the kernel's ``(K, H)`` weight and a bias
        (``C`` itself and no bias for an edge state)."""
        c = self.edge.weight.t()
        if inp.w is None:
            return c, None
        return inp.w @ c, inp.b @ c


class GNNLayer(nn.Module):
    """One round of bidirectional message passing, node update, and optional edge update."""

    def __init__(
        self, hidden: int, aggr=("mean",), act="relu", norm="layer", edge_updates=False, backend="auto", heads=True
    ):
        super().__init__()
        self.aggr, self.act, self.backend = tuple(aggr), act, backend
        self.fwd = _Direction(hidden, len(self.aggr))
        self.bwd = _Direction(hidden, len(self.aggr))
        self.update = nn.Sequential(nn.Linear(3 * hidden, hidden), _Act(act), nn.Linear(hidden, hidden))
        self.heads = nn.Linear(2 * hidden, hidden, bias=False) if heads else None
        self.norm = nn.LayerNorm(hidden) if norm == "layer" else nn.Identity()
        self.edge_update = _EdgeUpdate(hidden, act) if edge_updates else None

    def _messages(
        self,
        d: _Direction,
        layout: Layout,
        h: torch.Tensor,
        edge_inputs: list[EdgeInput],
        reverse: bool,
        backend: Backend,
    ) -> torch.Tensor:
        """The aggregated messages of every node, ``(B, N, H * len(aggr))``, before ``P``.

        Node states are split into per-layer views once (a block reads its two layers' views, so
        the backward pass concatenates gradients once instead of adding one full-size gradient per
        block), and each receiving layer's messages are summed over blocks and concatenated. The
        lift's bias ``b C`` of a block joins the receiver projection ``B h_v + b``: in the projection
        itself when the block is the only one to reach its receiving layer, else per block.
        """
        sizes = [layer.size for layer in layout.layers]
        plan = []  # per block: sender (layer, selection), receiver (layer, selection), kernel weight, bias
        for bi, (blk, inp) in enumerate(zip(layout.blocks, edge_inputs)):
            src, dst = layout.block_selection(bi)
            ends = ((blk.src, src), (blk.dst, dst)) if not reverse else ((blk.dst, dst), (blk.src, src))
            plan.append((*ends, *d.edge_map(inp)))
        reach = [sum(r == layer for _, (r, _), _, _ in plan) for layer in range(len(sizes))]
        folded = [bias is not None and r is None and reach[rl] == 1 for _, (rl, r), _, bias in plan]
        node_bias = [d.recv.bias] * len(sizes)
        for (_, (rl, _), _, bias), fold in zip(plan, folded):
            if fold:
                node_bias[rl] = d.recv.bias + bias
        node_bias = torch.cat([v.expand(n, -1) for v, n in zip(node_bias, sizes)])  # (N, H)
        recv_all = torch.matmul(h, d.recv.weight.t()).add_(node_bias).split(sizes, dim=1)
        send_all = d.send(h).split(sizes, dim=1)
        incoming: list[list] = [[] for _ in sizes]  # per receiving layer: (selection, messages)
        for blk, ((sl, s), (rl, r), weight, bias), fold, inp in zip(layout.blocks, plan, folded, edge_inputs):
            recv = _select(recv_all[rl], r)
            if bias is not None and not fold:
                recv = recv + bias
            sender = _select(send_all[sl], s)
            m = message_pass(
                sender, recv, inp.x, weight, kind=_kernel_kind(blk), reverse=reverse, aggr=self.aggr, act=self.act,
                groups=blk.groups, backend=backend,
            )
            incoming[rl].append((r, m))
        width = h.shape[2] * len(self.aggr)
        return torch.cat([_gather(items, h, size, width) for items, size in zip(incoming, sizes)], dim=1)

    def forward(self, layout: Layout, h: torch.Tensor, edge_inputs: list[EdgeInput]):
        backend = get_backend(self.backend, h.device)  # once per layer call, not per block and direction
        a_f = self._messages(self.fwd, layout, h, edge_inputs, reverse=False, backend=backend)
        a_b = self._messages(self.bwd, layout, h, edge_inputs, reverse=True, backend=backend)
        # U's first layer applied to [h | P_f a_f + p_f | P_b a_b + p_b]; P is linear, so it is folded
        # into U: U_h h + (U_f P_f) a_f + (U_b P_b) a_b + (u + U_f p_f + U_b p_b), which never forms
        # P's outputs or their concatenation.
        # The sums accumulate in place into one (B * N, H) buffer (addmm_; the activation in place
        # where it has an in-place form): no product is kept beside the sum, and fewer fresh
        # buffers are allocated (each costs page faults on CPU).
        first, _, last = self.update
        B, N, H = h.shape
        u_h, u_f, u_b = first.weight.split(H, dim=1)
        bias = first.bias + u_f @ self.fwd.post.bias + u_b @ self.bwd.post.bias
        z = torch.addmm(bias, h.reshape(B * N, H), u_h.t())
        z.addmm_(a_f.reshape(B * N, -1), (u_f @ self.fwd.post.weight).t())
        z.addmm_(a_b.reshape(B * N, -1), (u_b @ self.bwd.post.weight).t())
        if self.heads is not None:
            _add_head_context(z.view(B, N, H), h, layout, self.heads)
        y = torch.addmm(last.bias, apply_act_(z, self.act), last.weight.t())
        y.add_(h.reshape(B * N, H))  # h + last(act(z))
        h = self.norm(y.view(B, N, H))
        if self.edge_update is not None:
            edge_inputs = self.edge_update(layout, h, edge_inputs)
        return h, edge_inputs


def _add_head_context(z: torch.Tensor, h: torch.Tensor, layout: Layout, lin: nn.Linear) -> None:
    r"""Add :math:`W [\bar h_{\text{head}(v)} \Vert \bar h_{\text{joint}(v)}]` to ``z[:, v]`` for
    every node ``v`` of an attention head (:attr:`Layout.node_heads`): the mean state of the nodes
    of its head in its own layer, and of its head across the head group (query/key and value
    dimensions of one attention). Messages along edges cannot tell which dimensions form a head
    (a swap of two dimensions across heads changes the attention but no edge); these means can,
    and a permutation that moves heads as blocks only relabels them."""
    if not len(layout.head_nodes):
        return
    local, joint = layout.node_heads
    nodes = layout.head_nodes.to(h.device)
    x = h[:, nodes]
    ctx = torch.cat([_group_means(x, ids[nodes].to(h.device)) for ids in (local, joint)], dim=2)
    z.index_add_(1, nodes, lin(ctx))


def _group_means(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, n, H)`` states -> the mean over the states with the same id, for each of the ``n``."""
    groups = int(ids.max()) + 1
    sums = x.new_zeros(x.shape[0], groups, x.shape[2]).index_add_(1, ids, x)
    counts = torch.bincount(ids, minlength=groups).to(x.dtype)
    return (sums / counts[:, None])[:, ids]


def _select(states: torch.Tensor, sel) -> torch.Tensor:
    """Neurons ``sel`` (None: all, a slice, or an index tensor) of one layer's ``(B, n, H)`` states."""
    if sel is None:
        return states
    if isinstance(sel, slice):
        return states[:, sel]
    return states.index_select(1, sel.to(states.device))


def _gather(items, like: torch.Tensor, size: int, width: int) -> torch.Tensor:
    """Sum of the messages ``(selection, (B, n, width))`` a layer of ``size`` neurons receives,
    ``(B, size, width)`` (zeros where nothing arrives; listed targets may repeat)."""
    total = None
    for sel, m in items:
        if isinstance(sel, slice):
            m = F.pad(m, (0, 0, sel.start, size - sel.stop))
        elif sel is not None:
            m = m.new_zeros(m.shape[0], size, width).index_add(1, sel.to(m.device), m)
        total = m if total is None else total + m
    return total if total is not None else like.new_zeros(like.shape[0], size, width)


class _EdgeUpdate(nn.Module):
    """``e <- e + O phi(E e + S h_u + D h_v)`` for every edge state (materialized: ``E x H``)."""

    def __init__(self, hidden: int, act: str):
        super().__init__()
        self.act = act
        self.e = nn.Linear(hidden, hidden)
        self.s = nn.Linear(hidden, hidden, bias=False)
        self.d = nn.Linear(hidden, hidden, bias=False)
        self.o = nn.Linear(hidden, hidden)

    def forward(self, layout: Layout, h: torch.Tensor, edge_inputs: list[EdgeInput]) -> list[EdgeInput]:
        phi = ACTIVATIONS[self.act]
        hs, hd = self.s(h), self.d(h)
        out = []
        for bi, (blk, inp) in enumerate(zip(layout.blocks, edge_inputs)):
            src, dst = layout.block_nodes(bi)
            a, c, e = hs[:, src], hd[:, dst], inp.x
            if _kernel_kind(blk) in ("dense", "grouped"):  # a weight (shared ones too)
                z = self.e(e) + pair_sum(a, c, blk.groups)
            else:  # source i feeds targets i * inner + s
                z = self.e(e) + a.repeat_interleave(c.shape[1] // a.shape[1], dim=1) + c
            out.append(EdgeInput(e + self.o(phi(z))))
        return out


# ----------------------------------------------------------------------------- model
Graphs = Union[WeightGraph, list]


class GraphNFN(nn.Module):
    """Graph neural functional: encoders, :class:`GNNLayer` stack, and a readout or parameter head.

    Args:
        layouts: the :class:`~wgraph.Layout` (or WeightGraph) of every architecture the model will
            see; a list for mixed-architecture batches. They fix the kernel shapes and node features
            to encode, the normalization statistics, and the readout's input size.
        config: a :class:`GNNConfig` (defaults if omitted); ``overrides`` replace its top-level keys
            (``readout`` takes a :class:`ReadoutConfig` or a dict of its keys to change).

    ``model(graph)`` takes a WeightGraph of B networks, or a list of WeightGraphs of any of the
    model's layouts (processed together, with the same result as one by one), and returns
    ``(B, out_dim)`` (``head = "invariant"``, networks in input order) or, for
    ``head = "parameters"``, a WeightGraph (a list for a list input) of the input's layout.
    """

    def __init__(self, layouts, config: GNNConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or GNNConfig()).replace(**overrides)
        self.config = cfg
        self.layouts = model_layouts(layouts)
        H = cfg.hidden
        self.normalization = InputNormalization(self.layouts) if cfg.normalize_inputs else None
        self.edge_encoder = EdgeEncoder(self.layouts, H, cfg.fourier_features, cfg.fourier_scale)
        self.node_encoder = NodeEncoder(
            self.layouts, H, positions=cfg.positions, max_positions=cfg.max_positions, max_depth=cfg.max_depth
        )
        # head means only where some layout has attention heads (no unused weights elsewhere)
        heads = cfg.attention_heads and any(len(lay.head_nodes) for lay in self.layouts)
        self.layers = nn.ModuleList(
            GNNLayer(H, cfg.aggr, cfg.act, cfg.norm, cfg.edge_updates, cfg.backend, heads) for _ in range(cfg.layers)
        )
        if cfg.head == "invariant":
            r = cfg.readout
            self.head = InvariantReadout(
                self.layouts,
                H,
                cfg.out_dim,
                pool=r.pool,
                per_layer=r.per_layer,
                output_states=r.output_states,
                mlp_hidden=r.hidden,
                act=cfg.act,
                norm=r.norm,
                swe_slices=r.swe_slices,
                swe_references=r.swe_references,
            )
        else:
            self.head = ParameterHead(self.layouts, H, cfg.act)

    @classmethod
    def supports(cls, layout: Layout) -> Support:
        """Whether a graph NFN reads ``layout``: every block kind. A shared (tied-weight) block
        sends messages along its own edges with the values of the weight it reuses (transposed for
        a ``W^T`` use): one tensor, read in both places."""
        return Support(True)

    # ------------------------------------------------------------------ pieces
    def fit_normalization(self, graphs: Graphs) -> None:
        """Fit the per-block / per-layer input statistics on a zoo (stored in ``state_dict``)."""
        if self.normalization is None:
            raise ConfigError("this model was built with normalize_inputs = false")
        self.normalization.fit(graphs)

    def encode(self, graph: WeightGraph) -> tuple[torch.Tensor, list[EdgeInput]]:
        """Initial node states ``(B, N, H)`` and per-block edge inputs (raw features and lifts, or
        edge states with ``edge_updates``)."""
        own = self.node_encoder.bias.dtype
        if graph.dtype != own:
            raise ConfigError(
                f"the graph is {graph.dtype} but the model is {own}: convert one (graph.to(...) or model.to(...))"
            )
        if self.normalization is not None:
            nodes, edges = self.normalization(graph)
        else:
            nodes, edges = graph.nodes, graph.edges
        lay = graph.layout
        h = self.node_encoder(lay, nodes)
        inputs: list[EdgeInput] = []
        for blk, e in zip(lay.blocks, edges):
            if blk.kind == "shared":  # a tied weight: the first use's edges, read in this place too
                e = edges[blk.index[0]].transpose(1, 2) if blk.index[1] else edges[blk.index[0]]
                blk = replace(blk, kind="dense")
            w, b = self.edge_encoder.lift(blk)
            inputs.append(EdgeInput(None if e is None else self.edge_encoder.features(e, blk.kernel), w, b))
        if self.config.edge_updates:  # materialize the edge states L_k x
            B = graph.batch_size
            states = []
            for bi, inp in enumerate(inputs):
                if inp.x is None:
                    targets = lay.block_nodes(bi)[1]
                    x = inp.w[0].expand(B, targets.stop - targets.start, -1)
                else:
                    x = inp.embedding()
                states.append(EdgeInput(x))
            inputs = states
        return h, inputs

    def node_states(self, graph: WeightGraph) -> tuple[torch.Tensor, list[EdgeInput]]:
        """Node states ``(B, N, H)`` after every layer (equivariant), and the final edge inputs."""
        h, inputs = self.encode(graph)
        for layer in self.layers:
            h, inputs = layer(graph.layout, h, inputs)
        return h, inputs

    def _forward_one(self, graph: WeightGraph):
        """The pooled features ``(B, D)`` (invariant head, before the readout's normalization and
        MLP), or the parameter head's WeightGraph."""
        h, inputs = self.node_states(graph)
        if isinstance(self.head, InvariantReadout):
            return self.head.features(graph.layout, h)
        return self.head(graph.layout, h, inputs)

    def pooled(self, graph: Graphs) -> torch.Tensor:
        """The invariant readout's pooled features ``(B, D)`` of a graph or a list (input order),
        before its normalization across networks and its MLP."""
        if not isinstance(self.head, InvariantReadout):
            raise ConfigError("pooled features exist only for head = 'invariant'")
        return self._batched(graph)

    @torch.no_grad()
    def refresh_statistics(self, graphs: Graphs, batch_size: int = 256) -> None:
        """Recompute the readout's normalization statistics (``readout.norm``) over ``graphs``,
        typically the whole training zoo, in chunks of ``batch_size`` networks and in eval mode.
        The trainer calls it before every evaluation; call it after training a model yourself."""
        if not isinstance(self.head, InvariantReadout) or self.head.norm is None:
            return
        self.head.set_statistics(self._pooled_chunks(graphs, batch_size))

    @torch.no_grad()
    def dead_units(self, graphs: Graphs, batch_size: int = 256) -> dict[str, int]:
        """``{"dead", "total"}``: readout MLP units off for every network of ``graphs``
        (:meth:`InvariantReadout.dead_units`; in eval mode)."""
        if not isinstance(self.head, InvariantReadout):
            return {"dead": 0, "total": 0}
        was = self.training
        self.eval()
        try:
            return self.head.dead_units(self._pooled_chunks(graphs, batch_size))
        finally:
            self.train(was)

    def _pooled_chunks(self, graphs: Graphs, batch_size: int) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            if isinstance(graphs, WeightGraph):
                n = graphs.batch_size
                return torch.cat([self.pooled(graphs[i : i + batch_size]) for i in range(0, n, batch_size)])
            return torch.cat([self.pooled(g) for g in graphs])
        finally:
            self.train(was)

    # ------------------------------------------------------------------ forward
    def forward(self, graph: Graphs):
        out = self._batched(graph)
        if isinstance(self.head, InvariantReadout):
            return self.head.mlp(self.head.normalize(out))
        return out

    def _batched(self, graph: Graphs):
        """:meth:`_forward_one` of a graph, or of a list of graphs grouped by layout (each group one
        batch), with the results in input order (the rows concatenated for the invariant head)."""
        if isinstance(graph, WeightGraph):
            return self._forward_one(graph)
        graphs = list(graph)
        if not graphs or not all(isinstance(g, WeightGraph) for g in graphs):
            raise ConfigError("expected a WeightGraph or a non-empty list of WeightGraphs")
        # Graphs of one layout run as one batch; results come back in input order.
        groups: list[tuple[Layout, list[int]]] = []
        for i, g in enumerate(graphs):
            for lay, idx in groups:
                if lay is g.layout or lay == g.layout:
                    idx.append(i)
                    break
            else:
                groups.append((g.layout, [i]))
        results: list = [None] * len(graphs)
        for _, idx in groups:
            batch = WeightGraph.cat([graphs[i] for i in idx]) if len(idx) > 1 else graphs[idx[0]]
            out = self._forward_one(batch)
            start = 0
            for i in idx:
                n = graphs[i].batch_size
                results[i] = out[start : start + n]
                start += n
        if isinstance(self.head, InvariantReadout):
            return torch.cat(results)
        return results


def from_config(config: dict, layouts) -> GraphNFN:
    """The graph NFN of a parsed ``type = "gnn"`` preset (its builder in
    :data:`~wgraph.nn.presets.PRESET_TYPES`) for ``layouts``."""
    return GraphNFN(layouts, GNNConfig.from_dict({k: v for k, v in config.items() if k != "type"}))


def _kernel_kind(blk) -> str:
    """The message-passing kind of a block: a shared block passes messages like a dense one."""
    return "dense" if blk.kind == "shared" else blk.kind
