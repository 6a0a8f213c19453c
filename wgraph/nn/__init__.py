"""Neural functionals on weight graphs.

Graph NFNs: :class:`GraphNFN` (encoders -> :class:`GNNLayer` stack -> invariant readout or
per-parameter head), configured by :class:`GNNConfig` or a preset file via :func:`from_preset`.

Parameter-sharing NFNs on a :class:`WeightSpace` view of chain networks: :class:`NPLinear`,
:class:`HNPLinear` (Zhou et al.), :class:`MonomialLinear`, :class:`MAGEP`, their pools, and
:class:`ParamSharingNFN` (presets ``np``, ``hnp``, ``monomial``, ``magep``).

Transformer-NFN on the encoder blocks of a transformer (:class:`TransformerSpace`): :class:`TransformerNFN`
(preset ``transformer-nfn``).

Baseline: :class:`StatNN`, an MLP on per-tensor weight statistics (preset ``statnn``).

Every model type answers ``Model.supports(layout)`` with a :class:`Support` (can it read that layout,
and if not, why).
"""

from ..errors import ConfigError
from ..support import Support
from .configs import (
    GNNConfig,
    HNPConfig,
    MAGEPConfig,
    MonomialConfig,
    NPConfig,
    ParamSharingConfig,
    PSConfigError,
    ReadoutConfig,
    StatNNConfig,
    StatNNConfigError,
)
from .encoders import EdgeEncoder, EdgeInput, EncoderError, InputNormalization, NodeEncoder, kernel_key
from .gnn import GNNLayer, GraphNFN
from .layouts import model_layout, model_layouts
from .magep import MAGEP
from .monomial import MonomialLinear, MonomialPool, activation_for
from .np_layers import HNPLinear, HNPPool, IOSinusoidalEncoding, LearnedPosEmbedding, NPLinear, NPPool, TupleOp
from .presets import (
    PRESET_TYPES,
    PresetError,
    PresetType,
    available_presets,
    from_preset,
    load_preset,
    preset_path,
    resolve_preset,
)
from .ps_models import ParamSharingNFN
from .readout import InvariantReadout, ParameterHead, ReadoutError
from .statnn import StatNN
from .transformer_nfn import TransformerInvariant, TransformerLinear, TransformerNFN, TransformerNFNConfig
from .transformer_space import TransformerError, TransformerSpace, TransformerSpec
from .weight_space import ChainSpec, WeightSpace, WeightSpaceError, random_graph

__all__ = [
    # graph NFN
    "GraphNFN", "GNNLayer", "EdgeEncoder", "NodeEncoder", "InputNormalization", "InvariantReadout", "ParameterHead",
    "EdgeInput", "kernel_key",
    # configurations and presets
    "GNNConfig", "ReadoutConfig", "ParamSharingConfig", "NPConfig", "HNPConfig", "MonomialConfig", "MAGEPConfig",
    "StatNNConfig", "PRESET_TYPES", "PresetType", "from_preset", "load_preset", "resolve_preset", "preset_path",
    "available_presets", "model_layouts", "model_layout",
    # errors
    "ConfigError", "PresetError", "PSConfigError", "StatNNConfigError", "EncoderError", "ReadoutError",
    "WeightSpaceError",
    # parameter sharing
    "WeightSpace", "ChainSpec", "random_graph", "NPLinear", "HNPLinear", "NPPool", "HNPPool", "LearnedPosEmbedding",
    "IOSinusoidalEncoding", "TupleOp", "MonomialLinear", "MonomialPool", "activation_for", "MAGEP",
    "ParamSharingNFN",
    # Transformer-NFN
    "TransformerNFN", "TransformerNFNConfig", "TransformerLinear", "TransformerInvariant", "TransformerSpace",
    "TransformerSpec", "TransformerError",
    # baseline, capability
    "StatNN", "Support",
]
