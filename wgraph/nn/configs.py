"""The configuration of every model a preset can describe: one typed dataclass per preset ``type``
(the mechanism is :mod:`wgraph.config`), holding the keys a preset file may set, their defaults,
help texts and rules.

* ``gnn``: :class:`GNNConfig`, with its ``[readout]`` table :class:`ReadoutConfig`
  (:class:`~wgraph.nn.GraphNFN`);
* ``np``, ``hnp``, ``monomial``, ``magep``: :class:`NPConfig`, :class:`HNPConfig`,
  :class:`MonomialConfig`, :class:`MAGEPConfig`, the keys of :class:`ParamSharingConfig` (common
  to the parameter-sharing stacks, :class:`~wgraph.nn.ParamSharingNFN`) and each type's own;
* ``statnn``: :class:`StatNNConfig` (:class:`~wgraph.nn.StatNN`).

:data:`wgraph.nn.presets.PRESET_TYPES` maps each type name to its class and to the function that
builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import Config, option
from ..errors import ConfigError
from ..kernels import ACTIVATIONS, AGGREGATORS, available_backends
from .readout import POOLS, READOUT_NORMS


class PSConfigError(ConfigError):
    """A bad parameter-sharing model configuration (unknown key or type, wrong value)."""


class StatNNConfigError(ConfigError):
    """A bad StatNN configuration (unknown key, wrong value) or a graph it was not built for."""


# ----------------------------------------------------------------------------- graph NFN
@dataclass
class ReadoutConfig(Config):
    """The ``[readout]`` table of a preset (see :class:`~wgraph.nn.readout.InvariantReadout`)."""

    pool: tuple[str, ...] = option(
        ("mean",), "pooling per node kind ('swe': the sliced-Wasserstein embedding readout)", choices=POOLS,
        nonempty=True,
    )
    per_layer: bool = option(False, "also pool each layer (all layouts must have as many layers)")
    output_states: bool = option(True, "concatenate the output neurons' states (same output size everywhere)")
    hidden: int = option(64, "width of the readout MLP", minimum=1)
    norm: str = option(
        "none", "normalize the pooled features across networks: 'batch' (standardize each, with the training "
        "zoo's statistics at evaluation), 'zoo' (always with the training zoo's statistics), 'center' (subtract "
        "the zoo mean, one scalar scale) or 'none'",
        choices=READOUT_NORMS,
    )
    swe_slices: int = option(16, "pool 'swe': slice directions", minimum=1)
    swe_references: int = option(8, "pool 'swe': learned reference points (quantiles per slice)", minimum=1)


@dataclass
class GNNConfig(Config):
    """Hyperparameters of :class:`~wgraph.nn.GraphNFN`; a preset file (``type = "gnn"``) holds these keys."""

    hidden: int = option(64, "node state width H", minimum=1)
    layers: int = option(4, "message-passing layers", minimum=0)
    aggr: tuple[str, ...] = option(
        ("mean",), "aggregators of the incoming messages (several: PNA-style)", choices=AGGREGATORS, nonempty=True
    )
    act: str = option("relu", "nonlinearity of the messages and MLPs", choices=ACTIVATIONS)
    norm: str = option("layer", "'layer' (LayerNorm after each residual update) or 'none'", choices=("layer", "none"))
    edge_updates: bool = option(False, "keep and update an E x H edge state (memory-hungry)")
    attention_heads: bool = option(True, "each node of an attention head also reads the mean state of its head")
    fourier_features: int = option(0, "Gaussian Fourier features per edge value (0: off)", minimum=0)
    fourier_scale: float = option(1.0, "standard deviation of the Fourier frequencies")
    normalize_inputs: bool = option(True, "per-block / per-layer standardization (fit with model.fit_normalization)")
    positions: bool = option(True, "position embeddings of input and output neurons")
    max_positions: int = option(1024, "largest input / output layer", minimum=1)
    max_depth: int = option(64, "deepest layer", minimum=1)
    head: str = option(
        "invariant", "'invariant': (B, out_dim); 'parameters': a WeightGraph", choices=("invariant", "parameters")
    )
    out_dim: int = option(1, "outputs of the invariant readout", minimum=1)
    backend: str = option(
        "auto", "message-passing backend (wgraph.kernels): 'auto' is triton on CUDA, fused elsewhere",
        choices=available_backends,
    )
    readout: ReadoutConfig = option(ReadoutConfig(), "the invariant readout")


# ----------------------------------------------------------------------------- parameter sharing
#: The nonlinearities a parameter-sharing stack may name (``act = "auto"`` picks one for the layout).
PS_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class ParamSharingConfig(Config):
    """The keys every parameter-sharing stack has (:class:`~wgraph.nn.ParamSharingNFN`)."""

    error = PSConfigError

    hidden: int = option(16, "channels of every NF-layer", minimum=1)
    layers: int = option(3, "NF-layers", minimum=1)
    out_dim: int = option(1, "outputs of the head", minimum=1)
    head_hidden: int = option(256, "width of the head MLP's hidden layer", minimum=1)
    act: str = option(
        "auto", "nonlinearity; 'auto': the one the layout's scalings allow (relu for np / hnp)",
        choices=("auto", *PS_ACTIVATIONS),
    )


@dataclass
class EncodedConfig(ParamSharingConfig):
    """NP and HNP stacks may append fixed encodings of the input / output positions as channels."""

    encoding: str = option(
        "none", "'sinusoidal': append fixed IO / layer encodings as channels", choices=("none", "sinusoidal")
    )


@dataclass
class NPConfig(EncodedConfig):
    """``type = "np"``: NPLinear layers (every neuron space permutable), NPPool, MLP head."""

    io_embed: bool = option(True, "learned embeddings of the input / output neurons in the first layer")


@dataclass
class HNPConfig(EncodedConfig):
    """``type = "hnp"``: HNPLinear layers (hidden neurons permutable), HNPPool, MLP head."""


@dataclass
class MonomialConfig(ParamSharingConfig):
    """``type = "monomial"``: MonomialLinear layers, product-chain pool, MLP head."""

    io_mixing: bool = option(False, "add the O((n_0 K_0 hidden)^2) terms mixing fixed input / output positions")
    log_pool: bool = option(True, "signed log of the invariant product chain")


@dataclass
class MAGEPConfig(MonomialConfig):
    """``type = "magep"``: MAGEP layers (monomial terms and polynomial products), as ``monomial``.

    ``variant = "paper"`` is the published MAGEP-NFN model (``HNPSMixer_Inv``): a Monomial input
    layer with input / output mixing (kernels summed), ``layers - 1`` :class:`~wgraph.nn.magep.MAGEPPaper`
    layers, the invariant :class:`~wgraph.nn.magep.MAGEPInvariant` layer and a two-hidden-layer MLP head;
    it does not read ``io_mixing``, ``log_pool`` or ``poly_scale``.
    """

    poly_scale: float = option(0.1, "initial scale of the polynomial terms (variant 'wgraph')")
    variant: str = option(
        "wgraph", "'wgraph': wgraph's own MAGEP layer and product-chain pool; 'paper': the published "
        "layers (HNPSMixerLinear / HNPSMixerInv of MAGEP-NFN)",
        choices=("wgraph", "paper"),
    )


# ----------------------------------------------------------------------------- baseline
@dataclass
class StatNNConfig(Config):
    """``type = "statnn"``: the MLP on per-tensor weight statistics (:class:`~wgraph.nn.StatNN`)."""

    error = StatNNConfigError

    hidden: int = option(256, "width of the MLP's hidden layers", minimum=1)
    layers: int = option(2, "hidden layers of the MLP", minimum=1)
    out_dim: int = option(1, "outputs", minimum=1)
    dropout: float = option(0.0, "dropout after each hidden layer", minimum=0.0, below=1.0)
