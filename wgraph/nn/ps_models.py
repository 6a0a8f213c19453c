"""Invariant models built from parameter-sharing layers, configured like the graph NFN's presets.

``from_config(config, layout)`` builds, for ``config["type"]``:

* ``"np"``: ``layers`` x (NPLinear, act) -> NPPool -> MLP head (first layer with ``io_embed``)
* ``"hnp"``: [IOSinusoidalEncoding] -> ``layers`` x (HNPLinear, act) -> HNPPool -> MLP head
* ``"monomial"``: ``layers`` x (MonomialLinear, act) -> MonomialPool -> MLP head
* ``"magep"``: ``layers`` x (MAGEP, act) -> MonomialPool -> MLP head; with ``variant = "paper"`` the
  published MAGEP-NFN model (``HNPSMixer_Inv``): (MonomialLinear with input / output mixing, kernels
  summed, act) -> ``layers - 1`` x (MAGEPPaper, act) -> MAGEPInvariant -> MLP head of two hidden layers

A model maps a WeightGraph (or a one-channel WeightSpace) of a chain architecture to ``(B, out_dim)``,
invariant under hidden-neuron permutations (and, for ``monomial`` / ``magep``, under the scalings
the activation allows: ``act = "auto"`` picks ReLU or tanh to match the network's activation).
With ``head = "parameters"`` (``ParamSharingNFN(layout, config, head="parameters")``) the pool and
MLP head are replaced by one more NF-layer of the same kind, ``hidden -> 1`` channel, and the model
returns that channel as a WeightGraph of the input's layout: an *equivariant* weight-space output
(a weight delta, as in INR editing), with ``head_hidden`` and ``out_dim`` unused.

Keys (all optional but ``type``): the fields of :class:`~wgraph.nn.configs.NPConfig`,
:class:`~wgraph.nn.configs.HNPConfig`, :class:`~wgraph.nn.configs.MonomialConfig` and
:class:`~wgraph.nn.configs.MAGEPConfig`, with their defaults and help texts (``docs/param-sharing.md``
lists them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout import Layout
from ..support import Support
from .configs import (
    PS_ACTIVATIONS,
    EncodedConfig,
    MAGEPConfig,
    MonomialConfig,
    NPConfig,
    ParamSharingConfig,
    PSConfigError,
)
from .layouts import model_layout
from .magep import MAGEP, KernelSum, MAGEPInvariant, MAGEPPaper
from .monomial import MonomialLinear, MonomialPool, activation_for
from .np_layers import HNPLinear, HNPPool, IOSinusoidalEncoding, NPLinear, NPPool, TupleOp
from .presets import PRESET_TYPES, typed_config
from .weight_space import ChainSpec, WeightSpaceError, as_weight_space

__all__ = ["ParamSharingNFN", "PSConfigError", "from_config", "resolve_config"]


def resolve_config(config: dict | ParamSharingConfig) -> ParamSharingConfig:
    """The typed configuration of a parsed preset dict (``type`` one of the parameter-sharing types),
    defaults filled in; unknown types and keys and bad values raise :class:`PSConfigError`."""
    if isinstance(config, ParamSharingConfig):
        return config
    kinds = [k for k, t in PRESET_TYPES.items() if issubclass(t.config, ParamSharingConfig)]
    if config.get("type") not in kinds:
        raise PSConfigError(f"unknown parameter-sharing model type {config.get('type')!r}; known: {kinds}")
    return typed_config(config)


def _layer(cfg: ParamSharingConfig, spec: ChainSpec, c_in: int, first: bool, c_out: int | None = None) -> nn.Module:
    """One NF-layer of the stack ``cfg`` describes, ``c_in -> c_out`` (default ``cfg.hidden``) channels."""
    c_out = cfg.hidden if c_out is None else c_out
    if isinstance(cfg, NPConfig):
        return NPLinear(spec, c_in, c_out, io_embed=cfg.io_embed and first)
    if _paper(cfg):
        if first:  # the official HNPSLinear: io-mixing monomial layer onto the kernel-free chain
            return nn.Sequential(MonomialLinear(spec, c_in, c_out, io_mixing=True), KernelSum())
        return MAGEPPaper(spec, c_in, c_out)
    if isinstance(cfg, MAGEPConfig):
        return MAGEP(spec, c_in, c_out, io_mixing=cfg.io_mixing, poly_scale=cfg.poly_scale)
    if isinstance(cfg, MonomialConfig):
        return MonomialLinear(spec, c_in, c_out, io_mixing=cfg.io_mixing)
    return HNPLinear(spec, c_in, c_out)


def _paper(cfg: ParamSharingConfig) -> bool:
    """Whether ``cfg`` is the published MAGEP-NFN model (``type = "magep"``, ``variant = "paper"``)."""
    return isinstance(cfg, MAGEPConfig) and cfg.variant == "paper"


def _pool(cfg: ParamSharingConfig, spec: ChainSpec) -> nn.Module:
    if _paper(cfg):
        return MAGEPInvariant(spec, cfg.hidden, cfg.hidden)
    if isinstance(cfg, NPConfig):
        return NPPool(spec)
    if isinstance(cfg, MonomialConfig):
        return MonomialPool(spec, log=cfg.log_pool)
    return HNPPool(spec)


HEADS = ("invariant", "parameters")


class ParamSharingNFN(nn.Module):
    """Encoder (optional) -> NF-layer stack -> invariant pool -> MLP head; see :func:`from_config`.
    ``head = "parameters"``: -> one more NF-layer to one channel, returned as a WeightGraph (equivariant)."""

    def __init__(self, layout, config: dict | ParamSharingConfig, head: str = "invariant"):
        super().__init__()
        self.config = cfg = resolve_config(config)
        if head not in HEADS:
            raise PSConfigError(f"head must be one of {HEADS}, got {head!r}")
        if head == "parameters" and _paper(cfg):
            raise PSConfigError("the published MAGEP-NFN model (variant 'paper') has no weight-space output head")
        self.head_kind = head
        self.layout = model_layout(layout, "a parameter-sharing model", error=PSConfigError)
        self.spec = spec = ChainSpec.from_layout(self.layout)
        scale_aware = isinstance(cfg, MonomialConfig)
        if cfg.act == "auto":
            act = activation_for(spec) if scale_aware else nn.ReLU()
        else:
            act = PS_ACTIVATIONS[cfg.act]()
            if scale_aware and type(act) is not type(activation_for(spec)):
                raise PSConfigError(
                    f"act={cfg.act!r} does not commute with the hidden scaling group {spec.hidden_scaling!r} "
                    f"of this architecture; use 'auto' ({type(activation_for(spec)).__name__})"
                )
        self.act = TupleOp(act)
        self.encoder = nn.Identity()
        c_in = 1
        if isinstance(cfg, EncodedConfig) and cfg.encoding == "sinusoidal":
            self.encoder = IOSinusoidalEncoding(spec)
            c_in = self.encoder.num_out_chan(1)
        self.layers = nn.ModuleList(
            _layer(cfg, spec, c_in if i == 0 else cfg.hidden, first=i == 0) for i in range(cfg.layers)
        )
        if head == "parameters":
            self.out = _layer(cfg, spec, cfg.hidden if cfg.layers else c_in, first=cfg.layers == 0, c_out=1)
            return
        self.pool = _pool(cfg, spec)
        widths = [cfg.hidden * self.pool.out_features] + [cfg.head_hidden] * (2 if _paper(cfg) else 1)
        head = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.head = nn.Sequential(*head, nn.Linear(cfg.head_hidden, cfg.out_dim))

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
        if self.head_kind == "parameters":
            return as_weight_space(self.out(x)).to_graph(self.layout)
        return self.head(self.pool(x).flatten(1))


def from_config(config: dict, layout) -> ParamSharingNFN:
    """Build the model ``config`` describes (a parsed preset dict, ``type`` included) for ``layout``:
    the builder of the parameter-sharing types in :data:`~wgraph.nn.presets.PRESET_TYPES`."""
    return ParamSharingNFN(layout, config)

