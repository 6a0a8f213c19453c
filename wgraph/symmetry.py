"""Neuron permutation (and scaling) symmetries of weight graphs.

A hidden layer's neurons can be reordered without changing the network's function, provided every
weight that reads or writes them is reordered alike. With the convention used throughout wgraph,
a permutation ``p`` of a neuron space sends new neuron ``i`` to old neuron ``p[i]``:

    nodes'[b, start + i]   = nodes[b, start + p[i]]
    W'[b, o, i, *k]        = W[b, p_dst[o], p_src[i], *k]

Layers tied into one :class:`~wgraph.layout.NeuronSpace` (e.g. by a residual addition) receive the
same ``p``; input and output neurons (non-permutable spaces) keep the identity.

**Scalings.** Where the ops after a layer commute with per-neuron scalings (``NeuronSpace.scaling``:
ReLU-like activations allow positive factors, odd activations such as tanh and sin allow sign
flips, purely linear neurons any nonzero factor), a :class:`Symmetry` may also carry a factor
``s[i]`` per new neuron: ``h'_i = s_i h_{p[i]}``. Neuron ``i``'s incoming weights and bias are
multiplied by ``s_i`` and its outgoing weights divided by ``s_i``:

    bias'[i] = s_i bias[p[i]]        W'[o, i] = s^dst_o W[p_dst[o], p_src[i]] / s^src_i

``random_symmetry(graph, seed, scale=True)`` samples such factors (positive ones where the space
allows ``positive`` or ``real``, ``+-1`` flips where it allows ``sign`` or ``real``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .errors import IncompatibleBatchError, WgraphError
from .layout import FEATURE_SCALING, Layout, feature_power

if TYPE_CHECKING:
    from .graph import WeightGraph

#: The factors each scaling group allows (checked by :func:`permute`).
_ALLOWED = {
    "real": (lambda s: bool((s != 0).all()), "nonzero"),
    "positive": (lambda s: bool((s > 0).all()), "positive"),
    "sign": (lambda s: bool((s.abs() == 1).all()), "+1 or -1"),
}


@dataclass(frozen=True)
class Symmetry:
    """One permutation (and optionally one scaling) per neuron space.

    ``perms[space]``: ``(size,)`` or ``(B, size)`` long tensor; ``scales[space]``: ``(size,)`` or
    ``(B, size)`` floating factors in the *new* neuron order (``h'_i = s_i h_{p[i]}``). Spaces
    missing from a dict keep the identity. A ``(size,)`` tensor is shared by every network of a
    batch; ``(B, size)`` gives each network its own.
    """

    perms: dict[int, torch.Tensor]
    scales: dict[int, torch.Tensor] = field(default_factory=dict)

    def node_permutation(self, layout: Layout, batch_size: int) -> torch.Tensor:
        """``(B, N)`` gather index over all nodes: new node ``n`` is old node ``out[b, n]``."""
        perms = {si: _check(p, layout.spaces[si].size, batch_size, si, "permutation") for si, p in self.perms.items()}
        return layout.node_permutation(perms, batch_size)

    def node_scale(self, layout: Layout, batch_size: int, dtype=torch.float64) -> torch.Tensor:
        """``(B, N)`` factor of every new node (1 for nodes of unscaled spaces)."""
        scales = {si: _check(s, layout.spaces[si].size, batch_size, si, "scaling") for si, s in self.scales.items()}
        return layout.node_scale(scales, batch_size, dtype)

    def inverse(self) -> Symmetry:
        perms = {si: torch.argsort(p, dim=-1) for si, p in self.perms.items()}
        scales = {}
        for si, s in self.scales.items():
            q = perms.get(si)
            if q is not None:
                if q.dim() < s.dim():
                    q = q.expand_as(s)
                s = torch.gather(s.expand_as(q), -1, q)
            scales[si] = 1 / s
        return Symmetry(perms, scales)

    def is_identity(self) -> bool:
        return all(bool((p == torch.arange(p.shape[-1])).all()) for p in self.perms.values()) and all(
            bool((s == 1).all()) for s in self.scales.values()
        )


def _check(p: torch.Tensor, size: int, batch_size: int, si: int, what: str) -> torch.Tensor:
    if p.shape[-1] != size or p.dim() not in (1, 2) or (p.dim() == 2 and p.shape[0] != batch_size):
        raise IncompatibleBatchError(
            f"{what} of space {si} has shape {tuple(p.shape)}, expected ({size},) or ({batch_size}, {size})"
        )
    return p.expand(batch_size, size)


def random_symmetry(
    graph: WeightGraph | Layout, seed: int | None = None, *, per_network: bool = False, scale: bool = False
) -> Symmetry:
    """A random function-preserving neuron permutation of ``graph``.

    Every permutable space with two or more neurons gets a non-identity permutation (attention
    spaces, ``NeuronSpace.heads > 1``: within heads, and of whole heads where they may move);
    input and output neurons are never moved. ``per_network=True`` draws an independent permutation for each
    network of the batch (a ``(B, size)`` tensor per space), useful as data augmentation.

    ``scale=True`` also draws per-neuron factors for every permutable space whose scaling group
    allows them: ``exp(U(-1, 1))`` for ``positive``, the same times a random sign for ``real``,
    random signs (at least one flip) for ``sign``. The permutations are the same as with
    ``scale=False`` and the same seed.
    """
    layout = graph if isinstance(graph, Layout) else graph.layout
    B = 1 if isinstance(graph, Layout) else graph.batch_size
    seed = seed if seed is not None else int(torch.randint(2**31, ()).item())
    gen = torch.Generator().manual_seed(seed)
    n = B if per_network else 1
    perms, head_perms = {}, {}
    for si, space in enumerate(layout.spaces):
        if not space.permutable or space.size < 2:
            continue
        if space.heads > 1:
            p = _head_permutation(space, n, gen, head_perms)
        else:
            p = torch.stack([torch.randperm(space.size, generator=gen) for _ in range(n)])
            ident = (p == torch.arange(space.size)).all(dim=1)
            p[ident] = torch.roll(torch.arange(space.size), 1)  # never the identity
        perms[si] = p if per_network else p[0]
    scales = {}
    if scale:
        sgen = torch.Generator().manual_seed(seed + 7919)
        for si, space in enumerate(layout.spaces):
            group = layout.space_scaling(si)
            if not space.permutable or group not in _ALLOWED:
                continue
            s = torch.ones(n, space.size, dtype=torch.float64)
            if group in ("positive", "real"):
                s = torch.exp(2 * torch.rand(n, space.size, generator=sgen, dtype=torch.float64) - 1)
            if group in ("sign", "real"):
                flips = torch.randint(2, (n, space.size), generator=sgen).bool()
                flips[~flips.any(dim=1), 0] = True  # at least one flip
                s = torch.where(flips, -s, s)
            scales[si] = s if per_network else s[0]
    return Symmetry(perms, scales)


def _head_permutation(space, n: int, gen: torch.Generator, head_perms: dict) -> torch.Tensor:
    """``(n, size)`` permutation of an attention space: new head ``h`` is old head ``sigma[h]``
    (shared by the spaces of one head group; the identity if heads stay in place), and within it
    the dimensions follow their own random permutation (non-trivial when a head has two or more)."""
    H, D = space.heads, space.size // space.heads
    if space.head_group >= 0:
        if space.head_group not in head_perms:
            head_perms[space.head_group] = torch.stack([torch.randperm(H, generator=gen) for _ in range(n)])
        sigma = head_perms[space.head_group]
    else:
        sigma = torch.arange(H).expand(n, H)
    within = torch.stack([torch.stack([torch.randperm(D, generator=gen) for _ in range(H)]) for _ in range(n)])
    if D >= 2:
        ident = (within == torch.arange(D)).all(dim=(1, 2))
        within[ident, 0] = torch.roll(torch.arange(D), 1)
    return (sigma[:, :, None] * D + within).reshape(n, H * D)


def permute(graph: WeightGraph, sym: Symmetry) -> WeightGraph:
    """The graph of the same functions with neurons reordered (and rescaled) by ``sym``
    (see the module docstring)."""
    if not isinstance(sym, Symmetry):
        raise WgraphError(f"permute expects a wgraph.symmetry.Symmetry, got {type(sym).__name__}")
    layout, B = graph.layout, graph.batch_size
    for si in list(sym.perms) + list(sym.scales):
        if not 0 <= si < len(layout.spaces):
            raise WgraphError(f"symmetry given for space {si}, but the layout has {len(layout.spaces)} spaces")
        if not layout.spaces[si].permutable:
            raise WgraphError(
                f"space {si} ({layout.spaces[si].name!r}) is not permutable: it holds input or output neurons"
            )
    idx = sym.node_permutation(layout, B).to(graph.device)
    out = graph.reindex(idx)
    if sym.scales:
        out = _rescale(out, sym)
    return out


def _rescale(graph: WeightGraph, sym: Symmetry) -> WeightGraph:
    """Multiply incoming weights and biases of scaled neurons by ``s``, outgoing weights by ``1/s``."""
    layout, B = graph.layout, graph.batch_size
    for si, s in sym.scales.items():
        space = layout.spaces[si]
        ok, what = _ALLOWED.get(space.scaling, (lambda s: False, "no"))
        if not s.is_floating_point() or not ok(s):
            raise WgraphError(
                f"space {si} ({space.name!r}) allows {what} scaling factors (scaling group {space.scaling!r}), "
                f"got {s.flatten()[:8].tolist()}"
            )
    s_node = sym.node_scale(layout, B, graph.dtype).to(graph.device)
    feats = layout.node_features
    scaled = (s_node != 1).any(dim=0).cpu()
    for p in layout.params:
        if p.where == "nodes" and feats[p.feature] not in FEATURE_SCALING:
            for li in p.targets:
                l = layout.layers[li]
                if scaled[l.start : l.stop].any():
                    raise WgraphError(
                        f"cannot scale the neurons of layer {l.name!r}: node feature {feats[p.feature]!r} "
                        f"({p.name}) has no scaling rule"
                    )
    nodes = graph.nodes.clone()
    for f, name in enumerate(feats):  # a feature that scales with its neuron: s ** power
        if feature_power(name):
            nodes[..., f] *= s_node ** feature_power(name)
    edges = []
    for i, (blk, e) in enumerate(zip(layout.blocks, graph.edges)):
        src, dst = layout.block_edge_index(i).to(graph.device)
        if not (scaled[src.cpu()].any() or scaled[dst.cpu()].any()):
            edges.append(e)
            continue
        factor = s_node[:, dst] / s_node[:, src]
        if e is None:
            if not bool((factor == 1).all()):
                raise WgraphError(f"block {blk.name!r} ({blk.kind}) joins neurons with different scaling factors")
            edges.append(None)
            continue
        f = factor.view(B, *e.shape[1:3], *(1,) * (e.dim() - 3))
        edges.append(e * f)
    return graph.replace(nodes=nodes, edges=edges)
