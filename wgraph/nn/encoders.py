r"""Encoders: from a WeightGraph's raw tensors to hidden node states and edge lifts.

**Edge features.** Each dense block keeps its native edge feature: a scalar for ``Linear``, the
``kh * kw`` kernel for ``Conv2d`` (flattened), and so on. :class:`EdgeEncoder` holds one linear lift
per kernel shape, :math:`L_k: \mathbb{R}^{K} \to \mathbb{R}^{H}`, so nothing is padded to a maximum
kernel size. Identity (residual) and copy edges carry the constant 1, lifted by a learned embedding
per block kind. The lift is *not applied* here: a message-passing layer composes it with its own
edge map ``C`` and hands ``C L_k`` to the kernel, which re-lifts the raw weights in every layer (no
``E x H`` edge state).

Optional Gaussian Fourier features replace ``x`` by
:math:`[x, \sin(2\pi x\Omega), \cos(2\pi x\Omega)]` with a fixed random
:math:`\Omega \in \mathbb{R}^{K \times m}`, :math:`\Omega_{ij} \sim \mathcal{N}(0, s^2)`.

**Input normalization** (:class:`InputNormalization`): per edge block a mean and standard deviation
over all its weights, per layer and node-feature column the same over its nodes, computed from a zoo
by :meth:`InputNormalization.fit` and stored as buffers (so they are saved in the model's
``state_dict``). Block- and layer-wide statistics are invariant under neuron permutations.

**Node states** (:class:`NodeEncoder`):

.. math::

    h^0_v = b + \sum_f x_{vf}\, w_{\mathrm{name}(f)} + E_{\mathrm{kind}}[k_v] + E_{\mathrm{depth}}[d_v]
            + [v \text{ fixed}]\; E_{\mathrm{pos}}[k_v, p_v]

with one learned vector per node-feature column *name* (``bias``, later normalization statistics,
per-network settings such as ``activation=tanh``; graphs whose layouts have different columns share
the vectors of common names). Every vector and embedding starts at :math:`\mathcal{N}(0, 1/H)`
(norm about 1): at ``nn.Embedding``'s default :math:`\mathcal{N}(0, 1)` the embeddings (norm
:math:`\sqrt{H}`) drown the features, which alone differ between networks. Position
embeddings :math:`E_{\mathrm{pos}}` are added only to nodes that no neuron permutation moves (input
and output neurons), so they break exactly the symmetries the network does not have. Nodes of a
flattened feature map (neuron ``c`` at spatial position ``s``) also get a spatial embedding
:math:`E_{\mathrm{spatial}}[s]`, which permutations of ``c`` leave in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WgraphError
from ..graph import WeightGraph
from ..layout import NODE_KINDS, EdgeBlock, Layout

#: Block kinds without a tensor: their edges carry the constant 1.
STRUCTURAL_KINDS = ("identity", "copy")


class EncoderError(WgraphError):
    """A graph the encoders were not built for (unknown kernel shape, node feature, depth, ...)."""


def kernel_key(kernel: tuple[int, ...]) -> str:
    """Name of the edge type of a dense block with this kernel: ``"linear"``, ``"k3x3"``, ..."""
    return "linear" if not kernel else "k" + "x".join(map(str, kernel))


@dataclass(frozen=True)
class EdgeInput:
    r"""What a message-passing layer reads of one edge block, in one of two forms.

    *Raw* (``w`` given): the edge features ``x``, ``(B, out, in, K)``, or ``None`` for a block
    without a tensor (its edges carry the constant 1), and the lift ``(w, b)``, ``(K, H)`` and
    ``(H,)``: the edge embedding is :math:`x w + b`, which the layers compose with their own maps and
    apply inside the kernel. *State* (``edge_updates``): ``x`` is the materialized edge state
    ``(B, out, in, H)`` and ``w``, ``b`` are ``None``.
    """

    x: torch.Tensor | None
    w: torch.Tensor | None = None
    b: torch.Tensor | None = None

    def embedding(self) -> torch.Tensor:
        """The edge embedding ``(B, out, in, H)``: the state, or the lifted features."""
        return self.x if self.w is None else self.x @ self.w + self.b


class EdgeEncoder(nn.Module):
    """Per-kernel-shape linear lifts of raw edge features; embeddings of identity and copy edges."""

    def __init__(self, layouts: list[Layout], hidden: int, fourier_features: int = 0, fourier_scale: float = 1.0):
        super().__init__()
        self.hidden = hidden
        self.fourier_features = fourier_features
        kernels = sorted({b.kernel for lay in layouts for b in lay.blocks if b.has_tensor})
        self.lifts = nn.ModuleDict()
        for k in kernels:
            K = math.prod(k)
            self.lifts[kernel_key(k)] = nn.Linear(K * (1 + 2 * fourier_features), hidden)
            if fourier_features:
                self.register_buffer(f"omega_{kernel_key(k)}", torch.randn(K, K * fourier_features) * fourier_scale)
        # Edges without a tensor carry the constant 1: a learned embedding per block kind.
        self.structural = nn.ParameterDict(
            {f"{k}_edge": nn.Parameter(torch.randn(1, hidden) / math.sqrt(hidden)) for k in STRUCTURAL_KINDS}
        )

    def _lift(self, kernel: tuple[int, ...]) -> nn.Linear:
        key = kernel_key(kernel)
        if key not in self.lifts:
            raise EncoderError(
                f"no edge encoder for kernel shape {kernel} ({key!r}); this model knows {list(self.lifts)}: "
                f"build it with the layouts of every architecture it will see"
            )
        return self.lifts[key]

    def features(self, x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
        """``(B, out, in, *kernel)`` block -> ``(B, out, in, K')`` edge features (Fourier if enabled).

        (A grouped block has ``in // groups`` columns; its kernels share the lift of their shape.)"""
        x = x.reshape(*x.shape[:3], -1)
        if not self.fourier_features:
            return x
        proj = 2 * math.pi * x @ getattr(self, f"omega_{kernel_key(kernel)}")
        return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)

    def lift(self, block: EdgeBlock) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with edge embedding ``x @ W + b``; for identity / copy blocks ``x = 1``."""
        if not block.has_tensor:
            if f"{block.kind}_edge" not in self.structural:
                raise EncoderError(f"no edge encoder for block kind {block.kind!r} (block {block.name!r})")
            e = self.structural[f"{block.kind}_edge"]
            return e, torch.zeros_like(e[0])
        lin = self._lift(block.kernel)
        return lin.weight.t(), lin.bias


class InputNormalization(nn.Module):
    """Per-block edge and per-layer node-feature standardization, fitted on a zoo.

    Buffers ``edge_stats_{i}`` ``(num_blocks, 2)`` and ``node_stats_{i}`` ``(num_layers, F, 2)``
    (mean, std) for the ``i``-th layout the model was built with, and ``layout_key_{i}``, a
    fingerprint of that layout, so that statistics loaded from a ``state_dict`` are never applied
    to another architecture. Until :meth:`fit` is called the statistics are ``(0, 1)``: the identity.
    """

    def __init__(self, layouts: list[Layout]):
        super().__init__()
        self.layouts = list(layouts)
        self._verified: set[int] = set()
        self.register_load_state_dict_post_hook(lambda module, keys: module._verified.clear())
        for i, lay in enumerate(self.layouts):
            self.register_buffer(f"layout_key_{i}", torch.tensor(lay.fingerprint))
            self.register_buffer(f"edge_stats_{i}", torch.tensor([[0.0, 1.0]]).repeat(len(lay.blocks), 1))
            node = torch.zeros(len(lay.layers), len(lay.node_features), 2)
            node[..., 1] = 1
            self.register_buffer(f"node_stats_{i}", node)

    def index(self, layout: Layout) -> int:
        for i, lay in enumerate(self.layouts):
            if lay is layout or lay == layout:
                if i not in self._verified:  # once after construction or loading (avoids a sync per call)
                    if int(getattr(self, f"layout_key_{i}")) != layout.fingerprint:
                        raise EncoderError(
                            f"the normalization statistics of layout {i} belong to another architecture: the state "
                            f"dict was saved by a model built with other layouts (or in another order)"
                        )
                    self._verified.add(i)
                return i
        raise EncoderError(
            f"this model was built for {len(self.layouts)} layout(s) and this graph's layout is not one of them "
            f"(its normalization statistics are per layout): build the model with every layout it will see"
        )

    @torch.no_grad()
    def fit(self, graphs: WeightGraph | list[WeightGraph]) -> None:
        """Compute the statistics from a zoo: one WeightGraph or a list (of any known layouts)."""
        graphs = [graphs] if isinstance(graphs, WeightGraph) else list(graphs)
        by_layout: dict[int, list[WeightGraph]] = {}
        for g in graphs:
            by_layout.setdefault(self.index(g.layout), []).append(g)
        for i, gs in by_layout.items():
            g = WeightGraph.cat(gs) if len(gs) > 1 else gs[0]
            lay = g.layout
            edge = getattr(self, f"edge_stats_{i}")
            for bi, e in enumerate(g.edges):
                if e is not None:
                    edge[bi] = torch.stack(_mean_std(e.double())).to(edge)
            node = getattr(self, f"node_stats_{i}")
            for li, layer in enumerate(lay.layers):
                x = g.nodes[:, layer.start : layer.stop].double()
                for f in range(x.shape[-1]):
                    node[li, f] = torch.stack(_mean_std(x[..., f])).to(node)

    def forward(self, graph: WeightGraph) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Standardized ``(nodes, edges)`` of ``graph``."""
        i = self.index(graph.layout)
        lay = graph.layout
        edge = getattr(self, f"edge_stats_{i}").to(graph.dtype)
        node = getattr(self, f"node_stats_{i}").to(graph.dtype)
        edges = [None if e is None else (e - edge[bi, 0]) / edge[bi, 1] for bi, e in enumerate(graph.edges)]
        per_node = node[lay.node_layer.to(graph.device)]  # (N, F, 2)
        nodes = (graph.nodes - per_node[..., 0]) / per_node[..., 1]
        return nodes, edges


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean()
    std = x.std(unbiased=False) if x.numel() > 1 else torch.zeros_like(mean)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


class NodeEncoder(nn.Module):
    """Initial node states from node features and kind / depth / position embeddings.

    The depth embedding has ``max_depth`` rows, or more where a layout it is built for is deeper
    (a DenseNet or a 24-block transformer converted from timm has layers at depth 100 and beyond),
    and the position embeddings ``max_positions``, or more where an input or output layer or a
    flattened feature map is wider (a learned position embedding of 3,136 positions): every graph
    the model was made for can be read. A deeper or wider layout seen only later is an error.
    """

    def __init__(
        self,
        layouts: list[Layout],
        hidden: int,
        *,
        positions: bool = True,
        max_positions: int = 1024,
        max_depth: int = 64,
    ):
        super().__init__()
        names = sorted({f for lay in layouts for f in lay.node_features})
        self.columns = nn.ParameterDict({n: nn.Parameter(torch.randn(hidden) / math.sqrt(hidden)) for n in names})
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.kind = nn.Embedding(len(NODE_KINDS), hidden)
        max_depth = max([max_depth] + [layer.depth + 1 for lay in layouts for layer in lay.layers])
        if positions:  # as many as the widest input/output layer or feature map of these layouts
            widest = [int(lay.node_position[lay.fixed_nodes].max()) + 1 for lay in layouts if lay.fixed_nodes.any()]
            widest += [int(lay.node_spatial.max()) + 1 for lay in layouts]
            max_positions = max([max_positions] + widest)
        self.depth = nn.Embedding(max_depth, hidden)
        self.positions = positions
        self.max_positions = max_positions
        self.max_depth = max_depth
        if positions:
            self.position = nn.Embedding(len(NODE_KINDS) * max_positions, hidden)
            self.spatial = nn.Embedding(max_positions, hidden)
        for emb in self.embeddings():  # norm about 1, as a node feature's vector (not N(0, 1): norm sqrt(H))
            nn.init.normal_(emb.weight, std=1 / math.sqrt(hidden))
        for lay in layouts:
            self.check(lay)

    def embeddings(self) -> list[nn.Embedding]:
        """The kind, depth (and position, spatial) embedding tables."""
        return [self.kind, self.depth] + ([self.position, self.spatial] if self.positions else [])

    def check(self, layout: Layout) -> None:
        for f in layout.node_features:
            if f not in self.columns:
                raise EncoderError(f"no node encoder for node feature {f!r}; this model knows {list(self.columns)}")
        deepest = max((l.depth for l in layout.layers), default=0)
        if deepest >= self.max_depth:
            raise EncoderError(f"layer depth {deepest} exceeds the depth embedding (max_depth = {self.max_depth})")
        if self.positions:
            fixed = layout.fixed_nodes
            if fixed.any() and int(layout.node_position[fixed].max()) >= self.max_positions:
                raise EncoderError(
                    f"a fixed (input/output) layer has more than max_positions = {self.max_positions} neurons"
                )
            if int(layout.node_spatial.max()) >= self.max_positions:
                raise EncoderError(
                    f"a flattened feature map has more than max_positions = {self.max_positions} positions"
                )

    def forward(self, layout: Layout, nodes: torch.Tensor) -> torch.Tensor:
        """``(B, N, F)`` (normalized) node features -> ``(B, N, H)`` initial node states."""
        self.check(layout)
        dev = nodes.device
        kind, depth = layout.node_kind.to(dev), layout.node_depth.to(dev)
        w = torch.stack([self.columns[f] for f in layout.node_features]).to(nodes.dtype)  # (F, H)
        h = nodes @ w + self.bias + self.kind(kind) + self.depth(depth)
        if self.positions:
            position = layout.node_position.to(dev).clamp_max(self.max_positions - 1)
            fixed, spatial = layout.fixed_nodes.to(dev), layout.node_spatial.to(dev)
            h = h + self.position(kind * self.max_positions + position) * fixed[:, None].to(h.dtype)
            h = h + self.spatial(spatial.clamp_min(0)) * (spatial >= 0)[:, None].to(h.dtype)
        return h
