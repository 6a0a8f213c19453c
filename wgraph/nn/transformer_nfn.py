"""Transformer-NFN (Tran et al., "Equivariant Neural Functional Networks for Transformers", ICLR 2025):
layers equivariant to the maximal symmetry group of each encoder block (head permutations, ``GL(d_k)``
and ``GL(d_v)`` per head, ``P_D``, ``P_A``; :mod:`wgraph.nn.transformer_space`), an invariant layer,
and the model of preset type ``transformer-nfn``.

**Equivariant layer** (:class:`TransformerLinear`, ``C -> E`` channels, one set of weights per encoder
block; written with the block's tensors ``q, k, v, o, a, ba, b, bb`` and the invariant products
``S_QK = sum_h W_Q^h W_K^hT`` (``D x D``) and ``S_VO = sum_h W_V^h W_O^h`` (``D x D_o``)):

* ``q'_e^h = sum_c L^Q_ec q_c^h`` (``L^Q_ec`` a learned ``D x D`` map acting on the rows), likewise
  ``k'`` and ``v'``: only left maps and channel mixing commute with ``q -> q M^T`` for every ``M``;
* ``o'_e^h = sum_c w_ec o_c^h + w'_ec rowmean(o_c^h) 1^T``: the rows carry ``N_h^{-1}``, the columns
  ``P_D``, so only the identity and the row mean broadcast along the row survive;
* ``a', ba', b', bb'``: every term the permutations ``P_D`` (rows of ``a``, columns of ``S_VO``) and
  ``P_A`` (columns of ``a``, ``ba``, rows of ``b``) allow, linear in ``a, ba, b, bb`` and in the
  invariants: ``a`` itself, its row and column means, the column-keeping contraction of ``S_VO``,
  the row-keeping contraction of ``b`` over its fixed output index, ``ba``, and for every part a
  map of the *invariant vector* ``z`` (``S_QK``, the row means of ``S_VO``, the means of ``a``,
  ``ba``, the column means of ``b``, ``bb``) broadcast along the permuted indices; ``b`` and ``bb``,
  whose output index is fixed, get a separate weight per output.

The layer is quadratic (through ``S_QK``, ``S_VO``); a nonlinearity acts only on ``a, ba, b, bb``,
where it commutes with permutations; ``q, k, v, o`` stay linear, as any pointwise function would
break ``GL``.

**Invariant layer** (:class:`TransformerInvariant`): moments of the invariants per block and
channel, and per-head terms that pair each query/key head with its value/output head (the sums
over heads alone cannot). The parameters outside the encoder blocks (embedding, classifier: the
*rest*), which the group does not move, enter as the moments of each tensor (``rest = "stats"``),
every value standardized (``"flatten"``, as the published model's embedding branch), or not at
all. The invariant features are standardized across networks (``norm = "batch"``) before the
MLP. The model is invariant to the group of every block; it is not, in general, invariant to
the wider permutations of wgraph's residual-stream spaces (the equivariant layers' left maps and
``invariant = "entries"`` read the rows of ``q``).

Inputs are divided by one scale per block and part (the root mean square over the training zoo,
:meth:`TransformerNFN.fit_normalization`): a scalar per tensor commutes with the whole group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, option
from ..errors import ConfigError
from ..graph import Layout, WeightGraph
from ..support import Support
from .layouts import model_layout
from .readout import NetworkNorm
from .transformer_space import PARTS, EncoderSpec, TransformerError, TransformerSpace, TransformerSpec

__all__ = ["TransformerNFNConfig", "TransformerLinear", "TransformerInvariant", "TransformerNFN", "from_config"]

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class TransformerNFNConfig(Config):
    """``type = "transformer-nfn"``: the keys of :class:`TransformerNFN`."""

    hidden: int = option(16, "channels of the equivariant layers", minimum=1)
    layers: int = option(2, "equivariant layers (0: the invariant layer reads the weights directly)", minimum=0)
    activation: str = option("relu", "nonlinearity on the feed-forward parts between layers", choices=tuple(ACTS))
    head_hidden: int = option(64, "width of the MLP after the invariant layer", minimum=1)
    head_layers: int = option(2, "hidden layers of that MLP", minimum=1)
    invariant: str = option("pooled", "invariant layer: 'pooled' (means and mean squares of every invariant, "
                            "per-head statistics through a small MLP summed over heads) or 'entries' (every entry "
                            "of S_QK, learned head pairings)", choices=("pooled", "entries"))
    rest: str = option("stats", "parameters outside the encoder blocks: 'stats' (mean, mean square and max |x| of "
                       "each tensor), 'flatten' (standardized, into the head) or 'none'",
                       choices=("stats", "flatten", "none"))
    norm: str = option("batch", "'batch': standardize the invariant features across networks (BatchNorm, "
                       "statistics of the training zoo at evaluation) or 'none'", choices=("batch", "none"))
    out_dim: int = option(1, "outputs", minimum=1)
    dropout: float = option(0.0, "dropout after each hidden layer of the head", minimum=0.0, below=1.0)


def _weight(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(max(fan_in, 1)))


def invariants(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``S_QK`` ``(B, C, D, D)``, ``S_VO`` ``(B, C, D, D_o)`` and the invariant vector ``z`` ``(B, F)``
    of one block's tensors (see the module docstring)."""
    sqk = torch.einsum("bchik,bchjk->bcij", t["q"], t["k"])
    svo = torch.einsum("bchik,bchkj->bcij", t["v"], t["o"])
    B = sqk.shape[0]
    z = [sqk, svo.mean(-1), t["a"].mean((-1, -2)), t["ba"].mean(-1), t["b"].mean(-2), t["bb"]]
    return sqk, svo, torch.cat([x.reshape(B, -1) for x in z], dim=1)


def _z_size(s: EncoderSpec, c: int) -> int:
    return c * (s.dim_in * s.dim_in + s.dim_in + 2 + 2 * s.dim_b)


class TransformerLinear(nn.Module):
    """The equivariant layer of one encoder block, ``c_in -> c_out`` channels (module docstring)."""

    def __init__(self, spec: EncoderSpec, c_in: int, c_out: int):
        super().__init__()
        C, E, D, Db = c_in, c_out, spec.dim_in, spec.dim_b
        self.dim_b = Db
        self.left = nn.ParameterDict({n: _weight(E, C, D, D, fan_in=C * D) for n in "qkv"})
        self.o = _weight(2, E, C, fan_in=2 * C)
        self.a = _weight(6, E, C, fan_in=6 * C)  # a, row mean, column mean, ba; into ba: column mean of a, ba
        self.a_vo = _weight(E, C, D, fan_in=C * D)
        self.a_b = _weight(2, E, C, Db, fan_in=2 * C * Db)  # b contracted over its output, into a and ba
        self.b = _weight(3, E, Db, C, fan_in=3 * C)  # column mean of a, ba: per output; b mixed over outputs below
        self.b_b = _weight(E, C, Db, Db, fan_in=C * Db)
        nz = _z_size(spec, C)
        self.z = nn.Linear(nz, E * (2 + 2 * Db))  # broadcast into a, ba, b (per output), bb (per output)

    def forward(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sqk, svo, z = invariants(t)
        B, E, Db = z.shape[0], self.o.shape[1], self.dim_b
        za, zba, zb, zbb = self.z(z).split([E, E, E * Db, E * Db], dim=1)
        out = {n: torch.einsum("ecij,bchjk->behik", self.left[n], t[n]) for n in "qkv"}
        o = t["o"]
        out["o"] = (torch.einsum("ec,bchkj->behkj", self.o[0], o)
                    + torch.einsum("ec,bchk->behk", self.o[1], o.mean(-1))[..., None])
        a, ba, b = t["a"], t["ba"], t["b"]
        a_rows, a_cols = a.mean(-1), a.mean(-2)  # (B, C, D_o), (B, C, D_A)
        b_a = torch.einsum("ecq,bcaq->bea", self.a_b[0], b)
        w = self.a
        out["a"] = (
            torch.einsum("ec,bcja->beja", w[0], a)
            + (torch.einsum("ec,bcj->bej", w[1], a_rows) + torch.einsum("ecp,bcpj->bej", self.a_vo, svo))[..., None]
            + (torch.einsum("ec,bca->bea", w[2], a_cols) + torch.einsum("ec,bca->bea", w[3], ba) + b_a)[:, :, None]
            + za[:, :, None, None]
        )
        out["ba"] = (torch.einsum("ec,bca->bea", w[4], a_cols) + torch.einsum("ec,bca->bea", w[5], ba)
                     + torch.einsum("ecq,bcaq->bea", self.a_b[1], b) + zba[:, :, None])
        out["b"] = (
            torch.einsum("eoc,bca->beao", self.b[0], a_cols) + torch.einsum("eoc,bca->beao", self.b[1], ba)
            + torch.einsum("ecoq,bcaq->beao", self.b_b, b) + zb.view(B, E, 1, Db)
        )
        out["bb"] = zbb.view(B, E, Db) + torch.einsum("eoc,bco->beo", self.b[2], t["bb"])
        return out


def _moments(x: torch.Tensor, dims) -> list[torch.Tensor]:
    """Mean and mean square of ``x`` over ``dims``."""
    return [x.mean(dims), (x * x).mean(dims)]


class TransformerInvariant(nn.Module):
    """The invariant layer, ``(B, F)`` features of every block and channel.

    ``mode = "entries"``: ``S_QK`` entry by entry, the mean and mean square of ``S_VO`` over its
    permuted columns, mean and mean square of ``a`` and ``ba``, the column mean and mean square of
    ``b``, ``bb``, and ``pairs`` head-pairing features ``sum_h (U vec W_Q^h W_K^hT) * (V rowmean
    W_V^h W_O^h)`` (learned ``U``, ``V``).

    ``mode = "pooled"``: the mean and mean square of ``S_QK``, of its diagonal, of ``S_VO``, ``a``,
    ``ba``, ``b`` and ``bb`` (14 per channel), and ``sum_h phi(s_h)``, ``phi`` a two-layer MLP of
    the same moments of ``W_Q^h W_K^hT``, its diagonal and ``W_V^h W_O^h`` of head ``h``. Pooled
    over the residual dimension too, so invariant to ``P_D`` as well; few features (the entries of
    ``S_QK`` are 256 per block and channel at ``D = 16``, more than a zoo of 640 networks can fit).

    The sums over heads alone (as in the published layers) cannot tell which query/key head feeds
    which value/output head: exchanging the q/k weights of two heads changes the function but
    neither ``S_QK`` nor ``S_VO``; the per-head terms pair them.
    """

    def __init__(self, spec: TransformerSpec, c: int, pairs: int, mode: str = "pooled"):
        super().__init__()
        self.mode = mode
        if mode == "entries":
            self.qk = nn.ModuleList(nn.Linear(c * s.dim_in * s.dim_in, pairs) for s in spec.blocks)
            self.vo = nn.ModuleList(nn.Linear(c * s.dim_in, pairs) for s in spec.blocks)
            self.width = sum(c * (s.dim_in * s.dim_in + 2 * s.dim_in + 4 + 3 * s.dim_b) + pairs for s in spec.blocks)
        else:
            self.per_head = nn.ModuleList(
                nn.Sequential(nn.Linear(6 * c, pairs), nn.ReLU(), nn.Linear(pairs, pairs)) for _ in spec.blocks
            )
            self.width = len(spec.blocks) * (14 * c + pairs)

    def forward(self, blocks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        feats = []
        for i, t in enumerate(blocks):
            sqk, svo, _ = invariants(t)
            qk_h = torch.einsum("bchik,bchjk->bhcij", t["q"], t["k"])  # (B, h, C, D, D)
            if self.mode == "entries":
                parts = [sqk, *_moments(svo, -1), *_moments(t["a"], (-1, -2)), *_moments(t["ba"], -1),
                         *_moments(t["b"], -2), t["bb"]]
                vo_h = torch.einsum("bchik,bchkj->bhci", t["v"], t["o"]).flatten(2) / t["o"].shape[-1]
                feats += [x.flatten(1) for x in parts] + [(self.qk[i](qk_h.flatten(2)) * self.vo[i](vo_h)).sum(1)]
                continue
            all_dims, last = (-1, -2), -1
            diag = torch.diagonal(sqk, dim1=-2, dim2=-1)
            feats += [*_moments(sqk, all_dims), *_moments(diag, last), *_moments(svo, all_dims),
                      *_moments(t["a"], all_dims), *_moments(t["ba"], last), *_moments(t["b"], all_dims),
                      *_moments(t["bb"], last)]
            vo_h = torch.einsum("bchik,bchkj->bhcij", t["v"], t["o"])
            head = torch.cat([*_moments(qk_h, all_dims), *_moments(torch.diagonal(qk_h, dim1=-2, dim2=-1), last),
                              *_moments(vo_h, all_dims)], dim=-1)  # (B, h, 6 C)
            feats.append(self.per_head[i](head).sum(1))
        return torch.cat(feats, dim=1)


class TransformerNFN(nn.Module):
    """Equivariant layers -> invariant layer (+ the rest) -> MLP (module docstring); built for one layout."""

    def __init__(self, layout, config: dict | TransformerNFNConfig | None = None):
        super().__init__()
        if not isinstance(config, TransformerNFNConfig):
            config = TransformerNFNConfig.from_dict({k: v for k, v in (config or {}).items() if k != "type"})
        self.config = cfg = config
        self.layout = model_layout(layout, "TransformerNFN")
        self.spec = TransformerSpec.of(self.layout)
        nb, chans = len(self.spec.blocks), [1] + [cfg.hidden] * cfg.layers
        self.layers = nn.ModuleList(
            nn.ModuleList(TransformerLinear(s, chans[i], chans[i + 1]) for s in self.spec.blocks)
            for i in range(cfg.layers)
        )
        self.act = ACTS[cfg.activation]()
        self.invariant = TransformerInvariant(self.spec, chans[-1], cfg.hidden, cfg.invariant)
        self.rest = self.spec.rest if cfg.rest != "none" else ()
        self.rest_sizes = [self.layout.params[self.layout.param_index[n]].numel for n in self.rest]
        n_rest = sum(self.rest_sizes)
        self.register_buffer("scales", torch.ones(nb, len(PARTS)))
        self.register_buffer("rest_mean", torch.zeros(n_rest))
        self.register_buffer("rest_std", torch.ones(n_rest))
        width = self.invariant.width + (3 * len(self.rest) if cfg.rest == "stats" else n_rest)
        self.norm = NetworkNorm(width, affine=False) if cfg.norm == "batch" else None
        head = []
        for _ in range(cfg.head_layers):
            head += [nn.Linear(width, cfg.head_hidden), nn.ReLU()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
            width = cfg.head_hidden
        self.head = nn.Sequential(*head, nn.Linear(width, cfg.out_dim))

    @classmethod
    def supports(cls, layout: Layout) -> Support:
        """Every layout whose attentions are encoder blocks of :class:`~wgraph.nn.transformer_space.TransformerSpec`
        (a layout without attention gives a model of the rest alone)."""
        try:
            spec = TransformerSpec.of(layout)
        except TransformerError as e:
            return Support(False, str(e))
        return Support(True, f"{len(spec.blocks)} encoder blocks")

    def _inputs(self, graph: WeightGraph) -> tuple[TransformerSpace, torch.Tensor]:
        if graph.layout != self.layout:
            raise ConfigError("this TransformerNFN was built for a different architecture (layout) than the graph's")
        space = TransformerSpace.from_graph(graph, self.spec)
        rest = [graph.param(n).reshape(graph.batch_size, -1) for n in self.rest]
        return space, torch.cat(rest, dim=1) if rest else graph.nodes.new_zeros(graph.batch_size, 0)

    @torch.no_grad()
    def fit_normalization(self, graph: WeightGraph) -> None:
        """One scale per block and part (its root mean square over ``graph``, the training zoo), and a
        mean and std per rest value."""
        space, rest = self._inputs(graph)
        for i, t in enumerate(space.blocks):
            for j, n in enumerate(PARTS):
                rms = t[n].double().pow(2).mean().sqrt()
                self.scales[i, j] = rms if rms > 1e-12 else 1.0
        self.rest_mean.copy_(rest.mean(0))
        std = rest.double().std(0, unbiased=False) if len(rest) > 1 else torch.ones_like(self.rest_std)
        self.rest_std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))

    def features(self, space: TransformerSpace) -> torch.Tensor:
        """The invariant layer's ``(B, F)`` output for a :class:`~wgraph.nn.transformer_space.TransformerSpace`
        (one channel): the inputs scaled, the equivariant layers, the invariant layer."""
        dt = self.head[0].weight.dtype
        blocks = [{n: t[n].to(dt) / self.scales[i, j].to(dt) for j, n in enumerate(PARTS)}
                  for i, t in enumerate(space.blocks)]
        for k, layer in enumerate(self.layers):
            blocks = [f(t) for f, t in zip(layer, blocks)]
            if k < len(self.layers) - 1:
                blocks = [{n: self.act(x) if n in ("a", "ba", "b", "bb") else x for n, x in t.items()} for t in blocks]
        return self.invariant(blocks)

    def invariant_features(self, space: TransformerSpace, rest: torch.Tensor) -> torch.Tensor:
        """The ``(B, F)`` input of the head (before ``norm``): :meth:`features` and the rest's."""
        dt = self.head[0].weight.dtype
        feats = [self.features(space)] if space.blocks else []
        if self.config.rest == "flatten":
            feats.append(((rest - self.rest_mean) / self.rest_std).to(dt))
        elif self.rest:  # "stats": mean, mean square and max |x| of every tensor of the rest
            for x in rest.to(dt).split(self.rest_sizes, 1):
                feats += [x.mean(1, keepdim=True), (x * x).mean(1, keepdim=True), x.abs().amax(1, keepdim=True)]
        return torch.cat(feats, dim=1)

    def forward_space(self, space: TransformerSpace, rest: torch.Tensor) -> torch.Tensor:
        """The model on a transformer space (one channel) and the rest values ``(B, R)``."""
        z = self.invariant_features(space, rest)
        return self.head(z if self.norm is None else self.norm(z))

    def forward(self, graph: WeightGraph) -> torch.Tensor:
        return self.forward_space(*self._inputs(graph))

    @torch.no_grad()
    def refresh_statistics(self, graph: WeightGraph, batch_size: int = 256) -> None:
        """Set ``norm``'s evaluation statistics to the mean and variance of the invariant features of
        ``graph`` (the training zoo; in chunks of ``batch_size``, eval mode). The trainer calls it
        before every evaluation: running averages lag behind features that change every step."""
        if self.norm is None:
            return
        was = self.training
        self.eval()
        chunks = [self.invariant_features(*self._inputs(graph[i : i + batch_size]))
                  for i in range(0, graph.batch_size, batch_size)]
        self.train(was)
        self.norm.set_statistics(torch.cat(chunks))


def from_config(config: dict, layout) -> TransformerNFN:
    """The model of a parsed ``type = "transformer-nfn"`` preset for ``layout``."""
    return TransformerNFN(layout, config)
