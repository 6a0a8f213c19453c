"""Invariant models built from parameter-sharing layers, configured like the graph NFN's presets.

``from_config(config, layout)`` builds, for ``config["type"]``:

* ``"np"``: ``layers`` x (NPLinear, act) -> NPPool -> MLP head (first layer with ``io_embed``)
* ``"hnp"``: [IOSinusoidalEncoding] -> ``layers`` x (HNPLinear, act) -> HNPPool -> MLP head
* ``"monomial"``: ``layers`` x (MonomialLinear, act) -> MonomialPool -> MLP head
* ``"magep"``: ``layers`` x (MAGEP, act) -> MonomialPool -> MLP head

A model maps a WeightGraph (or a one-channel WeightSpace) of a chain architecture to ``(B, out_dim)``,
invariant under hidden-neuron permutations (and, for ``monomial`` / ``magep``, under the scalings
the activation allows: ``act = "auto"`` picks ReLU or tanh to match the network's activation).

Keys (all optional but ``type``), with defaults:

========== ================================================================ =========================
key        meaning                                                          default
========== ================================================================ =========================
hidden     channels of every NF-layer                                       16
layers     number of NF-layers                                              3
out_dim    outputs of the head                                              1
head_hidden width of the head MLP's hidden layer                            256
act        ``auto``, ``relu``, ``gelu``, ``tanh``, ``silu``                 ``auto`` (relu for np/hnp)
io_embed   np: learned input/output embeddings (breaks NP's extra symmetry) true
encoding   np / hnp: ``none`` or ``sinusoidal`` IO encoding channels        ``none``
io_mixing  monomial / magep: the terms that mix fixed positions              false
log_pool   monomial / magep: signed-log of the invariant product chain      true
poly_scale magep: initial scale of the polynomial terms                      0.1
========== ================================================================ =========================
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Layout, WeightGraph
from .gnn import ConfigError
from .magep import MAGEP
from .monomial import MonomialLinear, MonomialPool, activation_for
from .np_layers import HNPLinear, HNPPool, IOSinusoidalEncoding, NPLinear, NPPool, TupleOp
from ..support import Support
from .weight_space import ChainSpec, WeightSpaceError, as_weight_space

COMMON = {"type": None, "hidden": 16, "layers": 3, "out_dim": 1, "head_hidden": 256, "act": "auto"}
EXTRA = {
    "np": {"io_embed": True, "encoding": "none"},
    "hnp": {"encoding": "none"},
    "monomial": {"io_mixing": False, "log_pool": True},
    "magep": {"io_mixing": False, "log_pool": True, "poly_scale": 0.1},
}
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class PSConfigError(ConfigError):
    """A bad parameter-sharing model configuration (unknown key or type, wrong value)."""


def _layout(layout) -> Layout:
    if isinstance(layout, WeightGraph):
        return layout.layout
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, (list, tuple)) and len(layout) == 1:
        return _layout(layout[0])
    raise PSConfigError(
        f"parameter-sharing models are built for one architecture: pass one Layout or WeightGraph, got {type(layout).__name__}"
    )


def resolve_config(config: dict) -> dict:
    """``config`` with defaults filled in; unknown keys and bad values raise :class:`PSConfigError`."""
    kind = config.get("type")
    if kind not in EXTRA:
        raise PSConfigError(f"unknown parameter-sharing model type {kind!r}; known: {sorted(EXTRA)}")
    allowed = {**COMMON, **EXTRA[kind]}
    for key in config:
        if key not in allowed:
            raise PSConfigError(f"unknown key {key!r} for a {kind!r} model; allowed keys: {sorted(allowed)}")
    out = {**allowed, **config}
    for key in ("hidden", "layers", "out_dim", "head_hidden"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise PSConfigError(f"{key!r} must be a positive integer, got {out[key]!r}")
    if out["act"] != "auto" and out["act"] not in ACTS:
        raise PSConfigError(f"'act' must be 'auto' or one of {sorted(ACTS)}, got {out['act']!r}")
    if "encoding" in out and out["encoding"] not in ("none", "sinusoidal"):
        raise PSConfigError(f"'encoding' must be 'none' or 'sinusoidal', got {out['encoding']!r}")
    return out


class ParamSharingNFN(nn.Module):
    """Encoder (optional) -> NF-layer stack -> invariant pool -> MLP head; see :func:`from_config`."""

    def __init__(self, layout, config: dict):
        super().__init__()
        self.config = cfg = resolve_config(config)
        self.layout = lay = _layout(layout)
        self.spec = spec = ChainSpec.from_layout(lay)
        kind, C = cfg["type"], cfg["hidden"]
        scale_aware = kind in ("monomial", "magep")
        if cfg["act"] == "auto":
            act = activation_for(spec) if scale_aware else nn.ReLU()
        else:
            act = ACTS[cfg["act"]]()
            if scale_aware and type(act) is not type(activation_for(spec)):
                raise PSConfigError(
                    f"act={cfg['act']!r} does not commute with the hidden scaling group {spec.hidden_scaling!r} "
                    f"of this architecture; use 'auto' ({type(activation_for(spec)).__name__})"
                )
        self.act = TupleOp(act)
        self.encoder = nn.Identity()
        c_in = 1
        if cfg.get("encoding") == "sinusoidal":
            self.encoder = IOSinusoidalEncoding(spec)
            c_in = self.encoder.num_out_chan(1)
        self.layers = nn.ModuleList()
        for i in range(cfg["layers"]):
            a = c_in if i == 0 else C
            if kind == "np":
                self.layers.append(NPLinear(spec, a, C, io_embed=cfg["io_embed"] and i == 0))
            elif kind == "hnp":
                self.layers.append(HNPLinear(spec, a, C))
            elif kind == "monomial":
                self.layers.append(MonomialLinear(spec, a, C, io_mixing=cfg["io_mixing"]))
            else:
                self.layers.append(MAGEP(spec, a, C, io_mixing=cfg["io_mixing"], poly_scale=cfg["poly_scale"]))
        if kind == "np":
            self.pool = NPPool(spec)
        elif kind == "hnp":
            self.pool = HNPPool(spec)
        else:
            self.pool = MonomialPool(spec, log=cfg["log_pool"])
        self.head = nn.Sequential(
            nn.Linear(C * self.pool.out_features, cfg["head_hidden"]), nn.ReLU(), nn.Linear(cfg["head_hidden"], cfg["out_dim"])
        )

    @classmethod
    def supports(cls, layout: Layout) -> Support:
        """Whether the parameter-sharing layers read ``layout``: it must be a chain of layers
        (:meth:`ChainSpec.from_layout`, whose error the constructor raises otherwise); the reason
        is that error's first sentence, which names the block that breaks the chain."""
        try:
            ChainSpec.from_layout(layout)
        except WeightSpaceError as e:
            return Support(False, str(e).split(". ")[0])
        return Support(True)

    def forward(self, graph) -> torch.Tensor:
        x = self.encoder(as_weight_space(graph))
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(self.pool(x).flatten(1))


def from_config(config: dict, layout) -> ParamSharingNFN:
    """Build the model ``config`` describes (a parsed preset dict, ``type`` included) for ``layout``."""
    return ParamSharingNFN(layout, config)

