"""Neuron permutation symmetries of weight graphs.

A hidden layer's neurons can be reordered without changing the network's function, provided every
weight that reads or writes them is reordered alike. With the convention used throughout wgraph,
a permutation ``p`` of a neuron space sends new neuron ``i`` to old neuron ``p[i]``:

    nodes'[b, start + i]   = nodes[b, start + p[i]]
    W'[b, o, i, *k]        = W[b, p_dst[o], p_src[i], *k]

Layers tied into one :class:`~wgraph.graph.NeuronSpace` (e.g. by a residual addition) receive the
same ``p``; input and output neurons (non-permutable spaces) keep the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import IncompatibleBatchError, WgraphError
from .graph import Layout, WeightGraph


@dataclass(frozen=True)
class Symmetry:
    """One permutation per neuron space: ``perms[space] = (size,)`` or ``(B, size)`` long tensor.

    Spaces missing from ``perms`` keep the identity. A ``(size,)`` permutation is shared by every
    network of a batch; ``(B, size)`` gives each network its own.
    """

    perms: dict[int, torch.Tensor]

    def node_permutation(self, layout: Layout, batch_size: int) -> torch.Tensor:
        """``(B, N)`` gather index over all nodes: new node ``n`` is old node ``out[b, n]``."""
        idx = torch.arange(layout.num_nodes).expand(batch_size, -1).clone()
        for si, p in self.perms.items():
            space = layout.spaces[si]
            p = _check_perm(p, space.size, batch_size, si)
            for li in space.layers:
                layer = layout.layers[li]
                idx[:, layer.start : layer.stop] = layer.start + p
        return idx

    def inverse(self) -> Symmetry:
        return Symmetry({si: torch.argsort(p, dim=-1) for si, p in self.perms.items()})

    def is_identity(self) -> bool:
        return all(bool((p == torch.arange(p.shape[-1])).all()) for p in self.perms.values())


def _check_perm(p: torch.Tensor, size: int, batch_size: int, si: int) -> torch.Tensor:
    if p.shape[-1] != size or p.dim() not in (1, 2) or (p.dim() == 2 and p.shape[0] != batch_size):
        raise IncompatibleBatchError(
            f"permutation of space {si} has shape {tuple(p.shape)}, expected ({size},) or ({batch_size}, {size})"
        )
    return p.expand(batch_size, size)


def random_symmetry(graph: WeightGraph | Layout, seed: int | None = None, *, per_network: bool = False) -> Symmetry:
    """A random function-preserving neuron permutation of ``graph``.

    Every permutable space with two or more neurons gets a non-identity permutation; input and
    output neurons are never moved. ``per_network=True`` draws an independent permutation for each
    network of the batch (a ``(B, size)`` tensor per space), useful as data augmentation.
    """
    layout = graph if isinstance(graph, Layout) else graph.layout
    B = 1 if isinstance(graph, Layout) else graph.batch_size
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ()).item()))
    perms = {}
    for si, space in enumerate(layout.spaces):
        if not space.permutable or space.size < 2:
            continue
        n = B if per_network else 1
        p = torch.stack([torch.randperm(space.size, generator=gen) for _ in range(n)])
        ident = (p == torch.arange(space.size)).all(dim=1)
        p[ident] = torch.roll(torch.arange(space.size), 1)  # never the identity
        perms[si] = p if per_network else p[0]
    return Symmetry(perms)


def permute(graph: WeightGraph, sym: Symmetry) -> WeightGraph:
    """The graph of the same functions with neurons reordered by ``sym`` (see module docstring)."""
    if not isinstance(sym, Symmetry):
        raise WgraphError(f"permute expects a wgraph.symmetry.Symmetry, got {type(sym).__name__}")
    layout, B = graph.layout, graph.batch_size
    for si in sym.perms:
        if not 0 <= si < len(layout.spaces):
            raise WgraphError(f"permutation given for space {si}, but the layout has {len(layout.spaces)} spaces")
        if not layout.spaces[si].permutable:
            raise WgraphError(
                f"space {si} ({layout.spaces[si].name!r}) is not permutable: it holds input or output neurons"
            )
    idx = sym.node_permutation(layout, B).to(graph.device)
    rows = torch.arange(B, device=graph.device)[:, None]
    nodes = graph.nodes[rows, idx]
    edges = []
    for blk, e in zip(layout.blocks, graph.edges):
        if e is None:
            edges.append(None)
            continue
        s, d = layout.layers[blk.src], layout.layers[blk.dst]
        pd = idx[:, d.start : d.stop] - d.start
        ps = idx[:, s.start : s.stop] - s.start
        edges.append(e[rows[:, :, None], pd[:, :, None], ps[:, None, :]])
    return WeightGraph(layout, nodes, edges)
