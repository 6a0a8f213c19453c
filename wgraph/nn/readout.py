r"""Readouts: from node states to an invariant vector or to per-parameter outputs.

**Invariant readout** (:class:`InvariantReadout`). For node states :math:`h_v` after the last layer:

.. math::

    z = \big[\, \mathrm{pool}_{v:\,k_v = k}\, h_v \;\big]_{k \in \{\mathrm{input, hidden, output}\}}
        \;\big\Vert\; \big[\, \mathrm{pool}_{v \in \ell}\, h_v \big]_{\ell \in \mathrm{layers}}
        \;\big\Vert\; \big[\, h_v \big]_{v\ \mathrm{output\ neurons,\ in\ order}},
    \qquad y = \mathrm{MLP}(z)

Pooling (mean, max, sum; concatenated) over a set of nodes that permutations only reorder is
invariant; output neurons are never permuted, so concatenating their states in order is too. The
per-layer part (``per_layer``) needs every layout to have the same number of layers and the
output part (``output_states``) the same number of output neurons.

**Per-parameter head** (:class:`ParameterHead`): a WeightGraph of the input's layout whose
every parameter element is predicted from the states it touches:

.. math::

    \hat W_{vu} = M_k\, \phi\big(A h_u + B h_v + C e_{uv}\big) \in \mathbb{R}^{K}, \qquad
    \hat x_{vf} = \langle w_f, h_v \rangle + c_f

with :math:`e_{uv}` the edge's embedding (the lifted weight :math:`L_k x_{uv}`, or its state with
edge updates), :math:`M_k` one output map per kernel shape (``prod(kernel)`` outputs) and one
:math:`(w_f, c_f)` per node-feature name. Node-feature slots that hold no parameter (e.g. the bias
of an input neuron) are set to zero. Each output depends only on its own edge (or node) and the
states of its endpoints, so the head is equivariant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import WgraphError
from ..graph import NODE_KINDS, Layout, WeightGraph
from ..kernels import ACTIVATIONS, pair_sum
from .encoders import EdgeInput, kernel_key

POOLS = ("mean", "max", "sum")


class ReadoutError(WgraphError):
    """A readout that cannot be built for the given layouts, or a bad pooling name."""


def _pool(h: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``(B, n, H)`` over ``n``; an empty set pools to zeros."""
    if h.shape[1] == 0:
        return h.new_zeros(h.shape[0], h.shape[2])
    return {"mean": h.mean, "max": h.amax, "sum": h.sum}[how](1)


class InvariantReadout(nn.Module):
    """Pool per node kind (and optionally per layer), concatenate output-neuron states, then an MLP."""

    def __init__(
        self,
        layouts: list[Layout],
        hidden: int,
        out_dim: int,
        *,
        pool: tuple[str, ...] = ("mean",),
        per_layer: bool = False,
        output_states: bool = True,
        mlp_hidden: int = 64,
        act: str = "relu",
    ):
        super().__init__()
        bad = [p for p in pool if p not in POOLS]
        if not pool or bad:
            raise ReadoutError(f"readout pool must be a non-empty list of {list(POOLS)}, got {list(pool)}")
        self.pool, self.per_layer, self.output_states = tuple(pool), per_layer, output_states
        self.n_layers = self._common(layouts, "per_layer", lambda l: len(l.layers)) if per_layer else 0
        self.n_out = self._common(layouts, "output_states", _num_outputs) if output_states else 0
        dim = hidden * len(pool) * (len(NODE_KINDS) + self.n_layers) + hidden * self.n_out
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), _Act(act), nn.Linear(mlp_hidden, out_dim))

    @staticmethod
    def _common(layouts: list[Layout], key: str, fn) -> int:
        values = sorted({fn(l) for l in layouts})
        if len(values) != 1:
            raise ReadoutError(
                f"readout option {key} = true needs every layout to agree, but they have {values}; set it to false"
            )
        return values[0]

    def forward(self, layout: Layout, h: torch.Tensor) -> torch.Tensor:
        """``(B, N, H)`` node states of graphs of ``layout`` -> ``(B, out_dim)``."""
        parts = []
        for kind in NODE_KINDS:
            idx = layout.nodes_of_kind(kind).to(h.device)
            parts += [_pool(h[:, idx], p) for p in self.pool]
        if self.per_layer:
            if len(layout.layers) != self.n_layers:
                raise ReadoutError(
                    f"per-layer readout built for {self.n_layers} layers, graph has {len(layout.layers)}"
                )
            for layer in layout.layers:
                parts += [_pool(h[:, layer.start : layer.stop], p) for p in self.pool]
        if self.output_states:
            idx = layout.nodes_of_kind("output").to(h.device)
            if len(idx) != self.n_out:
                raise ReadoutError(f"readout built for {self.n_out} output neurons, graph has {len(idx)}")
            parts.append(h[:, idx].reshape(h.shape[0], -1))
        return self.mlp(torch.cat(parts, dim=-1))


def _num_outputs(layout: Layout) -> int:
    return sum(l.size for l in layout.layers if l.kind == "output")


class _Act(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return ACTIVATIONS[self.name](x)


class ParameterHead(nn.Module):
    """Equivariant per-parameter output: a WeightGraph with the shape of every parameter."""

    def __init__(self, layouts: list[Layout], hidden: int, act: str = "relu"):
        super().__init__()
        self.act = act
        self.send = nn.Linear(hidden, hidden, bias=False)
        self.recv = nn.Linear(hidden, hidden)
        self.edge = nn.Linear(hidden, hidden, bias=False)
        kernels = sorted({b.kernel for lay in layouts for b in lay.blocks if b.has_tensor})
        self.edge_out = nn.ModuleDict({kernel_key(k): nn.Linear(hidden, math.prod(k)) for k in kernels})
        names = sorted({f for lay in layouts for f in lay.node_features})
        self.node_out = nn.ModuleDict({n: nn.Linear(hidden, 1) for n in names})

    def forward(self, layout: Layout, h: torch.Tensor, edge_inputs: list[EdgeInput]) -> WeightGraph:
        """Node states ``(B, N, H)`` and the model's edge inputs -> a WeightGraph of ``layout``."""
        phi = ACTIVATIONS[self.act]
        B = h.shape[0]
        send, recv = self.send(h), self.recv(h)
        edges: list[torch.Tensor | None] = []
        for blk, inp in zip(layout.blocks, edge_inputs):
            if not blk.has_tensor:
                edges.append(None)
                continue
            s, d = layout.layers[blk.src], layout.layers[blk.dst]
            e = inp.embedding()  # (B, out, in // groups, H)
            pairs = pair_sum(send[:, s.start : s.stop], recv[:, d.start : d.stop], blk.groups)
            z = phi(pairs + self.edge(e))
            edges.append(self.edge_out[kernel_key(blk.kernel)](z).reshape(B, *layout.block_shape(len(edges))))
        cols = [self.node_out[f](h)[..., 0] for f in layout.node_features]
        nodes = torch.stack(cols, dim=-1) * _param_mask(layout).to(h)
        return WeightGraph(layout, nodes, edges)


def _param_mask(layout: Layout) -> torch.Tensor:
    """``(N, F)``: 1 where a node-feature slot holds a parameter element, else 0."""
    m = torch.zeros(layout.num_nodes, len(layout.node_features))
    for p in layout.params:
        if p.where == "nodes":
            for li in p.targets:  # a packed vector (e.g. attention's in_proj_bias) spans several layers
                layer = layout.layers[li]
                m[layer.start : layer.stop, p.feature] = 1
    return m
