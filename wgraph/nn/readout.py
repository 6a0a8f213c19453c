r"""Readouts: from node states to an invariant vector or to per-parameter outputs.

**Invariant readout** (:class:`InvariantReadout`). For node states :math:`h_v` after the last layer:

.. math::

    z = \big[\, \mathrm{pool}_{v:\,k_v = k}\, h_v \;\big]_{k \in \{\mathrm{input, hidden, output}\}}
        \;\big\Vert\; \big[\, \mathrm{pool}_{v \in \ell}\, h_v \big]_{\ell \in \mathrm{layers}}
        \;\big\Vert\; \big[\, h_v \big]_{v\ \mathrm{output\ neurons,\ in\ order}},
    \qquad y = \mathrm{MLP}(z)

Pooling (mean, max, sum, swe; concatenated) over a set of nodes that permutations only reorder is
invariant; output neurons are never permuted, so concatenating their states in order is too.
``"swe"`` is the **sliced-Wasserstein embedding readout**: the set :math:`S = \{h_v\}` of a group
(a node kind, or a layer) is read by a :class:`~wgraph.ot.SlicedWassersteinEmbedding` with its own
learned reference points :math:`z_m` and ``swe_slices`` fixed directions :math:`\theta_l`, then
mapped to ``H`` features,

.. math::

    \mathrm{swe}(S) = W\,\big[\,F^{-1}_{\theta_l \# S}(q_m) - (\theta_l^\top z)_{(m)}\big]_{l,m} + c,
    \qquad q_m = \tfrac{m + 1/2}{M},\ m < M = \texttt{swe\_references},

the quantiles of the projected states minus the sorted projected references (the Monge map from
the references to :math:`S` on each slice): it depends on the set only, not on its order, and
keeps its whole distribution on each slice where mean and max keep one number. An empty group
pools to zeros, as with the other pools. The
per-layer part (``per_layer``) needs every layout to have the same number of layers and the
output part (``output_states``) the same number of output neurons.

**Normalization across networks** (``norm``). Networks of one zoo are alike: their pooled
features :math:`z` differ between networks by a small fraction of their size (about 2 % on a zoo
of INRs fitted from a shared initialization), and an MLP on raw :math:`z` sees nearly one point;
its units switch on or off for every network at once and training stalls. ``norm = "batch"``
standardizes each feature across networks before the MLP,
:math:`\hat z = \gamma \odot (z - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`: with the
batch's statistics while training, and with :math:`(\mu, \sigma^2)` of the whole *training zoo*
at evaluation, recomputed by :meth:`InvariantReadout.set_statistics` (the trainer calls
``model.refresh_statistics`` before every evaluation; running averages would lag behind the
shared part of :math:`z`, which drifts between steps by more than the differences between
networks). ``norm = "zoo"`` is the same map, but always with the training zoo's statistics
(recomputed when the model is fitted and before every evaluation): while training too, so that
a network's features do not depend on the other networks of its batch. ``norm = "center"``
subtracts :math:`\mu` and divides by one scalar, the root mean square of :math:`\sigma` over
features, so that features keep their relative scale. The statistics are buffers, saved in the
``state_dict``. A batch of one network in training mode has no spread of its own: it is
normalized with the stored statistics.

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
from ..ot.embedding import SlicedWassersteinEmbedding
from .encoders import EdgeInput, kernel_key

#: Poolings of a set of node states: "swe" is the sliced-Wasserstein embedding (see the module docstring).
POOLS = ("mean", "max", "sum", "swe")
#: Normalizations of the pooled features across networks (see the module docstring).
READOUT_NORMS = ("none", "batch", "zoo", "center")


class ReadoutError(WgraphError):
    """A readout that cannot be built for the given layouts, or a bad pooling name."""


def _pool(h: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``(B, n, H)`` over ``n`` by mean, max or sum; an empty set pools to zeros."""
    if h.shape[1] == 0:
        return h.new_zeros(h.shape[0], h.shape[2])
    return {"mean": h.mean, "max": h.amax, "sum": h.sum}[how](1)


class NetworkNorm(nn.BatchNorm1d):
    """BatchNorm of invariant features ``(B, D)`` across the networks of a batch: the batch's
    statistics while training (``batch_stats``, by default when the batch has more than one
    network: one network has no spread), the stored ones otherwise, which
    :meth:`set_statistics` sets to those of a whole zoo (running averages lag behind features
    that change every step)."""

    def forward(self, z: torch.Tensor, batch_stats: bool | None = None) -> torch.Tensor:
        if batch_stats is None:
            batch_stats = self.training and z.shape[0] > 1
        if batch_stats or not self.training:
            return super().forward(z)
        return nn.functional.batch_norm(z, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                        self.eps)

    @torch.no_grad()
    def set_statistics(self, z: torch.Tensor) -> None:
        """The stored statistics: mean and (biased) variance of ``z`` ``(B, D)``, e.g. the features
        of every training network."""
        self.running_mean.copy_(z.mean(0))
        self.running_var.copy_(z.var(0, unbiased=False))
        self.num_batches_tracked.zero_()


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
        norm: str = "none",
        swe_slices: int = 16,
        swe_references: int = 8,
    ):
        super().__init__()
        bad = [p for p in pool if p not in POOLS]
        if not pool or bad:
            raise ReadoutError(f"readout pool must be a non-empty list of {list(POOLS)}, got {list(pool)}")
        self.pool, self.per_layer, self.output_states = tuple(pool), per_layer, output_states
        self.n_layers = self._common(layouts, "per_layer", lambda l: len(l.layers)) if per_layer else 0
        self.n_out = self._common(layouts, "output_states", _num_outputs) if output_states else 0
        if norm not in READOUT_NORMS:
            raise ReadoutError(f"readout norm must be one of {list(READOUT_NORMS)}, got {norm!r}")
        groups = len(NODE_KINDS) + self.n_layers
        # "swe": one embedding (own references, H outputs) per pooled group, so the feature size is as
        # with the other pools; its slices and references come from the global generator, like all weights.
        self.swe = nn.ModuleList(
            SlicedWassersteinEmbedding(hidden, swe_slices, swe_references, out_dim=hidden, seed=None)
            for _ in range(groups if "swe" in pool else 0)
        )
        dim = hidden * len(pool) * groups + hidden * self.n_out
        self.norm = NetworkNorm(dim, affine=norm != "center") if norm != "none" else None
        self.center_only, self.zoo_stats = norm == "center", norm == "zoo"
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
        return self.mlp(self.normalize(self.features(layout, h)))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """The pooled features ``z`` ``(B, D)`` normalized across networks (``norm``; identity for "none")."""
        if self.norm is None:
            return z
        batch_stats = self.training and z.shape[0] > 1 and not self.zoo_stats  # one network has no spread
        if not self.center_only:
            return self.norm(z, batch_stats)
        if batch_stats:  # the batch's statistics, as BatchNorm uses them while training
            mean, var = z.mean(0), z.var(0, unbiased=False)
            if self.norm.track_running_stats:
                with torch.no_grad():
                    m = self.norm.momentum
                    self.norm.running_mean.lerp_(mean.detach().to(self.norm.running_mean), m)
                    self.norm.running_var.lerp_(var.detach().to(self.norm.running_var), m)
        else:
            mean, var = self.norm.running_mean.to(z), self.norm.running_var.to(z)
        return (z - mean) / (var.mean() + self.norm.eps).sqrt()

    @torch.no_grad()
    def set_statistics(self, z: torch.Tensor) -> None:
        """Set the evaluation statistics of ``norm`` to the mean and variance of ``z`` ``(B, D)``,
        the pooled features of a whole zoo (typically the training networks)."""
        if self.norm is not None:
            self.norm.set_statistics(z)

    @torch.no_grad()
    def dead_units(self, z: torch.Tensor) -> dict[str, int]:
        """How many hidden units of the MLP are off (pre-activation <= 0, where relu, gelu and silu
        are about zero) for *every* network of ``z`` (pooled features, ``(B, D)``), of how many.
        Such units carry no information about any network; when most are, the readout has
        collapsed. (Units of tanh never switch off: none are counted.)"""
        first = self.mlp[0]
        total = first.out_features
        if self.mlp[1].name == "tanh":
            return {"dead": 0, "total": total}
        pre = first(self.normalize(z))
        return {"dead": int((pre <= 0).all(0).sum()), "total": total}

    def features(self, layout: Layout, h: torch.Tensor) -> torch.Tensor:
        """The pooled features ``(B, D)`` of ``(B, N, H)`` node states (before normalization)."""
        sets = [h[:, layout.nodes_of_kind(kind).to(h.device)] for kind in NODE_KINDS]
        if self.per_layer:
            if len(layout.layers) != self.n_layers:
                raise ReadoutError(
                    f"per-layer readout built for {self.n_layers} layers, graph has {len(layout.layers)}"
                )
            sets += [h[:, layer.start : layer.stop] for layer in layout.layers]
        parts = [self._pool(g, s, p) for g, s in enumerate(sets) for p in self.pool]
        if self.output_states:
            idx = layout.nodes_of_kind("output").to(h.device)
            if len(idx) != self.n_out:
                raise ReadoutError(f"readout built for {self.n_out} output neurons, graph has {len(idx)}")
            parts.append(h[:, idx].reshape(h.shape[0], -1))
        return torch.cat(parts, dim=-1)

    def _pool(self, group: int, h: torch.Tensor, how: str) -> torch.Tensor:
        """Pool the ``(B, n, H)`` states of the ``group``-th set (node kinds, then layers) by ``how``."""
        if how == "swe" and h.shape[1]:
            return self.swe[group](h)
        return _pool(h, how)


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
