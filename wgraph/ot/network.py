r"""Distances between networks of one architecture without an alignment step.

Each hidden layer is a measure over its neurons (:func:`neuron_measure`): neuron :math:`i` is the
point :math:`(w_i, b_i)`, its incoming weights (kernels flattened) and node features, in the
*scale-canonical* form of the network (:func:`canonicalize`), with mass :math:`\lVert w^{out}_i \rVert`
(its outgoing weights there) or uniform. Reordering the layer's neurons reorders the atoms of the
measure and changes nothing, so transport distances between the measures of two networks
(:func:`network_distance`, summed over layers) need no matching of neurons.

**What is invariant.** :func:`canonicalize` fixes the per-neuron scalings a space admits (each
neuron's incoming weights and scaled node features get norm 1 for ``positive`` / ``real`` spaces, a
nonnegative bias for ``sign`` / ``real`` ones), layer after layer from the input, so a network and any
:func:`~wgraph.random_symmetry` of it (``scale=True`` included) have canonical forms that differ by
neuron permutations only. The first hidden layer's points are then invariant as they are. A deeper
layer's incoming coordinates are indexed by the previous layer's neurons, which a permutation
reorders: ``coords="auto"`` sorts each neuron's incoming weights over the source neurons (per kernel
position) where a source can move, a permutation-invariant summary that forgets which source each
weight comes from. ``coords="raw"`` keeps them: invariant only after aligning the previous layer
(weight matching layer by layer with :func:`wgraph.permute`) or when the points come from a
graph-NFN's node embeddings instead of raw weights.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import IncompatibleBatchError, WgraphError
from ..layout import FEATURE_SCALING
from ..symmetry import Symmetry, permute
from .tsw import sliced_wasserstein, tree_sliced_wasserstein

METHODS = ("tsw", "sw", "exact")
COORDS = ("auto", "raw", "sorted")


def _space_neurons(layout, si: int) -> torch.Tensor:
    """``(N,)`` long: the neuron of space ``si`` each node mirrors (every run of the space), -1 elsewhere."""
    out = torch.full((layout.num_nodes,), -1, dtype=torch.long)
    size = layout.spaces[si].size
    for base, inner in layout.space_runs(si):
        out[base : base + size * inner] = torch.arange(size).repeat_interleave(inner)
    return out


def _weighted_blocks(layout):
    """Indices of the blocks whose edges carry weights (dense, grouped, shared)."""
    return [i for i, b in enumerate(layout.blocks) if b.has_tensor or b.kind == "shared"]


def _space_norms(graph, si: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(incoming, outgoing, bias)``, each ``(B, size)``, for the neurons of space ``si``: the squared
    norm of the incoming weights plus the node features that scale with the neuron, the squared norm
    of the outgoing weights, and the sum of those node features (the bias)."""
    layout, B = graph.layout, graph.batch_size
    neuron = _space_neurons(layout, si).to(graph.device)
    size = layout.spaces[si].size
    zeros = lambda: graph.nodes.new_zeros(B, size)  # noqa: E731
    incoming, outgoing, bias = zeros(), zeros(), zeros()
    for i in _weighted_blocks(layout):
        src, dst = layout.block_edge_index(i).to(graph.device)
        sq = graph.block_values(i).pow(2).sum(-1)  # (B, E)
        for total, end in ((incoming, dst), (outgoing, src)):
            hit = neuron[end] >= 0
            if hit.any():
                total.index_add_(1, neuron[end][hit], sq[:, hit])
    hit = neuron >= 0
    for f, name in enumerate(layout.node_features):
        if FEATURE_SCALING.get(name) == 1:
            incoming.index_add_(1, neuron[hit], graph.nodes[:, hit, f].pow(2))
            bias.index_add_(1, neuron[hit], graph.nodes[:, hit, f])
    return incoming, outgoing, bias


def canonicalize(graph):
    """The same networks in scale-canonical form (see the module docstring): for every permutable
    space whose scaling group allows it (:meth:`~wgraph.layout.Layout.space_scaling`), in the order
    of depth, each neuron's incoming weights and scaled node features are rescaled to norm 1
    (``positive``, ``real``) and its bias made nonnegative (``sign``, ``real``), the outgoing weights
    divided alike (:func:`wgraph.permute` with a scaling only): the functions are unchanged. Neurons
    with no incoming weight, or a zero bias for the sign, stay as they are."""
    layout = graph.layout
    spaces = [si for si, sp in enumerate(layout.spaces) if sp.permutable and layout.space_scaling(si) != "none"]
    spaces.sort(key=lambda si: min(layout.layers[li].depth for li in layout.spaces[si].layers))
    for si in spaces:
        group = layout.space_scaling(si)
        incoming, _, bias = _space_norms(graph, si)
        s = torch.ones_like(incoming)
        if group in ("positive", "real"):
            s = torch.where(incoming > 0, incoming.clamp_min(torch.finfo(s.dtype).tiny).rsqrt(), s)
        if group in ("sign", "real"):
            s = torch.where(bias < 0, -s, s)
        graph = permute(graph, Symmetry({}, {si: s}))
    return graph


def measured_layers(layout) -> list[int]:
    """The layers :func:`network_distance` compares: hidden layers of permutable spaces that receive
    weights (a composite layer that only mirrors other neurons, e.g. a flattened feature map, has none)."""
    into = {layout.blocks[i].dst for i in _weighted_blocks(layout)}
    return [li for li, l in enumerate(layout.layers)
            if l.kind == "hidden" and layout.spaces[l.space].permutable and li in into]


def neuron_measure(graph, layer: int, *, index: int = 0, coords: str = "auto",
                   canonical: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The neurons of hidden layer ``layer`` of network ``index`` as a measure: ``(points (n, D),
    masses (n,))`` in float64 (see the module docstring).

    ``points[i]``: neuron ``i``'s incoming weights from every block into the layer (``(in, *kernel)``
    per block; ``coords="sorted"`` sorts them over ``in``, ``"auto"`` only where a source neuron can
    move, ``"raw"`` never), then its node features. ``masses[i]``: the norm of its outgoing weights.
    Both are read from :func:`canonicalize`'s form unless ``canonical=True`` says ``graph`` is in it.
    """
    if coords not in COORDS:
        raise WgraphError(f"coords {coords!r}: expected one of {COORDS}")
    layout = graph.layout
    if layer not in measured_layers(layout):
        l = layout.layers[layer]
        raise WgraphError(
            f"layer {layer} ({l.name!r}, {l.kind}) is not a measured layer: neuron measures are taken of hidden "
            f"layers of permutable spaces that receive weights (here {measured_layers(layout)})"
        )
    g = graph[index : index + 1].to(torch.float64)
    if not canonical:
        g = canonicalize(g)
    l = layout.layers[layer]
    parts = []
    for i in _weighted_blocks(layout):
        blk = layout.blocks[i]
        if blk.dst != layer:
            continue
        rows = g.block_values(i)[0].reshape(l.size, -1, blk.kernel_numel)
        src = layout.layers[blk.src]
        movable = not bool(layout.fixed_nodes[src.start : src.stop].all())
        if coords == "sorted" or (coords == "auto" and movable):
            rows = rows.sort(dim=1).values
        parts.append(rows.flatten(1))
    parts.append(g.nodes[0, l.start : l.stop])
    _, outgoing, _ = _space_norms(g, l.space)
    return torch.cat(parts, dim=1), outgoing[0].sqrt()


def _exact(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W1 with the Euclidean cost: an optimal matching when both measures are uniform on as many
    points (``linear_sum_assignment``), else the transport linear program (``linprog``)."""
    from scipy.optimize import linear_sum_assignment, linprog

    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    c = cost.detach().cpu().numpy()
    n, m = c.shape
    if n == m and bool((a == a[0]).all()) and bool((b == b[0]).all()):
        rows, cols = linear_sum_assignment(c)
        return cost[rows, cols].mean()
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    rhs = np.concatenate([a.detach().cpu().numpy(), b.detach().cpu().numpy()])
    res = linprog(c.ravel(), A_eq=a_eq, b_eq=rhs, bounds=(0, None), method="highs")
    if not res.success:
        raise WgraphError(f"exact transport failed: {res.message}")
    return (cost * torch.as_tensor(res.x.reshape(n, m), dtype=cost.dtype, device=cost.device)).sum()


def layer_distances(g1, g2, method: str = "tsw", *, index1: int = 0, index2: int = 0, masses: str = "uniform",
                    coords: str = "auto", n_trees: int = 64, n_lines: int = 4, kind: str = "concurrent",
                    split: str = "distance", delta: float = 2.0, n_projections: int | None = None,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """``{layer name: distance}`` between the neuron measures of every :func:`measured_layers` layer of
    network ``index1`` of ``g1`` and network ``index2`` of ``g2`` (see :func:`network_distance`)."""
    if method not in METHODS:
        raise WgraphError(f"method {method!r}: expected one of {METHODS}")
    if masses not in ("uniform", "norm"):
        raise WgraphError(f"masses {masses!r}: expected 'uniform' or 'norm'")
    if g1.layout != g2.layout:
        raise IncompatibleBatchError("network_distance compares networks of one architecture: the layouts differ")
    c1 = canonicalize(g1[index1 : index1 + 1].to(torch.float64))
    c2 = canonicalize(g2[index2 : index2 + 1].to(torch.float64))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for li in measured_layers(g1.layout):
        x, a = neuron_measure(c1, li, coords=coords, canonical=True)
        y, b = neuron_measure(c2, li, coords=coords, canonical=True)
        if masses == "uniform" or not (a.sum() > 0 and b.sum() > 0):
            a, b = torch.ones_like(a) / len(a), torch.ones_like(b) / len(b)
        else:
            a, b = a / a.sum(), b / b.sum()
        if method == "tsw":
            d = tree_sliced_wasserstein(x, y, a, b, n_trees=n_trees, n_lines=n_lines, kind=kind, split=split,
                                        delta=delta, generator=gen)
        elif method == "sw":
            d = sliced_wasserstein(x, y, a, b, n_projections=n_projections or n_trees * n_lines, generator=gen)
        else:
            d = _exact(x, y, a, b)
        out[g1.layout.layers[li].name] = d
    return out


def network_distance(g1, g2, method: str = "tsw", **kwargs) -> torch.Tensor:
    r"""A distance between two networks of one architecture that needs no alignment: the sum over
    hidden layers of a transport distance between their neuron measures (:func:`neuron_measure`).

    ``method``: ``"tsw"`` (:func:`~wgraph.ot.tree_sliced_wasserstein`: ``n_trees``, ``n_lines``,
    ``kind``, ``split``, ``delta``), ``"sw"`` (:func:`~wgraph.ot.sliced_wasserstein` with
    ``n_projections``, default ``n_trees * n_lines``) or ``"exact"`` (the exact :math:`W_1`: an
    optimal matching of the neurons, as in weight matching, with uniform masses). ``masses``:
    ``"uniform"`` or ``"norm"`` (outgoing norms). ``index1`` / ``index2`` pick networks of batched
    graphs; ``seed`` fixes the random trees or directions (one draw per layer, shared by both networks).
    Returns a float64 scalar tensor, differentiable in the graphs' tensors.

    ``network_distance(g, g.permute(wgraph.random_symmetry(g, scale=True)))`` is 0 up to rounding.
    """
    return sum(layer_distances(g1, g2, method, **kwargs).values())
