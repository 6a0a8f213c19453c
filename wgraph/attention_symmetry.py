"""The general-linear symmetries of multi-head attention, on weight graphs.

With the right-multiplying convention ``X W`` (``W_Q^h, W_K^h``: ``D x d_k``, ``W_V^h``:
``D x d_v``, ``W_O^h``: ``d_v x D``), head ``h`` computes
``softmax(X W_Q^h (X W_K^h)^T / sqrt(d_k)) X W_V^h W_O^h``, which only reads the products
``W_Q^h W_K^hT`` and ``W_V^h W_O^h``. So for any invertible ``M_h`` (``d_k x d_k``) and ``N_h``
(``d_v x d_v``)

    W_Q^h <- W_Q^h M_h^T     W_K^h <- W_K^h M_h^{-1}     W_V^h <- W_V^h N_h     W_O^h <- N_h^{-1} W_O^h

preserves the function (query, key and value biases move with their weights: ``b_Q^h M_h^T``,
``b_K^h M_h^{-1}``, ``b_V^h N_h``). Together with the permutations of
:func:`wgraph.random_symmetry` (whole heads, the hidden layers around them) this is the symmetry
group of Transformer-NFN (Tran et al., ICLR 2025); the within-head permutations are the
permutation matrices among the ``M_h`` and ``N_h``.

In a graph, Linear weights are stored ``(out, in)``: head ``h``'s rows of the query weight are
``(W_Q^h)^T``, so the action is ``rows_Q <- M rows_Q``, ``rows_K <- M^{-T} rows_K``,
``rows_V <- N^T rows_V`` and ``cols_O <- cols_O N^{-T}``.

:func:`attention_parts` finds the attentions of a layout (from the ``attn:`` block pairing query
and key dimensions), :func:`apply_gl` applies matrices to a graph, :func:`random_attention_symmetry`
draws a function-preserving element (well-conditioned ``M_h``, ``N_h`` composed with a random
permutation), and :func:`canonicalize_attention` picks one point of each orbit of the ``M_h``,
``N_h`` (see its docstring for where that choice is discontinuous).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import WgraphError
from .layout import Layout
from .symmetry import Symmetry, random_symmetry

if TYPE_CHECKING:
    from .graph import WeightGraph

__all__ = [
    "AttentionError", "AttentionParts", "AttentionSymmetry", "attention_parts", "apply_gl", "random_gl",
    "random_attention_symmetry", "canonicalize_attention", "well_conditioned",
]


class AttentionError(WgraphError):
    """An attention block whose general-linear symmetry cannot be applied (the message says why)."""


@dataclass(frozen=True)
class AttentionParts:
    """One attention of a layout: the dense blocks writing query, key and value and the output
    projection reading the values (block indices), the layers they write, and the head sizes.

    ``biases``: the query / key / value layers that carry a ``bias`` node feature."""

    name: str
    q: int
    k: int
    v: int
    o: int
    q_layer: int
    k_layer: int
    v_layer: int
    o_layer: int
    heads: int
    d_k: int
    d_v: int
    biases: tuple[int, ...] = ()


def _writers(layout: Layout, layer: int) -> list[int]:
    return [i for i, b in enumerate(layout.blocks) if b.dst == layer and b.kind != "identity"]


def _linear(layout: Layout, bi: int, what: str, where: str) -> int:
    blk = layout.blocks[bi]
    if blk.kind != "dense" or blk.kernel != ():
        raise AttentionError(f"attention {where}: the {what} block {blk.name!r} is {blk.kind} with kernel "
                             f"{blk.kernel}, not a linear map")
    return bi


def _sole_writer(layout: Layout, layer: int, what: str, where: str) -> int:
    w = _writers(layout, layer)
    if len(w) != 1:
        names = [layout.blocks[i].name for i in w]
        raise AttentionError(f"attention {where}: the {what} layer {layout.layers[layer].name!r} is written by "
                             f"{len(w)} blocks {names}, expected one linear map")
    return _linear(layout, w[0], what, where)


def attention_parts(layout: Layout) -> list[AttentionParts]:
    """Every attention of ``layout``, in layer order: found from the ``attn:`` identity block from
    key to query that the converter writes for each attention (:mod:`wgraph.convert.rules.attention`).

    Raises :class:`AttentionError` naming the part where an attention is not four linear maps
    (q, k, v written by one ``Linear`` each, one ``Linear`` reading v), where q, k or v is read by
    anything but the attention, or where a node parameter other than a bias sits on q, k or v."""
    out = []
    feats = layout.node_features
    for blk in layout.blocks:
        if blk.kind != "identity" or not blk.name.startswith("attn:"):
            continue
        where, ql, kl = blk.name[5:], blk.dst, blk.src
        q, k = _sole_writer(layout, ql, "query", where), _sole_writer(layout, kl, "key", where)
        qspace = layout.layers[ql].space
        heads, group = layout.spaces[qspace].heads, layout.spaces[qspace].head_group
        same = lambda s: s.heads == heads and s.head_group == group  # noqa: E731  the q space's head group
        cands = [
            li for li, l in enumerate(layout.layers)
            if l.space != qspace and same(layout.spaces[l.space])
            and any(layout.blocks[b].src == layout.blocks[q].src for b in _writers(layout, li))
        ]
        if len(cands) != 1:
            raise AttentionError(f"attention {where}: cannot tell its value layer ({len(cands)} candidates "
                                 f"{[layout.layers[li].name for li in cands]})")
        vl = cands[0]
        v = _sole_writer(layout, vl, "value", where)
        readers = {li: [i for i, b in enumerate(layout.blocks) if b.src == li] for li in (ql, kl, vl)}
        if readers[ql] or [layout.blocks[i].name for i in readers[kl]] != [blk.name] or len(readers[vl]) != 1:
            extra = [layout.blocks[i].name for li in (ql, kl, vl) for i in readers[li] if layout.blocks[i] is not blk]
            raise AttentionError(f"attention {where}: its q/k/v layers are read by blocks {extra}; only one "
                                 "output projection may read the values")
        o = _linear(layout, readers[vl][0], "output", where)
        biases = []
        for p in layout.params:
            if p.where == "nodes" and set(p.targets) & {ql, kl, vl}:
                if feats[p.feature] != "bias":
                    raise AttentionError(f"attention {where}: node parameter {p.name!r} ({feats[p.feature]}) on its "
                                         "query, key or value neurons has no general-linear action")
                biases += [li for li in p.targets if li in (ql, kl, vl)]
        size_k, size_v = layout.layers[ql].size, layout.layers[vl].size
        out.append(AttentionParts(where, q, k, v, o, ql, kl, vl, layout.blocks[o].dst, heads, size_k // heads,
                                  size_v // heads, tuple(sorted(set(biases)))))
    return out


def _per_network(m: torch.Tensor, B: int, dtype, device) -> torch.Tensor:
    return (m if m.dim() == 4 else m.expand(B, *m.shape)).to(dtype=dtype, device=device)


def _left(w: torch.Tensor, mats: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, heads * d, ...)`` rows grouped by head, each group left-multiplied by ``mats[:, h]``."""
    B, rest = w.shape[0], w.shape[2:]
    out = torch.einsum("bhij,bhjn->bhin", mats, w.reshape(B, heads, w.shape[1] // heads, -1))
    return out.reshape(B, -1, *rest)


def apply_gl(graph: WeightGraph, gl: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> WeightGraph:
    """The graph with attention ``a`` (an index into :func:`attention_parts`) transformed by
    ``gl[a] = (M, N)``: ``M`` of shape ``(heads, d_k, d_k)`` or ``(B, heads, d_k, d_k)``, ``N`` likewise
    with ``d_v`` (see the module docstring). The function is unchanged for invertible ``M``, ``N``."""
    parts = attention_parts(graph.layout)
    edges, nodes = list(graph.edges), graph.nodes.clone()
    B, dt, dev = graph.batch_size, graph.dtype, graph.device
    bias = graph.layout.node_features.index("bias") if "bias" in graph.layout.node_features else -1
    for a, (M, N) in gl.items():
        if not 0 <= a < len(parts):
            raise AttentionError(f"GL given for attention {a}, but the layout has {len(parts)} attentions")
        p = parts[a]
        M, N = _per_network(M, B, dt, dev), _per_network(N, B, dt, dev)
        if M.shape[1:] != (p.heads, p.d_k, p.d_k) or N.shape[1:] != (p.heads, p.d_v, p.d_v):
            raise AttentionError(f"attention {p.name}: M must be ({p.heads}, {p.d_k}, {p.d_k}) and N ({p.heads}, "
                                 f"{p.d_v}, {p.d_v}), got {tuple(M.shape)} and {tuple(N.shape)}")
        maps = {p.q_layer: M, p.k_layer: torch.linalg.inv(M).transpose(-1, -2), p.v_layer: N.transpose(-1, -2)}
        for bi, li in ((p.q, p.q_layer), (p.k, p.k_layer), (p.v, p.v_layer)):
            edges[bi] = _left(edges[bi], maps[li], p.heads)
            if li in p.biases:
                l = graph.layout.layers[li]
                b = nodes[:, l.start : l.stop, bias, None]
                nodes[:, l.start : l.stop, bias] = _left(b, maps[li], p.heads)[..., 0]
        # cols_O <- cols_O N^{-T}: transpose, left-multiply by N^{-1}, transpose back
        edges[p.o] = _left(edges[p.o].transpose(1, 2), torch.linalg.inv(N), p.heads).transpose(1, 2)
    return graph.replace(nodes=nodes, edges=edges)


def well_conditioned(n: int, heads: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, heads, d, d)`` matrices ``U diag(exp(u)) V^T``, ``U``, ``V`` random orthogonal and
    ``u ~ U(-1, 1)``: condition number at most ``e^2``."""
    def orthogonal():
        q, r = torch.linalg.qr(torch.randn(n, heads, d, d, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]

    s = torch.exp(2 * torch.rand(n, heads, d, generator=gen, dtype=torch.float64) - 1)
    return orthogonal() @ torch.diag_embed(s) @ orthogonal().transpose(-1, -2)


def random_gl(layout: Layout, seed: int, *, batch_size: int | None = None) -> dict[int, tuple]:
    """Well-conditioned random ``(M, N)`` for every attention of ``layout`` (shared by the networks
    of a batch, or one per network with ``batch_size``), for :func:`apply_gl`."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for a, p in enumerate(attention_parts(layout)):
        M, N = (well_conditioned(batch_size or 1, p.heads, d, gen) for d in (p.d_k, p.d_v))
        out[a] = (M, N) if batch_size else (M[0], N[0])
    return out


@dataclass(frozen=True)
class AttentionSymmetry:
    """A neuron permutation (:class:`~wgraph.symmetry.Symmetry`, heads included) followed by the
    general-linear maps ``gl`` of :func:`apply_gl`."""

    perm: Symmetry
    gl: dict[int, tuple[torch.Tensor, torch.Tensor]]

    def apply(self, graph: WeightGraph) -> WeightGraph:
        return apply_gl(graph.permute(self.perm), self.gl)


def random_attention_symmetry(
    graph: WeightGraph, seed: int | None = None, *, per_network: bool = False, scale: bool = False
) -> AttentionSymmetry:
    """A random function-preserving element of the permutation x attention-GL group of ``graph``:
    :func:`~wgraph.random_symmetry` (same arguments) composed with :func:`random_gl`."""
    seed = seed if seed is not None else int(torch.randint(2**31, ()).item())
    perm = random_symmetry(graph, seed, per_network=per_network, scale=scale)
    return AttentionSymmetry(perm, random_gl(graph.layout, seed + 104729, batch_size=graph.batch_size if per_network
                                             else None))


def _balanced_factors(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``left`` ``(..., d, D)`` and ``right`` ``(..., d, D')`` (stored rows), the canonical pair with
    the same ``left^T right``: rows ``S^{1/2} U^T`` and ``S^{1/2} V^T`` from the SVD
    ``left^T right = U S V^T`` truncated to ``d`` terms, each pair of singular vectors signed so that
    the entry of largest magnitude of ``U``'s column is positive."""
    d = left.shape[-2]
    U, S, Vh = torch.linalg.svd(left.transpose(-1, -2) @ right)
    U, S, Vh = U[..., :d], S[..., :d], Vh[..., :d, :]
    pick = U.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(torch.gather(U, -2, pick))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    root = S.sqrt()[..., :, None]
    return root * (U * sign).transpose(-1, -2), root * (Vh * sign.transpose(-1, -2))


def canonicalize_attention(graph: WeightGraph) -> WeightGraph:
    """The same networks with every head's ``(W_Q^h, W_K^h)`` and ``(W_V^h, W_O^h)`` replaced by a
    canonical factorization of their products: ``W_Q^h W_K^hT = U S V^T`` (SVD, ``d_k`` terms) gives
    ``W_Q^h = U S^{1/2}``, ``W_K^h = V S^{1/2}``, and likewise ``W_V^h W_O^h`` gives ``W_V^h``,
    ``W_O^h``. The products, so the function, are unchanged (to rounding), and two graphs in one orbit
    of the ``M_h``, ``N_h`` of :func:`apply_gl` map to the same graph: a permutation-invariant model
    composed with this is invariant to the whole group.

    Discontinuous (the canonical point jumps while the products move continuously) where two
    singular values of a head's product coincide (their singular vectors may rotate into each
    other), where a head's product has rank below ``d`` (the extra singular vectors are arbitrary),
    and where the two largest-magnitude entries of a singular vector tie (the sign choice flips).
    Zoos of trained networks almost never sit exactly there, but near such points the canonical
    weights change fast. Query / key / value biases are refused: they would need the ``M_h`` itself.
    """
    parts = attention_parts(graph.layout)
    edges = list(graph.edges)
    for p in parts:
        if p.biases:
            names = [graph.layout.layers[li].name for li in p.biases]
            raise AttentionError(f"canonicalize_attention: attention {p.name} has query/key/value biases on {names}")
        B, D = graph.batch_size, edges[p.q].shape[-1]
        q, k = (edges[i].reshape(B, p.heads, p.d_k, D) for i in (p.q, p.k))
        v = edges[p.v].reshape(B, p.heads, p.d_v, D)
        o = edges[p.o].reshape(B, -1, p.heads, p.d_v).permute(0, 2, 3, 1)  # (B, h, d_v, D_out)
        q, k = _balanced_factors(q, k)
        v, o = _balanced_factors(v, o)
        edges[p.q], edges[p.k] = q.reshape(edges[p.q].shape), k.reshape(edges[p.k].shape)
        edges[p.v] = v.reshape(edges[p.v].shape)
        edges[p.o] = o.permute(0, 3, 1, 2).reshape(edges[p.o].shape)
    return graph.replace(edges=edges)
