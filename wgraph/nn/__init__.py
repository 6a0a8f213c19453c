"""Neural functionals on weight graphs.

Graph NFNs: :class:`GraphNFN` (encoders -> :class:`GNNLayer` stack -> invariant readout or
per-parameter head), configured by :class:`GNNConfig` or a preset file via :func:`from_preset`.

Parameter-sharing NFNs on a :class:`WeightSpace` view of chain networks: :class:`NPLinear`,
:class:`HNPLinear` (Zhou et al.), :class:`MonomialLinear`, :class:`MAGEP`, their pools, and
:class:`ParamSharingNFN` (presets ``np``, ``hnp``, ``monomial``, ``magep``).

Baseline: :class:`StatNN`, an MLP on per-tensor weight statistics (preset ``statnn``).

Every model type answers ``Model.supports(layout)`` with a :class:`Support` (can it read that layout,
and if not, why).
"""

from .encoders import EdgeEncoder, EncoderError, InputNormalization, NodeEncoder, kernel_key
from .gnn import ConfigError, GNNConfig, GNNLayer, GraphNFN, ReadoutConfig
from .presets import PresetError, available_presets, from_preset, load_preset, preset_path
from .magep import MAGEP
from .monomial import MonomialLinear, MonomialPool, activation_for
from .np_layers import HNPLinear, HNPPool, IOSinusoidalEncoding, LearnedPosEmbedding, NPLinear, NPPool, TupleOp
from .ps_models import ParamSharingNFN, PSConfigError
from .statnn import StatNN
from ..support import Support
from .readout import InvariantReadout, ParameterHead, ReadoutError
from .weight_space import ChainSpec, WeightSpace, WeightSpaceError, random_graph

__all__ = [
    "GraphNFN", "GNNLayer", "GNNConfig", "ReadoutConfig", "from_preset", "load_preset", "preset_path",
    "available_presets",
    "EdgeEncoder", "NodeEncoder", "InputNormalization", "InvariantReadout", "ParameterHead", "kernel_key",
    "ConfigError", "PresetError", "EncoderError", "ReadoutError",
    "WeightSpace", "WeightSpaceError", "ChainSpec", "random_graph", "NPLinear", "HNPLinear", "NPPool", "HNPPool",
    "LearnedPosEmbedding", "IOSinusoidalEncoding", "TupleOp", "MonomialLinear", "MonomialPool", "activation_for",
    "MAGEP", "ParamSharingNFN", "PSConfigError", "StatNN", "Support",
]  # fmt: skip
