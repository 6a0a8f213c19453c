"""The transformer weight space of Transformer-NFN (Tran et al., ICLR 2025), read from a weight graph.

An *encoder block* is an attention (:func:`wgraph.attention_symmetry.attention_parts`) followed by
a feed-forward pair: the one ``Linear`` reading the attention's output neurons (``A``) and the one
reading ``A``'s neurons (``B``). With the right-multiplying convention ``X W`` and a channel axis
``C`` (1 for raw weights), block ``l`` holds

    q, k: (B, C, h, D, d_k)   v: (B, C, h, D, d_v)   o: (B, C, h, d_v, D_o)
    a: (B, C, D_o, D_A)       ba: (B, C, D_A)        b: (B, C, D_A, D_B)     bb: (B, C, D_B)

(``q[:, c, h] = W_Q^h``, ``a = W_A``, ...). Norms between the parts (LayerNorm, with or without
affine parameters) and residual additions are not part of the space: their parameters stay in the
graph. Everything else (embedding, classifier, position tables) is the *rest*, named by
:attr:`TransformerSpec.rest`. :meth:`TransformerSpace.from_graph` and :meth:`TransformerSpace.to_graph`
are exact inverses on the parts they read.

The group acting per block (:class:`BlockAction`, :func:`act`): a head permutation ``sigma``,
``M_h in GL(d_k)``, ``N_h in GL(d_v)``, a permutation ``P_D`` of the attention output (A's input)
and ``P_A`` of the feed-forward hidden neurons:

    q^h <- q^sigma(h) M_h^T      k^h <- k^sigma(h) M_h^{-1}     v^h <- v^sigma(h) N_h
    o^h <- N_h^{-1} o^sigma(h) P_D     a <- P_D^{-1} a P_A     ba <- ba P_A     b <- P_A^{-1} b

``P_D`` preserves the function only where nothing else reads the attention output (no residual
addition): :func:`wgraph.random_symmetry` knows which permutations remain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention_symmetry import AttentionError, AttentionParts, attention_parts, well_conditioned
from ..graph import Layout, WeightGraph

__all__ = ["TransformerError", "EncoderSpec", "TransformerSpec", "TransformerSpace", "BlockAction", "act",
           "random_action", "PARTS"]

#: The tensors of an encoder block, in order.
PARTS = ("q", "k", "v", "o", "a", "ba", "b", "bb")


class TransformerError(AttentionError):
    """A layout whose encoder blocks the transformer weight space cannot represent (the message names
    the part)."""


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder block of a layout: its attention, the feed-forward blocks ``a``, ``b`` (block
    indices) and layers ``a_layer``, ``b_layer``, and the sizes."""

    attention: AttentionParts
    a: int
    b: int
    a_layer: int
    b_layer: int
    dim_in: int
    dim_out: int
    ffn: int
    dim_b: int

    @property
    def heads(self) -> int:
        return self.attention.heads


def _dense_readers(layout: Layout, layer: int) -> list[int]:
    return [i for i, b in enumerate(layout.blocks) if b.src == layer and b.kind != "identity"]


def _bias_slot(layout: Layout, layer: int):
    feats = layout.node_features
    return next((p for p in layout.params if p.where == "nodes" and layer in p.targets
                 and feats[p.feature] == "bias"), None)


@dataclass(frozen=True)
class TransformerSpec:
    """The encoder blocks of a layout and the names of the other state-dict entries (``rest``)."""

    blocks: tuple[EncoderSpec, ...]
    rest: tuple[str, ...]

    @classmethod
    def of(cls, layout: Layout) -> TransformerSpec:
        """Read the encoder blocks; :class:`TransformerError` names the first part that does not fit
        (q/k/v/o biases, cross-attention, a missing or shared feed-forward layer, a missing bias)."""
        blocks, used = [], set()
        for p in attention_parts(layout):
            L = layout.blocks
            if len({L[p.q].src, L[p.k].src, L[p.v].src}) != 1:
                raise TransformerError(f"attention {p.name}: query, key and value read different layers "
                                       "(cross-attention); the transformer weight space has self-attention only")
            for li in (p.q_layer, p.k_layer, p.v_layer, p.o_layer):
                if _bias_slot(layout, li) is not None:
                    raise TransformerError(f"attention {p.name}: the bias {_bias_slot(layout, li).name!r} of "
                                           f"{layout.layers[li].name!r} is not part of the transformer weight space")
            ff = []
            for what, src in (("A", p.o_layer), ("B", None)):
                src = ff[-1][1] if src is None else src
                readers = _dense_readers(layout, src)
                if len(readers) != 1 or L[readers[0]].kind != "dense" or L[readers[0]].kernel != ():
                    names = [L[i].name for i in readers]
                    raise TransformerError(f"attention {p.name}: feed-forward {what} must be the one Linear reading "
                                           f"{layout.layers[src].name!r}, found {names}")
                dst = L[readers[0]].dst
                if _bias_slot(layout, dst) is None:
                    raise TransformerError(f"attention {p.name}: feed-forward {what} ({layout.layers[dst].name!r}) "
                                           "has no bias")
                ff.append((readers[0], dst))
            (a, al), (b, bl) = ff
            size = lambda li: layout.layers[li].size  # noqa: E731
            blocks.append(EncoderSpec(p, a, b, al, bl, size(L[p.q].src), size(p.o_layer), size(al), size(bl)))
            used |= {L[i].param for i in (p.q, p.k, p.v, p.o, a, b)}
            used |= {_bias_slot(layout, al).name, _bias_slot(layout, bl).name}
        floating = lambda s: s.where != "extra" or s.dtype is None or "float" in s.dtype  # noqa: E731
        rest = tuple(s.name for s in layout.params if s.name not in used and s.where != "alias" and floating(s))
        return cls(tuple(blocks), rest)


class TransformerSpace:
    """The encoder-block tensors of ``B`` networks with ``C`` channels: ``blocks[l][part]`` for the
    parts of :data:`PARTS` (shapes in the module docstring)."""

    def __init__(self, spec: TransformerSpec, blocks: list[dict[str, torch.Tensor]]):
        self.spec, self.blocks = spec, blocks

    @classmethod
    def from_graph(cls, graph: WeightGraph, spec: TransformerSpec | None = None) -> TransformerSpace:
        """The view of ``graph`` (one channel)."""
        spec = spec or TransformerSpec.of(graph.layout)
        E, B, lay = graph.edges, graph.batch_size, graph.layout
        out = []
        for s in spec.blocks:
            p, h = s.attention, s.heads
            heads_rows = lambda i, d: E[i].reshape(B, h, d, -1).transpose(-1, -2)  # noqa: E731  (B, h, D, d)
            bias = lambda li: graph.param(_bias_slot(lay, li).name)  # noqa: E731
            t = {
                "q": heads_rows(p.q, p.d_k), "k": heads_rows(p.k, p.d_k), "v": heads_rows(p.v, p.d_v),
                "o": E[p.o].reshape(B, -1, h, p.d_v).permute(0, 2, 3, 1),
                "a": E[s.a].transpose(1, 2), "ba": bias(s.a_layer), "b": E[s.b].transpose(1, 2), "bb": bias(s.b_layer),
            }
            out.append({k: v.unsqueeze(1) for k, v in t.items()})
        return cls(spec, out)

    def to_graph(self, graph: WeightGraph, channel: int = 0) -> WeightGraph:
        """``graph`` with channel ``channel`` of this space written into its encoder blocks (every other
        value, the rest and the norms, kept)."""
        edges, nodes, lay = list(graph.edges), graph.nodes.clone(), graph.layout
        for s, t in zip(self.spec.blocks, self.blocks):
            p = s.attention
            t = {k: v[:, channel].to(graph.dtype) for k, v in t.items()}
            for i, name in ((p.q, "q"), (p.k, "k"), (p.v, "v")):
                edges[i] = t[name].transpose(-1, -2).reshape(edges[i].shape).contiguous()
            edges[p.o] = t["o"].permute(0, 3, 1, 2).reshape(edges[p.o].shape).contiguous()
            edges[s.a], edges[s.b] = t["a"].transpose(1, 2).contiguous(), t["b"].transpose(1, 2).contiguous()
            for li, name in ((s.a_layer, "ba"), (s.b_layer, "bb")):
                slot, l = _bias_slot(lay, li), lay.layers[li]
                nodes[:, l.start : l.stop, slot.feature] = t[name].reshape(-1, l.size)
        return graph.replace(nodes=nodes, edges=edges)

    def map(self, fn) -> TransformerSpace:
        """The space with ``fn(part, tensor)`` applied to every tensor."""
        return TransformerSpace(self.spec, [{k: fn(k, v) for k, v in t.items()} for t in self.blocks])


@dataclass(frozen=True)
class BlockAction:
    """One group element on one encoder block (module docstring): ``sigma`` ``(h,)`` (new head ``i`` is
    old head ``sigma[i]``), ``M`` ``(h, d_k, d_k)``, ``N`` ``(h, d_v, d_v)``, ``p_d`` ``(D_o,)``, ``p_a``
    ``(D_A,)`` (permutations: new index ``i`` is old index ``p[i]``)."""

    sigma: torch.Tensor
    M: torch.Tensor
    N: torch.Tensor
    p_d: torch.Tensor
    p_a: torch.Tensor


def act(space: TransformerSpace, actions: list[BlockAction]) -> TransformerSpace:
    """The space transformed by one :class:`BlockAction` per encoder block."""
    out = []
    for t, g in zip(space.blocks, actions):
        dt = t["q"].dtype
        M, N = g.M.to(dt), g.N.to(dt)
        q, k, v, o = (t[n][:, :, g.sigma] for n in "qkvo")
        out.append({
            "q": q @ M.transpose(-1, -2), "k": k @ torch.linalg.inv(M), "v": v @ N,
            "o": (torch.linalg.inv(N) @ o)[..., g.p_d],
            "a": t["a"][:, :, g.p_d][..., g.p_a], "ba": t["ba"][..., g.p_a], "b": t["b"][:, :, g.p_a], "bb": t["bb"],
        })
    return TransformerSpace(space.spec, out)


def random_action(spec: TransformerSpec, seed: int, factors=("heads", "gl", "pd", "pa")) -> list[BlockAction]:
    """A random :class:`BlockAction` per block using only ``factors`` (the others the identity):
    ``heads`` (sigma), ``gl`` (``M``, ``N``, well-conditioned), ``pd``, ``pa``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in spec.blocks:
        p, h = s.attention, s.heads
        perm = lambda n, on: torch.randperm(n, generator=gen) if on else torch.arange(n)  # noqa: E731
        eye = lambda d: torch.eye(d, dtype=torch.float64).expand(h, d, d)  # noqa: E731
        gl = "gl" in factors
        M = well_conditioned(1, h, p.d_k, gen)[0] if gl else eye(p.d_k)
        N = well_conditioned(1, h, p.d_v, gen)[0] if gl else eye(p.d_v)
        out.append(BlockAction(perm(h, "heads" in factors), M, N, perm(s.dim_out, "pd" in factors),
                               perm(s.ffn, "pa" in factors)))
    return out
