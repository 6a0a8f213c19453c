"""Neural functionals on weight graphs.

Graph NFN (issue 4): :class:`GraphNFN` (encoders -> :class:`GNNLayer` stack -> invariant readout
or per-parameter head), configured by :class:`GNNConfig` or a preset file via :func:`from_preset`.
"""

from .encoders import EdgeEncoder, EncoderError, InputNormalization, NodeEncoder, kernel_key
from .gnn import ConfigError, GNNConfig, GNNLayer, GraphNFN, ReadoutConfig
from .presets import PresetError, available_presets, from_preset, load_preset, preset_path
from .readout import InvariantReadout, ParameterHead, ReadoutError

__all__ = [
    "GraphNFN", "GNNLayer", "GNNConfig", "ReadoutConfig", "from_preset", "load_preset", "preset_path",
    "available_presets",
    "EdgeEncoder", "NodeEncoder", "InputNormalization", "InvariantReadout", "ParameterHead", "kernel_key",
    "ConfigError", "PresetError", "EncoderError", "ReadoutError",
]  # fmt: skip
